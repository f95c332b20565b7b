"""Random single-tile reads from a tile store, for the networks that read tiles (pretraining, embedding,
mining's fine-tuning): the JPEG bytes of one tile are sliced out of its shard file through the shard
index (cached per shard) and decoded with libjpeg-turbo; stores of another layout fall back to
zarr's reader.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np


class TileReader:
    """Random single-tile reads from a tile store made by slidemil.slides.store.create_tile_arrays.

    read(i) -> uint8 [T, T, 3]. Opened lazily so that each DataLoader worker has its own handle.
    """

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        meta = json.loads((self.path / "tiles" / "zarr.json").read_text())
        self.shape = tuple(meta["shape"])
        self.fill = int(meta.get("fill_value") or 0)
        codecs = meta["codecs"]
        c = codecs[0] if len(codecs) == 1 else {}
        cfg = c.get("configuration", {})
        self.direct = (c.get("name") == "sharding_indexed" and cfg.get("index_location", "end") == "end"
                       and [x["name"] for x in cfg.get("codecs", [])] == ["slidemil.jpeg"]
                       and [x["name"] for x in cfg.get("index_codecs", [])] == ["bytes", "crc32c"]
                       and cfg.get("chunk_shape", [0])[0] == 1
                       and meta["chunk_key_encoding"]["name"] == "default")
        self.per_shard = int(meta["chunk_grid"]["configuration"]["chunk_shape"][0])
        self.sep = meta["chunk_key_encoding"].get("configuration", {}).get("separator", "/")
        self._index: dict[int, np.ndarray | None] = {}
        self._zarr = None

    def __len__(self) -> int:
        return self.shape[0]

    def _shard_index(self, shard: int) -> np.ndarray | None:
        if shard not in self._index:
            key = self.sep.join(["c", str(shard), *["0"] * (len(self.shape) - 1)])
            f = self.path / "tiles" / key
            if not f.exists():
                self._index[shard] = None
            else:
                nbytes = self.per_shard * 16 + 4
                with open(f, "rb") as fh:
                    fh.seek(-nbytes, 2)
                    self._index[shard] = np.frombuffer(fh.read(nbytes)[:-4], dtype="<u8").reshape(-1, 2)
        return self._index[shard]

    def read(self, i: int) -> np.ndarray:
        if not self.direct:
            if self._zarr is None:
                import zarr

                self._zarr = zarr.open_group(str(self.path), mode="r")["tiles"]
            return np.asarray(self._zarr[i])
        import simplejpeg

        shard, k = divmod(int(i), self.per_shard)
        index = self._shard_index(shard)
        if index is None or index[k, 0] == np.iinfo(np.uint64).max:
            return np.full(self.shape[1:], self.fill, np.uint8)
        off, n = int(index[k, 0]), int(index[k, 1])
        key = self.sep.join(["c", str(shard), *["0"] * (len(self.shape) - 1)])
        with open(self.path / "tiles" / key, "rb") as fh:
            fh.seek(off)
            data = fh.read(n)
        return simplejpeg.decode_jpeg(data, colorspace="RGB")
