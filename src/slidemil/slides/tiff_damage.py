"""TIFF damage checks: a file with a TIFF header whose image directories or pixel data lie beyond its
end (a copy cut short, a damaged SVS) is reported as truncated or damaged, not as an unknown format.
"""

from __future__ import annotations

import struct
from pathlib import Path

import numpy as np

from slidemil.slides.errors import SlideError

# OpenSlide drivers whose files are plain TIFF directories and whose pyramid levels are TIFF pages
# pixel for pixel (no overlaps, no stitching; NDPI's 64-bit offset extension is not).
TIFF_PAGE_VENDORS = ("generic-tiff", "aperio")


def raise_if_damaged(path: Path) -> None:
    """A `SlideError` naming what is cut short when `path` is a damaged TIFF-based file."""
    damage = tiff_damage(path)
    if damage is not None:
        kind, detail = damage
        raise SlideError(f"{path}: truncated or damaged {kind}: the TIFF header is readable but {detail}; "
                         "re-copy the file or remove it from samples.tsv")


# TIFF field types of offset/count arrays: numpy dtype per type code (SHORT, LONG, LONG8)
_TIFF_INT = {3: "u2", 4: "u4", 16: "u8"}
_TIFF_DATA_TAGS = {273: 279, 324: 325}  # StripOffsets -> StripByteCounts, TileOffsets -> TileByteCounts


def tiff_damage(path: str | Path) -> tuple[str, str] | None:
    """(kind, what is wrong) when a TIFF-based file is cut short or damaged; None when its layout fits.

    Walks the chain of image directories (IFDs) and checks that every directory, its offset tables
    and the strips or tiles they point to lie inside the file. Files that are not TIFF (no TIFF
    magic) give None. `kind` is "Aperio SVS" (from the first ImageDescription, or the .svs suffix
    when that directory is lost), "BigTIFF" or "TIFF".
    """
    path = Path(path)
    size = path.stat().st_size
    with open(path, "rb") as f:
        head = f.read(16)
        order = {b"II": "<", b"MM": ">"}.get(head[:2])
        if order is None or len(head) < 8:
            return None
        version = struct.unpack(order + "H", head[2:4])[0]
        if version not in (42, 43) or (version == 43 and len(head) < 16):
            return None
        big = version == 43
        word, wsize, esize = ("Q", 8, 20) if big else ("I", 4, 12)  # offset type, its size, IFD entry size
        offset = struct.unpack(order + word, head[8:16] if big else head[4:8])[0]
        kind = "BigTIFF" if big else "TIFF"
        if path.suffix.lower() == ".svs":
            kind = "Aperio SVS"
        seen: set[int] = set()
        index = 0
        while offset:
            where = f"image directory {index} (at byte {offset})"
            if offset in seen:
                return kind, f"{where} points back to an earlier one"
            seen.add(offset)
            nsize = 8 if big else 2
            if offset + nsize > size:
                return kind, f"{where} lies beyond the end of the file ({size} bytes)"
            f.seek(offset)
            count = struct.unpack(order + ("Q" if big else "H"), f.read(nsize))[0]
            end = offset + nsize + count * esize + wsize
            if end > size:
                return kind, f"{where} runs past the end of the file ({size} bytes)"
            raw = f.read(count * esize)
            tags: dict[int, tuple[int, int, bytes]] = {}
            for k in range(count):
                e = raw[k * esize : (k + 1) * esize]
                tag, typ = struct.unpack(order + "HH", e[:4])
                tags[tag] = (typ, struct.unpack(order + word, e[4 : 4 + wsize])[0], e[4 + wsize :])
            next_offset = struct.unpack(order + word, f.read(wsize))[0]
            if index == 0 and 270 in tags and _tiff_text(f, order, word, tags[270], size).startswith("Aperio"):
                kind = "Aperio SVS"
            for off_tag, cnt_tag in _TIFF_DATA_TAGS.items():
                if off_tag not in tags or cnt_tag not in tags:
                    continue
                offsets = _tiff_ints(f, order, word, tags[off_tag], size)
                counts = _tiff_ints(f, order, word, tags[cnt_tag], size)
                if offsets is None or counts is None or len(offsets) != len(counts):
                    return kind, (f"{where} has a damaged table of strip or tile offsets, or one beyond the end "
                                  f"of the file ({size} bytes)")
                ends = offsets.astype(np.uint64) + counts.astype(np.uint64)
                if len(ends) and int(ends.max()) > size:
                    cut = int((ends > size).sum())
                    return kind, (f"{cut} of the {len(ends)} strips or tiles of image {index} lie beyond the end "
                                  f"of the file (they reach byte {int(ends.max())}, the file has {size})")
            offset, index = next_offset, index + 1
    return None


def _tiff_field(f, order: str, word: str, entry: tuple[int, int, bytes], itemsize: int, size: int) -> bytes | None:
    """A TIFF field's bytes: inline in its entry, or read at the offset the entry holds (None past the end)."""
    _, n, inline = entry
    nbytes = n * itemsize
    if nbytes <= len(inline):
        return inline[:nbytes]
    at = struct.unpack(order + word, inline)[0]
    if at + nbytes > size:
        return None
    f.seek(at)
    return f.read(nbytes)


def _tiff_ints(f, order: str, word: str, entry: tuple[int, int, bytes], size: int) -> np.ndarray | None:
    dtype = _TIFF_INT.get(entry[0])
    data = _tiff_field(f, order, word, entry, int(dtype[1]), size) if dtype else None
    return None if data is None else np.frombuffer(data, order + dtype)


def _tiff_text(f, order: str, word: str, entry: tuple[int, int, bytes], size: int) -> str:
    return (_tiff_field(f, order, word, entry, 1, size) or b"").decode("latin-1")

