"""The one atomic writer: files and directories appear whole under their final name or not at all."""

import numpy as np
import pytest
from PIL import Image

from slidemil.files import atomic_path, save_png, temp_sibling, write_text


def test_a_raising_block_leaves_neither_file_nor_temp(tmp_path):
    out = tmp_path / "sub" / "t.csv"
    with pytest.raises(RuntimeError):
        with atomic_path(out) as tmp:
            assert tmp.suffix == ".csv" and tmp.parent == out.parent and tmp.name.startswith(".")
            tmp.write_text("half")
            raise RuntimeError("killed")
    assert list(out.parent.iterdir()) == []
    write_text("whole", out)
    assert out.read_text() == "whole" and [p.name for p in out.parent.iterdir()] == ["t.csv"]


def test_a_directory_replaces_the_old_one_and_dead_jobs_temp_dirs_go(tmp_path):
    out = tmp_path / "s [1].zarr"  # glob characters in the name must not match other paths
    (out / "old").mkdir(parents=True)
    dead = temp_sibling(out, pid=999999)
    (dead / "tiles").mkdir(parents=True)  # a killed job's partial store
    other = tmp_path / "s 1.zarr"
    other.mkdir()
    with atomic_path(out) as tmp:
        (tmp / "new").mkdir(parents=True)
        assert not (out / "new").exists()
    assert sorted(p.name for p in out.iterdir()) == ["new"]
    assert not dead.exists() and other.is_dir()
    with pytest.raises(KeyboardInterrupt):
        with atomic_path(out) as tmp:
            (tmp / "partial").mkdir(parents=True)
            raise KeyboardInterrupt
    assert sorted(p.name for p in out.iterdir()) == ["new"] and not temp_sibling(out).exists()


def test_save_png_writes_a_png_whatever_the_name(tmp_path):
    img = np.arange(12, dtype=np.uint8).reshape(2, 2, 3)
    save_png(img, tmp_path / "a" / "q.png")
    np.testing.assert_array_equal(np.asarray(Image.open(tmp_path / "a" / "q.png")), img)
    assert [p.name for p in (tmp_path / "a").iterdir()] == ["q.png"]
