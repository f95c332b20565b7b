"""The Snakemake report of a tiny run, rendered in headless Chromium: tables and pictures are there."""

from __future__ import annotations

import base64
import os
import re
import shutil
import subprocess
from html.parser import HTMLParser
from pathlib import Path

import pandas as pd
import pytest
import yaml

from test_workflow import snakemake

CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update", "--disable-sync",
                  "--virtual-time-budget=15000"]


def chromium() -> str:
    """The Chromium binary; a missing one fails under CI (SLIDEMIL_CI=1) and skips elsewhere."""
    for name in ("chromium", "chromium-browser"):
        if path := shutil.which(name):
            return path
    message = "headless Chromium not found (Debian: apt-get install chromium)"
    if os.environ.get("SLIDEMIL_CI") == "1":
        pytest.fail(message + "; CI (SLIDEMIL_CI=1) must render the report")
    pytest.skip(message)


def render(html: Path, profile: Path) -> str:
    """The DOM of `html` after its scripts ran (Chromium --dump-dom)."""
    proc = subprocess.run([chromium(), *CHROMIUM_FLAGS, f"--user-data-dir={profile}", "--dump-dom", html.as_uri()],
                          capture_output=True, text=True, timeout=180)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc.stdout


def show_result(report: Path, result: str, out: Path) -> Path:
    """A copy of the report that opens `result` (a path as the report keys it) the way its own
    buttons do, once the app has rendered."""
    script = ("<script>setTimeout(function () { var r = results[%r]; app.setView({content: 'img', "
              "contentPath: r.data_uri, resultPath: %r, navbarMode: 'resultinfo'}); }, 1000);</script>"
              % (result, result))
    head, body_end, tail = report.read_text(encoding="utf-8").rpartition("</body>")  # the bundled JS holds others
    out.write_text(head + script + body_end + tail, encoding="utf-8")
    return out


class _Rendered(HTMLParser):
    """Text of elements outside <script>/<style>, the <img> sources and the cells of table.slidemil."""

    def __init__(self) -> None:
        super().__init__()
        self.text: list[str] = []
        self.images: list[str] = []
        self.cells: list[str] = []
        self._skip = 0
        self._in_table = 0
        self._cell: list[str] | None = None

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        if tag in ("script", "style"):
            self._skip += 1
        elif tag == "img" and attrs.get("src"):
            self.images.append(attrs["src"])
        elif tag == "table" and "slidemil" in (attrs.get("class") or "").split():
            self._in_table += 1
        elif tag in ("td", "th") and self._in_table:
            self._cell = []

    def handle_endtag(self, tag):
        if tag in ("script", "style"):
            self._skip -= 1
        elif tag == "table" and self._in_table:
            self._in_table -= 1
        elif tag in ("td", "th") and self._cell is not None:
            self.cells.append(" ".join("".join(self._cell).split()))
            self._cell = None

    def handle_data(self, data):
        if self._skip:
            return
        self.text.append(data)
        if self._cell is not None:
            self._cell.append(data)


def parse(dom: str) -> _Rendered:
    p = _Rendered()
    p.feed(dom)
    return p


def _png_bytes(data_uri: str) -> bytes:
    """The bytes of a data:image/png[;param=...];base64,... URI."""
    header, _, payload = data_uri.partition(",")
    assert header.startswith("data:image/png") and header.endswith(";base64"), header
    return base64.b64decode(payload)


@pytest.fixture(scope="module")
def report(finished_run) -> tuple[Path, Path]:
    """(workdir, report.html) of the finished tiny run."""
    chromium()  # fail or skip before building the report
    html = finished_run / "results" / "report.html"
    snakemake(finished_run, "--report", str(html))
    return finished_run, html


@pytest.mark.e2e
def test_report_front_page_renders_the_benchmark_table(report, tmp_path):
    workdir, html = report
    page = parse(render(html, tmp_path / "profile"))
    text = " ".join(" ".join(page.text).split())
    assert "slidemil benchmark" in text  # the workflow description, put in place by the report's JS
    for category in ("1. Benchmark", "4. Attention heatmaps", "6. Quality control"):
        assert category in text, f"menu lacks {category!r}"
    bench = pd.read_csv(workdir / "results" / "benchmark.csv", dtype=str, keep_default_na=False)
    assert len(bench)
    for column in bench.columns:
        assert column in page.cells, f"benchmark column {column!r} not rendered"
    for value in bench.iloc[0]:
        assert value in page.cells, f"benchmark value {value!r} not rendered"
    froc = pd.read_csv(next((workdir / "results" / "heatmaps").rglob("froc.csv")), dtype=str, keep_default_na=False)
    assert froc.loc[0, "froc"] in page.cells


@pytest.mark.e2e
def test_report_shows_roc_curves_and_a_heatmap(report, tmp_path):
    workdir, html = report
    heatmap = sorted((workdir / "results" / "heatmaps").rglob("png/*.png"))[0]
    for result in (workdir / "results" / "roc.png", heatmap):
        key = str(result.relative_to(workdir))
        page = parse(render(show_result(html, key, tmp_path / "show.html"), tmp_path / "profile"))
        shown = [_png_bytes(src) for src in page.images if src.startswith("data:image/png")]
        assert result.read_bytes() in shown, f"{key} is not displayed"
        assert re.search(re.escape(result.name), " ".join(page.text)), f"{key} is not named in the navigation"
