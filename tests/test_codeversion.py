"""The code version of a stage covers exactly the modules its command imports, lazily or not."""

from __future__ import annotations

from pathlib import Path

import pytest

from slidemil.plan.codeversion import code_version, import_closure

ROOT = Path(__file__).resolve().parents[1]


def _package(tmp_path: Path) -> Path:
    pkg = tmp_path / "slidemil"
    (pkg / "sub").mkdir(parents=True)
    files = {
        "__init__.py": "",
        "cli.py": ("import json\n\ndef _json(t):\n    return json.loads(t)\n\n"
                   "def cmd_a(a):\n    from slidemil.a import run\n    run()\n\n"
                   "def cmd_b(a):\n    from slidemil import b\n    b.run()\n\n"
                   "def main():\n    from slidemil.errors import Failure\n"),
        "a.py": "def run():\n    from .sub import deep\n    deep.go()\n",
        "b.py": "import numpy\n\ndef run():\n    pass\n",
        "errors.py": "class Failure(Exception):\n    pass\n",
        "sub/__init__.py": "",
        "sub/deep.py": "from ..c import helper\n\ndef go():\n    helper()\n",
        "c.py": "def helper():\n    pass\n",
    }
    for name, text in files.items():
        (pkg / name).write_text(text)
    return pkg


def test_closure_follows_lazy_relative_and_submodule_imports(tmp_path):
    pkg = _package(tmp_path)
    assert set(import_closure(pkg, ["cli:cmd_a"])) == {
        "cli:cmd_a", "cli:_json", "cli:main", "a.py", "sub/__init__.py", "sub/deep.py", "c.py", "errors.py",
        "__init__.py"}
    assert set(import_closure(pkg, ["cli:cmd_b"])) == {
        "cli:cmd_b", "cli:_json", "cli:main", "b.py", "errors.py", "__init__.py"}


def test_version_changes_with_imported_code_only(tmp_path):
    pkg = _package(tmp_path)
    before_a, before_b = code_version(pkg, "cli:cmd_a"), code_version(pkg, "cli:cmd_b")
    (pkg / "c.py").write_text("def helper():\n    return 1\n")  # two imports deep, relative
    assert code_version(pkg, "cli:cmd_a") != before_a
    assert code_version(pkg, "cli:cmd_b") == before_b
    cli = (pkg / "cli.py").read_text()
    (pkg / "cli.py").write_text(cli.replace("b.run()", "b.run(); b.run()"))  # stage b's command only
    assert code_version(pkg, "cli:cmd_b") != before_b
    assert code_version(pkg, "cli:cmd_a") != before_a  # (c.py still changed)


def test_unknown_roots_are_errors(tmp_path):
    pkg = _package(tmp_path)
    with pytest.raises(KeyError, match="cmd_nope"):
        code_version(pkg, "cli:cmd_nope")
    with pytest.raises(FileNotFoundError):
        code_version(pkg, "nope.py")


def test_real_stages_cover_the_modules_their_code_reads():
    pkg = ROOT / "src" / "slidemil"
    assert {"evaluate/metrics.py", "slides/store.py", "mil/run.py", "mil/loop.py", "mil/data.py"} <= set(
        import_closure(pkg, ["cli:cmd_mil"]))
    assert {"slides/qcpicture.py", "slides/failures.py", "files.py", "slides/tiling.py"} <= set(
        import_closure(pkg, ["cli:cmd_tile"]))
    assert {"slides/qcpicture.py", "slides/failures.py", "slides/tissue.py"} <= set(import_closure(pkg, ["cli:cmd_mask"]))
    # the workflow's per-slide job masks and tiles: both stages' modules
    assert {"slides/tissue.py", "slides/tiling.py", "slides/slide.py", "slides/store.py"} <= set(
        import_closure(pkg, ["cli:cmd_preprocess"]))


@pytest.mark.parametrize("stage", ["cli:cmd_mil", "cli:cmd_preprocess", "cli:cmd_heatmaps", "cli:cmd_embed"])
def test_editing_any_module_a_real_stage_imports_changes_its_version(tmp_path, stage):
    import shutil

    pkg = tmp_path / "slidemil"
    shutil.copytree(ROOT / "src" / "slidemil", pkg, ignore=shutil.ignore_patterns("__pycache__"))
    before = code_version(pkg, stage)
    modules = [m for m in import_closure(pkg, [stage]) if not m.startswith("cli:")]
    assert len(modules) >= 5
    for module in modules:
        path = pkg / module
        text = path.read_text()
        path.write_text(text + "\n_EDITED = True\n")
        assert code_version(pkg, stage) != before, module
        path.write_text(text)
    assert code_version(pkg, stage) == before


def test_cli_function_sources_are_their_exact_text():
    """The cached line slicing gives what ast.get_source_segment gives (non-ASCII lines included)."""
    import ast

    from slidemil.plan.codeversion import _segment

    text = (ROOT / "src" / "slidemil" / "cli.py").read_text() + '\ndef cmd_é(a):\n    return "é" + "x"\n'
    lines = text.splitlines(keepends=True)
    nodes = [n for n in ast.parse(text).body if isinstance(n, ast.FunctionDef)]
    assert len(nodes) > 10
    assert all(_segment(lines, n) == ast.get_source_segment(text, n) for n in nodes)


def test_an_edited_module_changes_the_version_within_one_process(tmp_path):
    """Parsed modules are cached per (mtime, size): an edit is still seen."""
    pkg = _package(tmp_path)
    before = code_version(pkg, "cli:cmd_a")
    (pkg / "c.py").write_text("def helper():\n    return 1  # edited\n")
    assert code_version(pkg, "cli:cmd_a") != before
