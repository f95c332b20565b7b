"""The code version of a stage covers exactly the modules its command imports, lazily or not."""

from __future__ import annotations

from pathlib import Path

import pytest

from slidemil.plan.codeversion import code_version, import_closure

ROOT = Path(__file__).resolve().parents[1]


def _package(tmp_path: Path) -> Path:
    return _write(tmp_path / "slidemil", {
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
    })


def _write(pkg: Path, files: dict[str, str]) -> Path:
    for name, text in files.items():
        (pkg / name).parent.mkdir(parents=True, exist_ok=True)
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


def test_comments_docstrings_and_layout_keep_the_version_and_code_changes_it(tmp_path):
    """The version hashes what the code does (its syntax tree without docstrings), not its text."""
    pkg = _package(tmp_path)
    before = code_version(pkg, "cli:cmd_a")
    (pkg / "c.py").write_text('"""Helpers."""\n\n\n# a comment\ndef helper():  # why\n    """Does nothing."""\n'
                              "    pass\n")
    cli = (pkg / "cli.py").read_text()
    (pkg / "cli.py").write_text("# the commands\n" + cli.replace("def cmd_a(a):\n", 'def cmd_a(a):\n    """Stage a."""\n'))
    assert code_version(pkg, "cli:cmd_a") == before
    (pkg / "c.py").write_text('def helper():\n    """Does nothing."""\n    return None\n')  # a statement
    assert code_version(pkg, "cli:cmd_a") != before


def test_a_string_statement_after_the_docstring_is_code(tmp_path):
    pkg = _package(tmp_path)
    before = code_version(pkg, "cli:cmd_a")
    (pkg / "c.py").write_text('def helper():\n    """Doc."""\n    "not a docstring"\n    pass\n')
    assert code_version(pkg, "cli:cmd_a") != before


def _registry(tmp_path: Path) -> Path:
    """A registry package whose __init__ imports every registered module to register it; `two` also
    uses one of `one`'s functions."""
    return _write(_package(tmp_path), {
        "reg/__init__.py": "from slidemil.reg.base import REGISTRY\nfrom slidemil.reg import one, two  # registration\n"
                           "import slidemil.reg.three\n",
        "reg/base.py": "REGISTRY = {}\n",
        "reg/one.py": "from slidemil.reg import REGISTRY\n\ndef f():\n    return 1\n",
        "reg/two.py": "from slidemil.reg import REGISTRY\nfrom slidemil.reg.one import f\n",
        "reg/three.py": "from slidemil.reg import REGISTRY\n",
        "job.py": "from slidemil.reg import REGISTRY\n",
    })


def test_registration_imports_of_excluded_modules_are_not_followed(tmp_path):
    pkg = _registry(tmp_path)
    excluded = frozenset({"reg/one.py", "reg/two.py", "reg/three.py"})
    assert {"reg/one.py", "reg/two.py", "reg/three.py"} <= set(import_closure(pkg, ["job.py"]))  # all registered
    base = {"job.py", "__init__.py", "reg/__init__.py", "reg/base.py"}
    assert set(import_closure(pkg, ["job.py"], excluded)) == base
    assert set(import_closure(pkg, ["job.py", "reg/three.py"], excluded)) == base | {"reg/three.py"}
    # two imports a function of one by name: a real dependency, followed although one is excluded
    assert set(import_closure(pkg, ["job.py", "reg/two.py"], excluded)) == base | {"reg/two.py", "reg/one.py"}


def _real_package(tmp_path: Path) -> Path:
    import shutil

    pkg = tmp_path / "slidemil"
    shutil.copytree(ROOT / "src" / "slidemil", pkg, ignore=shutil.ignore_patterns("__pycache__"))
    return pkg


def test_each_model_objective_and_sampler_has_its_own_closure(tmp_path):
    """A MIL run's version covers its model's module, not the others'; a pretrain entry's its objective's
    and sampler's (and what they import: weaksupcon uses simclr's nt_xent)."""
    from slidemil.plan import registered

    pkg, excluded = _real_package(tmp_path), registered.modules()
    models, objectives = registered.mil_models(), registered.objectives()
    sampler = registered.samplers()["spatial"].module

    def versions() -> dict[str, str]:
        mil = {m: code_version(pkg, "cli:cmd_mil", models[m].module, excluded=excluded) for m in ("abmil", "mean")}
        ssl = {o: code_version(pkg, "cli:cmd_pretrain", objectives[o].module, sampler, excluded=excluded)
               for o in ("simclr", "byol", "weaksupcon")}
        return {**mil, **ssl}

    before = versions()
    assert len(set(before.values())) == len(before)
    for module, changed in (("mil/models/abmil.py", {"abmil"}), ("ssl/losses/simclr.py", {"simclr", "weaksupcon"}),
                            ("ssl/samplers.py", {"simclr", "byol", "weaksupcon"}),
                            ("mil/loop.py", {"abmil", "mean"})):
        path = pkg / module
        text = path.read_text()
        path.write_text(text + "\n# a comment\n")
        assert versions() == before, module
        path.write_text(text + "\n_EDITED = True\n")
        after = versions()
        assert {k for k in before if after[k] != before[k]} == changed, module
        path.write_text(text)
    assert versions() == before


def test_an_edited_module_changes_the_version_within_one_process(tmp_path):
    """Parsed modules are cached per (mtime, size): an edit is still seen."""
    pkg = _package(tmp_path)
    before = code_version(pkg, "cli:cmd_a")
    (pkg / "c.py").write_text("def helper():\n    return 1  # edited\n")
    assert code_version(pkg, "cli:cmd_a") != before
