"""slidemil.plan.registered (the registries read from the source) equals the imported registries."""

from __future__ import annotations

import inspect
import subprocess
import sys

import pytest

from slidemil.mil.models import MIL_MODELS
from slidemil.plan import registered
from slidemil.registry import constructor_params
from slidemil.ssl.losses import OBJECTIVES
from slidemil.ssl.samplers import PAIR_SAMPLERS

# registry, its ast view, and the attributes planning and the trainers ask of every class
VIEWS = {
    "objectives": (OBJECTIVES, registered.objectives, ("uses_labels", "normalize", "teacher", "keeps_teacher")),
    "samplers": (PAIR_SAMPLERS, registered.samplers, ("needs_graph", "radius")),
    "mil_models": (MIL_MODELS, registered.mil_models, ("has_instance_logits",)),
}


@pytest.mark.parametrize("kind", VIEWS)
def test_ast_view_equals_the_imported_registry(kind):
    live, view, asked = VIEWS[kind]
    declared = view()
    assert set(declared) == set(live) and declared
    for name, entry in declared.items():
        cls = live[name]
        assert entry.name == name
        assert set(asked) <= set(entry.attrs), (name, asked)
        assert {k: getattr(cls, k) for k in entry.attrs} == entry.attrs, name
        params = constructor_params(cls)
        assert list(entry.params) == list(params), name
        for p, default in entry.params.items():
            expected = registered.REQUIRED if params[p].default is inspect.Parameter.empty else params[p].default
            assert default == expected, (name, p)


def test_planner_attributes_have_their_meaning():
    assert registered.objectives()["dino"].attrs["keeps_teacher"]
    assert not registered.objectives()["byol"].attrs["keeps_teacher"]
    assert [n for n, s in registered.samplers().items() if s.attrs["needs_graph"]] == ["spatial", "mixed"]
    assert registered.mil_models()["srmil"].params["w_gen"] == 1.8


def _package(tmp_path, files: dict[str, str]):
    pkg = tmp_path / "slidemil"
    pkg.mkdir()
    for name, text in files.items():
        (pkg / name).write_text(text)
    return pkg


def test_inherited_attributes_and_constructor_with_the_subclass_winning(tmp_path, monkeypatch):
    monkeypatch.setattr(registered, "PACKAGE_DIR", _package(tmp_path, {
        "base.py": "class Base:\n    a = 1\n    b = (2, 'x')\n"
                   "    def __init__(self, k: int = 3, *, f=max) -> None: ...\n",
        "toy.py": "from slidemil.base import Base\n\n"
                  "@register_sampler('toy')\nclass Toy(Base):\n    b = None\n    c = dict(x=1)\n",
    }))
    toy = registered.samplers()["toy"]
    assert toy.attrs == {"a": 1, "b": None}  # c is no literal
    assert toy.params == {"k": 3, "f": registered.NotLiteral("max")}


def test_a_name_registered_twice_is_the_same_error_as_the_live_registry(tmp_path, monkeypatch):
    from slidemil.registry import Registry

    monkeypatch.setattr(registered, "PACKAGE_DIR", _package(tmp_path, {
        "a.py": "@register_objective('dup')\nclass One: ...\n",
        "b.py": "@register_objective('dup')\nclass Two: ...\n",
    }))
    with pytest.raises(KeyError) as declared:
        registered.objectives()
    live = Registry("objective")
    one, two = type("One", (), {"__module__": "slidemil.a"}), type("Two", (), {"__module__": "slidemil.b"})
    live.register("dup")(one)
    with pytest.raises(KeyError) as imported:
        live.register("dup")(two)
    message = "objective 'dup' is registered twice: slidemil.a.One and slidemil.b.Two"
    assert declared.value.args == imported.value.args == (message,)


def test_reading_the_registries_imports_no_torch():
    code = ("import sys; from slidemil.plan import registered as r; "
            "r.objectives(), r.samplers(), r.mil_models(); assert 'torch' not in sys.modules")
    subprocess.run([sys.executable, "-c", code], check=True)
