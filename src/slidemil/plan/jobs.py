"""Grouping per-slide work into jobs: many tiny jobs cost more in process start-up than in work."""

from __future__ import annotations

import hashlib
import math


def slide_batches(slides: list[str], per_job: int) -> dict[int, list[str]]:
    """Split slide ids into batches of per_job to 2 x per_job slides (on average) by a hash of each id:
    {batch id: sorted ids}. per_job 1: one slide per batch.

    Hashing, not chunking the sorted list, keeps a slide in its batch when others are added or
    dropped (as long as the number of batches stays the same), so adding a slide to a cohort reruns
    one batch, not every batch after it. The number of batches is a power of two, so the batches of
    two stages nest whatever their per_job: re-tiling one tile batch re-embeds only the embed
    batches holding those slides, never a batch it shares no slide with. Empty batches are left out
    (ids stay the hash buckets, so a job's name does not shift).
    """
    if per_job < 1:
        raise ValueError(f"slides per job must be >= 1, got {per_job}")
    if per_job == 1:
        return dict(enumerate([s] for s in sorted(slides)))
    n = 1 << max(0, math.floor(math.log2(max(1.0, len(slides) / per_job))))
    batches: list[list[str]] = [[] for _ in range(n)]
    for sid in slides:
        batches[int(hashlib.sha1(sid.encode()).hexdigest()[:8], 16) % n].append(sid)
    return {i: sorted(b) for i, b in enumerate(batches) if b}
