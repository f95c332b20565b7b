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

from conftest import SMALL
from slidemil.cohorts.demo import make_demo_slide
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


@pytest.fixture(scope="module")
def cohort_report(tmp_path_factory) -> tuple[Path, Path]:
    """(workdir, report.html) of a researcher's cohort: demo.enabled false, a sheet of 8 slides on disk
    (small demo renders, no annotations) and one that is not a slide; one encoder, two models, 1 seed."""
    chromium()
    from test_workflow import _tiny_config

    workdir = tmp_path_factory.mktemp("cohort")
    slides = workdir / "slides"
    slides.mkdir()
    rows = ["slide_id\tpath\tlabel\tpatient_id"]
    for i in range(8):
        make_demo_slide(f"c{i}", i % 2, 0, slides / f"c{i}.tiff", slides / f"c{i}.geojson", SMALL)
        rows.append(f"c{i}\t{slides / f'c{i}.tiff'}\t{'tumour' if i % 2 else 'normal'}\tP{i}")
    (slides / "broken.tiff").write_bytes(b"not a TIFF")
    rows.append(f"broken\t{slides / 'broken.tiff'}\ttumour\tP8")
    _tiny_config(workdir, **{"demo.enabled": False, "pretrain": {}, "seeds": [0], "on_slide_error": "skip"})
    (workdir / "samples.tsv").write_text("\n".join(rows) + "\n")  # after _tiny_config, which writes the demo's
    snakemake(workdir)
    html = workdir / "results" / "report.html"
    snakemake(workdir, "--report", str(html))
    return workdir, html


LAYOUT_PROBE = """<script>setTimeout(function () {
  var pane = document.querySelector('div.h-screen.overflow-auto'), out = [];
  function covered(el) {  // another element (the menu) on top of el's left edge, once el is in view
    el.scrollIntoView({block: 'center'}); var r = el.getBoundingClientRect();
    var top = document.elementFromPoint(r.left + 2, r.top + Math.min(r.height / 2, 8));
    return !(top && (el === top || el.contains(top)));
  }
  var title = document.querySelector('div.prose h1');
  if (!title || covered(title)) out.push('title covered');
  document.querySelectorAll('table.slidemil').forEach(function (t, i) {
    if (covered(t.querySelector('td'))) out.push('table ' + i + ' covered');
    if (t.getBoundingClientRect().right > window.innerWidth) out.push('table ' + i + ' beyond the window');
  });
  if (pane.scrollWidth > pane.clientWidth + 1) out.push('page scrolls sideways');
  document.body.setAttribute('data-layout', out.join('; ') || 'ok');
}, 3000);</script>"""


def layout_problems(html: Path, out: Path, profile: Path) -> str:
    """What the layout probe finds on the front page at 1400 x 900 px ('ok': nothing)."""
    head, body_end, tail = html.read_text(encoding="utf-8").rpartition("</body>")
    out.write_text(head + LAYOUT_PROBE + body_end + tail, encoding="utf-8")
    proc = subprocess.run([chromium(), *CHROMIUM_FLAGS, "--window-size=1400,900", f"--user-data-dir={profile}",
                           "--dump-dom", out.as_uri()], capture_output=True, text=True, timeout=180)
    m = re.search(r'data-layout="([^"]*)"', proc.stdout)
    assert m, "the layout probe did not run"
    return m.group(1)


def headings(dom: str) -> list[str]:
    return [re.sub(r"<[^>]+>", "", h).strip() for h in re.findall(r'<h2 class="slidemil"[^>]*>(.*?)</h2>', dom)]


def front_page(html: Path, tmp_path: Path) -> tuple[str, _Rendered, str]:
    """(DOM, parsed page, its text with whitespace collapsed) of the report as it opens."""
    dom = render(html, tmp_path / "profile")
    page = parse(dom)
    return dom, page, " ".join(" ".join(page.text).split())


def _assert_readable_tables(page: _Rendered, text: str) -> None:
    assert "System Message" not in text and "Error in" not in text, "docutils error on the front page"
    long = [c for c in page.cells if re.search(r"(?<![\w.])\d\.\d{4}", c)]  # 0.8123..., not arXiv 2602.09477
    assert not long, f"numbers with more than 3 decimals: {long[:3]}"


@pytest.mark.e2e
def test_report_front_page_is_the_cohort_on_a_researchers_slides(cohort_report, tmp_path):
    workdir, html = cohort_report
    dom, page, text = front_page(html, tmp_path)
    assert headings(dom) == ["Slides", "Benchmark", "Comparisons"]  # no claims, no empty FROC
    _assert_readable_tables(page, text)
    # the slides table: the failed slide first, with its reason, then the slides with their predictions
    cohort = pd.read_csv(workdir / "results" / "cohort.csv", dtype=str, keep_default_na=False)
    assert cohort.loc[0, "slide_id"] == "broken" and cohort.loc[0, "qc"] == "failed" and cohort.loc[0, "reason"]
    first = page.cells.index("slide_id")
    assert page.cells[first + len(cohort.columns)] == "broken"
    assert cohort.loc[0, "reason"] in page.cells
    assert any(re.fullmatch(r"(normal|tumour) \d\.\d{3}", c) for c in page.cells), "no prediction per model"
    bench = pd.read_csv(workdir / "results" / "benchmark.csv").iloc[0]
    auc = f"{bench.pooled_auc:.3f} [{bench.pooled_auc_ci_lo:.3f}, {bench.pooled_auc_ci_hi:.3f}]"
    assert auc in page.cells, f"benchmark AUC {auc!r} not shown beside its CI"
    assert layout_problems(html, tmp_path / "probe.html", tmp_path / "profile2") == "ok"


@pytest.mark.e2e
def test_report_front_page_of_the_demo_has_the_claims_and_the_froc(report, tmp_path):
    workdir, html = report
    dom, page, text = front_page(html, tmp_path)
    assert "slidemil report" in text  # the workflow description, put in place by the report's JS
    for category in ("0. Slides", "1. Benchmark", "4. Attention heatmaps", "6. Quality control"):
        assert category in text, f"menu lacks {category!r}"
    assert headings(dom)[:2] == ["Slides", "Benchmark"] and "Claims" in headings(dom)
    _assert_readable_tables(page, text)
    froc = pd.read_csv(next((workdir / "results" / "heatmaps").rglob("froc.csv")))
    assert f"{froc.loc[0, 'froc']:.3f}" in page.cells


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
