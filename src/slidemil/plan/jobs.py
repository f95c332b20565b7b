"""Grouping per-slide work into jobs: many tiny jobs cost more in process start-up than in work."""

from __future__ import annotations

import hashlib
import math
from collections.abc import Callable, MutableMapping, Sequence
from typing import Any


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



class FamilySettings:
    """Snakemake's --set-resources/--set-threads tables (a profile's set-resources:) are keyed by rule
    name, and Snakemake reads a rule's entry once, when the rule is defined. A batch rule (tile_b3,
    embed_b0_<encoder>) borrows its families' entries (`embed`; profiles/slurm documents the names)
    for that moment: `lend` merges them (families first, the rule's own entry wins) under the rule's
    name, and takes the previous loan back. So the tables, which every cluster job gets on its
    command line, hold no entry per batch: they stay the size the user wrote, at any cohort size."""

    def __init__(self, tables: Sequence[tuple[MutableMapping[str, Any], Callable[[list], Any]]]) -> None:
        self.tables = tables  # (table, merge of its entries, weakest first)
        self.lent: list[tuple[MutableMapping[str, Any], str, Any]] = []  # (table, rule, its own entry or None)

    def lend(self, rule: str, families: Sequence[str]) -> str:
        """The rule's name, its families' entries merged under it until the next call."""
        for table, name, own in self.lent:  # the previous rule is defined by now
            if own is None:
                del table[name]
            else:
                table[name] = own
        self.lent = []
        for table, merge in self.tables:
            entries = [table[name] for name in (*families, rule) if name in table]
            if entries:
                self.lent.append((table, rule, table.get(rule)))
                table[rule] = merge(entries)
        return rule
