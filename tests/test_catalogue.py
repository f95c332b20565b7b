"""slidemil.plan.catalogue: what the workflow plans, checked before any job."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from slidemil.plan.catalogue import build_catalogue, check_weights

ROOT = Path(__file__).resolve().parents[1]


def _config(**changes) -> dict:
    cfg = yaml.safe_load((ROOT / "config" / "config.yaml").read_text())
    cfg.update(changes)
    return cfg


def test_every_missing_weights_file_is_named_with_its_config_key_in_one_error(tmp_path):
    (tmp_path / "here.pt").write_bytes(b"")
    base = _config()
    encoders = [{**base["encoders"][0], "name": n, "weights": w}
                for n, w in (("ok", "here.pt"), ("gone", "ckpt/gone.pt"), ("rand", None), ("lost", "/nowhere/lost.pt"))]
    pretrain = {"simclr-spatial": {**base["pretrain"]["simclr-spatial"], "weights": "imagenet.pt"}}
    hnm = {"simclr-hnm": {**base["hnm"]["simclr-hnm"], "enabled": True, "base": "lost"}}
    catalogue = build_catalogue(_config(encoders=encoders, pretrain=pretrain, hnm=hnm))
    with pytest.raises(ValueError) as err:
        check_weights(catalogue, tmp_path)
    message = str(err.value)
    assert "\n" not in message and str(tmp_path) in message
    for key, path in (("encoders[1].weights", "ckpt/gone.pt"), ("encoders[3].weights (the base of hnm.simclr-hnm)",
                                                                "/nowhere/lost.pt"),
                      ("pretrain.simclr-spatial.weights", "imagenet.pt")):
        assert f"{key} = {path!r}" in message
    assert "here.pt" not in message and "encoders[0]" not in message and "encoders[2]" not in message


def test_weights_the_workflow_writes_and_files_that_exist_pass(tmp_path):
    """An entry may name a pretrain entry's encoder.pt: a rule writes it, so it need not exist yet."""
    base = _config()
    (tmp_path / "w.pt").write_bytes(b"")
    encoders = [{**base["encoders"][0], "weights": "results/encoders/simclr-spatial/all/encoder.pt"},
                {**base["encoders"][0], "name": "local", "weights": "w.pt"}]
    check_weights(build_catalogue(_config(encoders=encoders)), tmp_path)
    check_weights(build_catalogue(_config()), tmp_path)  # the demo: random init, nothing to find
