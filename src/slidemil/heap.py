"""Process-wide memory-allocator settings for MIL training on a CPU host (a top-level module: importing
it must not import torch).

Why: a training step on a 10,000-tile bag allocates and frees hundreds of [N, 512] / [N, 1024]
float32 tensors (20-40 MB). glibc serves blocks under its mmap threshold from the heap, and that
threshold rises by itself up to 32 MB once a large block has been freed, so after the first step
those tensors come from the heap, whose freed holes stay resident: measured with
benchmarks/mil.py, TransMIL peaked at 2.4 GB RSS while its live tensors never exceeded 0.57 GB
above the 1.0 GB of torch + model (SRMIL likewise). A fixed threshold gives every block of
`MMAP_THRESHOLD` or more its own mapping, returned to the OS when freed, so peak RSS follows the
live tensors. Fresh mappings must be faulted in: with 4 KiB pages that cost TransMIL ~1.7x the CPU
time of a step, so torch is asked for 2 MB-aligned, huge-page-advised tensors (its
THP_MEM_ALLOC_ENABLE; the kernel's transparent_hugepage must be `madvise` or `always`), which
brings the cost down to ~1.2x. Nothing the models compute changes.
"""

from __future__ import annotations

import ctypes
import os
import sys

MMAP_THRESHOLD = 4 << 20  # bytes; blocks at least this large get their own mapping
_M_MMAP_THRESHOLD = -3  # mallopt parameter number (malloc.h)


def tune_heap() -> bool:
    """Apply the settings above to this process; True when glibc took the threshold.

    THP_MEM_ALLOC_ENABLE is read by torch at its first allocation, so it only takes effect when
    this runs before `import torch` (the `mil` CLI command and benchmarks/mil.py's children do);
    an explicit value in the environment is kept. No-op off glibc.
    """
    if "torch" not in sys.modules:
        os.environ.setdefault("THP_MEM_ALLOC_ENABLE", "1")
    try:
        libc = ctypes.CDLL("libc.so.6")
        return bool(libc.mallopt(_M_MMAP_THRESHOLD, MMAP_THRESHOLD))
    except (OSError, AttributeError):
        return False
