import logging

import pytest
import torch

from slidemil.device import resolve_device


@pytest.mark.parametrize("requested,cuda,expected", [
    ("auto", False, "cpu"), ("auto", True, "cuda"), ("cuda", True, "cuda"), ("cuda:1", True, "cuda:1"),
    ("cuda", False, "cpu"), ("cpu", True, "cpu"),
])
def test_auto_is_the_gpu_when_there_is_one_and_a_missing_gpu_falls_back_to_the_cpu(monkeypatch, caplog, requested,
                                                                                   cuda, expected):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: cuda)
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda dev=None: "stub GPU")
    with caplog.at_level(logging.INFO, logger="slidemil.device"):
        assert resolve_device(requested) == torch.device(expected)
    warned = any(r.levelno == logging.WARNING for r in caplog.records)
    assert warned == (requested.startswith("cuda") and not cuda)
