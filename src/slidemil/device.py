"""The torch device a stage runs on, from the config's `device` ("auto", "cuda[:k]" or "cpu")."""

from __future__ import annotations

import logging

import torch

log = logging.getLogger(__name__)


def resolve_device(requested: str = "auto") -> torch.device:
    """"auto": the GPU when there is one, else the CPU. A CUDA device asked for on a machine without
    CUDA falls back to the CPU with a warning; the choice is logged, so a silent CPU run is visible."""
    cuda = torch.cuda.is_available()
    if requested == "auto":
        requested = "cuda" if cuda else "cpu"
    elif requested.startswith("cuda") and not cuda:
        log.warning("device %r requested but CUDA is not available: running on CPU", requested)
        requested = "cpu"
    dev = torch.device(requested)
    if dev.type == "cuda":
        log.info("running on %s (%s)", dev, torch.cuda.get_device_name(dev))
    else:
        log.info("running on %s with %d thread(s)", dev, torch.get_num_threads())
    return dev
