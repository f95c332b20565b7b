import numpy as np
import pytest
import torch
import zarr

from slidemil.config import EncoderSpec
from slidemil.encoders import ENCODERS, build_encoder
from slidemil.encoders.embed import embed_slide
from slidemil.slides.store import atomic_dir, create_tile_arrays, read_features, write_index_arrays


def _store(path, n, size=32, seed=0):
    rng = np.random.default_rng(seed)
    with atomic_dir(path) as tmp:
        g = zarr.open_group(tmp, mode="w", zarr_format=3)
        t = create_tile_arrays(g, n, size)
        if n:
            t[:] = rng.integers(100, 250, (n, size, size, 3), dtype=np.uint8)
        write_index_arrays(g, np.arange(2 * n).reshape(n, 2) * size, np.arange(2 * n).reshape(n, 2))
        g.attrs.update({"slide_id": "x", "status": "ok" if n else "empty"})


def test_registry_and_seeded_init_is_identical_across_jobs():
    assert {"resnet18", "resnet50"} <= set(ENCODERS)
    spec = EncoderSpec("r", depth=2)
    a, b = build_encoder(spec, 3), build_encoder(spec, 3)
    for pa, pb in zip(a.state_dict().values(), b.state_dict().values()):
        assert torch.equal(pa, pb)


def test_embed_writes_float16_features_with_coords(tmp_path):
    _store(tmp_path / "t.zarr", 10)
    spec = EncoderSpec("r", depth=2, input_size=32, batch_size=4)
    assert embed_slide(tmp_path / "t.zarr", tmp_path / "f.zarr", spec, 0, device="cpu", progress=False) == 10
    f = read_features(tmp_path / "f.zarr")
    assert f.features.shape == (10, 128) and np.isfinite(f.features).all()
    assert zarr.open_group(str(tmp_path / "f.zarr"), mode="r")["features"].dtype == np.float16
    np.testing.assert_array_equal(f.grid, np.arange(20).reshape(10, 2))
    # the same tiles give the same features in a second run (batching does not matter)
    embed_slide(tmp_path / "t.zarr", tmp_path / "g.zarr", EncoderSpec("r", depth=2, input_size=32, batch_size=3),
                0, device="cpu", progress=False)
    np.testing.assert_allclose(read_features(tmp_path / "g.zarr").features, f.features, atol=1e-2)


def test_workers_give_the_same_features(tmp_path):
    _store(tmp_path / "t.zarr", 9)
    spec = EncoderSpec("r", depth=1, input_size=32, batch_size=4)
    embed_slide(tmp_path / "t.zarr", tmp_path / "a.zarr", spec, 0, device="cpu", progress=False)
    embed_slide(tmp_path / "t.zarr", tmp_path / "b.zarr", EncoderSpec("r", depth=1, input_size=32, batch_size=4,
                                                                      workers=2), 0, device="cpu", progress=False)
    np.testing.assert_array_equal(read_features(tmp_path / "a.zarr").features, read_features(tmp_path / "b.zarr").features)
    assert zarr.open_group(str(tmp_path / "a.zarr"), mode="r").attrs["input_size"] == 32


def test_empty_store_gives_empty_features(tmp_path):
    _store(tmp_path / "t.zarr", 0)
    assert embed_slide(tmp_path / "t.zarr", tmp_path / "f.zarr", EncoderSpec("r", depth=1), 0, progress=False) == 0
    f = read_features(tmp_path / "f.zarr")
    assert f.features.shape[0] == 0 and f.attrs["n_tiles"] == 0


def test_local_weights_load_and_missing_file_is_a_clear_error(tmp_path):
    import torchvision

    net = torchvision.models.resnet18(weights=None)
    torch.save(net.state_dict(), tmp_path / "w.pt")
    enc = build_encoder(EncoderSpec("r", weights=str(tmp_path / "w.pt")), seed=99)
    assert torch.equal(enc.conv1.weight, net.conv1.weight) and torch.equal(enc.layer4[1].conv2.weight, net.layer4[1].conv2.weight)
    with pytest.raises(FileNotFoundError, match="nope.pt.*offline"):
        build_encoder(EncoderSpec("r", weights=str(tmp_path / "nope.pt")), 0)
