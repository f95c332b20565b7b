"""Lesion annotations: GeoJSON polygons, or Camelyon16's ASAP XML, and the tiles whose centre lies
inside a lesion (the positives of instance AUC, the tile probe, FROC and hard-negative mining).
"""

from __future__ import annotations

import json
import os
import xml.etree.ElementTree as ET
from pathlib import Path

import numpy as np

from slidemil.cohorts.sheet import CohortError


def read_asap_annotation(path: str | os.PathLike) -> list[tuple[str, str, list[tuple[float, float]]]]:
    """Read an ASAP lesion annotation XML (Camelyon16) as [(name, group, [(x, y), ...]), ...].

    Coordinates are level-0 pixels. Groups ``_0``/``_1``/``Tumor`` are lesions, ``_2``/``Exclusion``
    are holes to exclude (as in the Camelyon16 evaluation code).
    """
    path = Path(path)
    try:
        root = ET.parse(path).getroot()
    except ET.ParseError as e:
        raise CohortError(f"{path}: not valid XML ({e})") from None
    if root.tag != "ASAP_Annotations":
        raise CohortError(f"{path}: root element is <{root.tag}>, expected <ASAP_Annotations>")
    out = []
    for ann in root.iter("Annotation"):
        coords = sorted(ann.iter("Coordinate"), key=lambda c: int(c.get("Order", 0)))
        try:
            # some ASAP versions write decimal commas
            xy = [(float(c.get("X", "").replace(",", ".")), float(c.get("Y", "").replace(",", ".")))
                  for c in coords]
        except ValueError:
            raise CohortError(f"{path}: annotation {ann.get('Name')!r} has a non-numeric coordinate") from None
        out.append((ann.get("Name", ""), ann.get("PartOfGroup", ""), xy))
    return out


def load_polygons(path: str | Path) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """(lesions, holes) as lists of level-0 (x, y) vertex arrays from GeoJSON or ASAP XML."""
    path = Path(path)
    if path.suffix.lower() == ".xml":
        lesions, holes = [], []
        for _, group, xy in read_asap_annotation(path):
            (holes if group in ("_2", "Exclusion") else lesions).append(np.asarray(xy, float))
        return lesions, holes
    data = json.loads(path.read_text())
    features = data.get("features", [data]) if isinstance(data, dict) else data
    lesions, holes = [], []
    for f in features:
        geom = f.get("geometry", f)
        polys = geom["coordinates"] if geom["type"] == "MultiPolygon" else [geom["coordinates"]]
        for rings in polys:
            lesions.append(np.asarray(rings[0], float))
            holes.extend(np.asarray(r, float) for r in rings[1:])
    return lesions, holes


def tile_labels(coords: np.ndarray, tile_size0: float, annotation: str | Path) -> np.ndarray:
    """1 where the tile centre (level 0) is inside a lesion and not inside a hole."""
    from matplotlib.path import Path as MplPath

    centres = np.asarray(coords, float) + tile_size0 / 2
    lesions, holes = load_polygons(annotation)
    inside = np.zeros(len(centres), bool)
    for poly in lesions:
        inside |= MplPath(poly).contains_points(centres)
    for poly in holes:
        inside &= ~MplPath(poly).contains_points(centres)
    return inside.astype(int)
