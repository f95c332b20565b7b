"""Slide batches for grouped jobs: every slide exactly once, stable when the cohort changes a little."""

from slidemil.jobs import slide_batches


def test_every_slide_once_and_about_per_job_each():
    slides = [f"s{i:03d}" for i in range(100)]
    batches = slide_batches(slides, 10)
    assert sorted(s for b in batches.values() for s in b) == slides
    assert len(batches) <= 10 and max(map(len, batches.values())) <= 20


def test_adding_a_slide_moves_no_other_slide():
    slides = [f"s{i:03d}" for i in range(95)]
    before = {s: i for i, b in slide_batches(slides, 10).items() for s in b}
    after = {s: i for i, b in slide_batches([*slides, "new"], 10).items() for s in b}  # still 10 batches
    assert all(before[s] == after[s] for s in slides)


def test_one_per_job_is_one_slide_per_batch():
    assert sorted(slide_batches(["b", "a"], 1).values()) == [["a"], ["b"]]
