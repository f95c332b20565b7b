"""Slide batches for grouped jobs: every slide exactly once, stable when the cohort changes a little."""

from slidemil.plan.jobs import slide_batches


def test_every_slide_once_and_about_per_job_each():
    slides = [f"s{i:03d}" for i in range(100)]
    batches = slide_batches(slides, 10)
    assert sorted(s for b in batches.values() for s in b) == slides
    assert len(batches) == 8 and max(map(len, batches.values())) <= 25  # a power of two: 100 / 10 -> 8


def test_batches_of_different_sizes_nest():
    """A tile batch lies within one graph batch, and is a union of embed batches: no rerun spreads."""
    slides = [f"s{i:04d}" for i in range(1000)]
    coarse, fine = slide_batches(slides, 32), slide_batches(slides, 8)
    where = {s: i for i, b in coarse.items() for s in b}
    assert len(fine) > len(coarse)
    assert all(len({where[s] for s in b}) == 1 for b in fine.values())


def test_adding_a_slide_moves_no_other_slide():
    slides = [f"s{i:03d}" for i in range(95)]
    before = {s: i for i, b in slide_batches(slides, 10).items() for s in b}
    after = {s: i for i, b in slide_batches([*slides, "new"], 10).items() for s in b}  # still 8 batches
    assert all(before[s] == after[s] for s in slides)


def test_one_per_job_is_one_slide_per_batch():
    assert sorted(slide_batches(["b", "a", "c"], 1).values()) == [["a"], ["b"], ["c"]]
