"""Zarr v3 stores for tiles and features, written atomically.

Tiles stay JPEG-compressed on disk (one JPEG per tile chunk; lossless codecs compress decoded
H&E only ~1.1x, i.e. ~10x the source JPEG bytes), and chunks are grouped into shards so a slide
is a few files, not one per tile. A tile is its own inner chunk, so a random read decodes one JPEG.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import zarr
from zarr.abc.codec import ArrayBytesCodec
from zarr.core.buffer import Buffer, NDBuffer
from zarr.core.common import parse_named_configuration

from slidemil import __version__
from slidemil.files import atomic_path

atomic_dir = atomic_path  # the old name, still imported by tests and benchmarks

JPEG_CODEC = "slidemil.jpeg"


@dataclass(frozen=True)
class JpegCodec(ArrayBytesCodec):
    """Array -> bytes codec: each chunk [1, T, T, 3] uint8 is one baseline JPEG."""

    is_fixed_size = False
    level: int = 90

    def __init__(self, *, level: int = 90) -> None:
        object.__setattr__(self, "level", int(level))

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "JpegCodec":
        _, cfg = parse_named_configuration(data, JPEG_CODEC, require_configuration=False)
        return cls(**(cfg or {}))

    def to_dict(self) -> dict[str, Any]:
        return {"name": JPEG_CODEC, "configuration": {"level": self.level}}

    def _decode_sync(self, chunk_bytes: Buffer, chunk_spec) -> NDBuffer:
        import imagecodecs

        img = imagecodecs.jpeg_decode(chunk_bytes.as_numpy_array().tobytes())
        return chunk_spec.prototype.nd_buffer.from_ndarray_like(img.reshape(chunk_spec.shape))

    async def _decode_single(self, chunk_bytes: Buffer, chunk_spec) -> NDBuffer:
        return self._decode_sync(chunk_bytes, chunk_spec)

    def _encode_sync(self, chunk_array: NDBuffer, chunk_spec) -> Buffer:
        import imagecodecs

        arr = np.ascontiguousarray(chunk_array.as_numpy_array())
        tile = arr.reshape(-1, *arr.shape[-2:]) if arr.ndim > 3 else arr
        data = imagecodecs.jpeg_encode(tile, level=self.level)
        return chunk_spec.prototype.buffer.from_bytes(data)

    async def _encode_single(self, chunk_array: NDBuffer, chunk_spec) -> Buffer:
        return self._encode_sync(chunk_array, chunk_spec)

    def compute_encoded_size(self, input_byte_length: int, _chunk_spec) -> int:
        raise NotImplementedError("JPEG size is data dependent")


zarr.registry.register_codec(JPEG_CODEC, JpegCodec)


def create_tile_arrays(group: zarr.Group, n_tiles: int, tile_size: int, shard_tiles: int = 256,
                       jpeg_quality: int = 90) -> zarr.Array:
    """Create `tiles` [N,T,T,3] uint8 (JPEG per tile, sharded) in `group` and return it."""
    shape = (n_tiles, tile_size, tile_size, 3)
    shard = (max(1, min(shard_tiles, n_tiles)), tile_size, tile_size, 3)
    return group.create_array("tiles", shape=shape, dtype="uint8", chunks=(1, tile_size, tile_size, 3),
                              shards=shard, serializer=JpegCodec(level=jpeg_quality), compressors=None,
                              fill_value=255)


def write_tile_shard(tiles: zarr.Array, shard: int, jpegs: list[bytes]) -> None:
    """Write shard `shard` of a `create_tile_arrays` array from already-encoded JPEG tiles.

    Byte for byte what zarr's sharding codec writes for the same chunks (tiles concatenated in
    order, then the index of (offset, nbytes) uint64 pairs and its crc32c), without its per-chunk
    pipeline, which costs ~1 ms a tile (more than encoding the JPEG). Chunks past len(jpegs) are
    left empty (they read as fill_value).
    """
    import google_crc32c

    from zarr.codecs import BytesCodec, Crc32cCodec, ShardingCodec

    codec = tiles.metadata.codecs[0] if len(tiles.metadata.codecs) == 1 else None
    per_shard = tiles.metadata.chunk_grid.chunk_shape[0]
    if (not isinstance(codec, ShardingCodec) or codec.index_location.value != "end"
            or [type(c) for c in codec.index_codecs] != [BytesCodec, Crc32cCodec]
            or [type(c) for c in codec.codecs] != [JpegCodec] or codec.chunk_shape[0] != 1
            or len(jpegs) > per_shard or shard * per_shard + len(jpegs) > tiles.shape[0]):
        raise ValueError("write_tile_shard needs a tile array made by create_tile_arrays")
    index = np.full((per_shard, 2), np.iinfo(np.uint64).max, dtype="<u8")
    lengths = np.fromiter((len(j) for j in jpegs), np.uint64, len(jpegs))
    index[: len(jpegs), 1] = lengths
    index[: len(jpegs), 0] = np.cumsum(lengths) - lengths
    index_bytes = index.tobytes()
    key = tiles.metadata.encode_chunk_key((shard,) + (0,) * (tiles.ndim - 1))
    path = Path(tiles.store.root) / tiles.path / key
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "wb") as f:
        f.write(b"".join(jpegs))
        f.write(index_bytes)
        f.write(np.uint32(google_crc32c.value(index_bytes)).astype("<u4").tobytes())


def write_index_arrays(group: zarr.Group, coords: np.ndarray, grid: np.ndarray) -> None:
    """Level-0 top-left (x, y) and global grid (col, row) of each tile, int32 [N, 2]."""
    for name, arr in (("coords", coords), ("grid", grid)):
        arr = np.asarray(arr, dtype=np.int32).reshape(-1, 2)
        group.create_array(name, shape=arr.shape, dtype="int32", chunks=(max(1, len(arr)), 2))
        if len(arr):
            group[name][:] = arr


def write_features(path: str | Path, features: np.ndarray, coords: np.ndarray, grid: np.ndarray,
                   attrs: dict[str, Any]) -> None:
    """Write a per-slide feature store: `features` float16 [N, D] beside `coords` and `grid`."""
    features = np.asarray(features, dtype=np.float16)
    with atomic_path(path) as tmp:
        g = zarr.open_group(tmp, mode="w", zarr_format=3)
        n, d = features.shape
        g.create_array("features", shape=(n, d), dtype="float16", chunks=(max(1, min(n, 4096)), d))
        if n:
            g["features"][:] = features
        write_index_arrays(g, coords, grid)
        g.attrs.update({**attrs, "n_tiles": int(n), "feature_dim": int(d), "slidemil_version": __version__})


@dataclass
class SlideFeatures:
    features: np.ndarray  # float32 [N, D]
    coords: np.ndarray  # int32 [N, 2] level-0 (x, y)
    grid: np.ndarray  # int32 [N, 2] (col, row)
    attrs: dict[str, Any]


def read_features(path: str | Path) -> SlideFeatures:
    g = zarr.open_group(str(path), mode="r")
    return SlideFeatures(np.asarray(g["features"][:], dtype=np.float32), np.asarray(g["coords"][:]),
                         np.asarray(g["grid"][:]), dict(g.attrs))


def open_tiles(path: str | Path) -> zarr.Group:
    """Open a tile store read-only; `g['tiles'][i]` decodes one tile."""
    return zarr.open_group(str(path), mode="r")
