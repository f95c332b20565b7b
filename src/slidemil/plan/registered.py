"""The registries as the source declares them, read with `ast`: planning must not import torch.

The Snakefile checks config names against the registries and asks what a registered class needs
(an objective's slide labels, a sampler's neighbour graphs); the registries themselves live in
modules that import torch. This reads every class of the package decorated
`@register_objective("name")`, `@register_sampler("name")` or `@register_mil("name")`: its class
attributes assigned a literal (inherited from base classes defined in the package, the subclass
winning) and its constructor's keyword parameters with their defaults (the nearest `__init__`
up the package's bases). The duplicate-name rule is slidemil.registry's. tests/test_registered.py
checks that this view equals the imported registries, so the two cannot drift.
"""

from __future__ import annotations

import ast
import functools
from dataclasses import dataclass
from pathlib import Path

from slidemil.plan.codeversion import _dotted_name, _module_file, _parse
from slidemil.registry import duplicate_error

PACKAGE_DIR = Path(__file__).resolve().parents[1]
# decorator -> the kind its registry names in errors
KINDS = {"register_objective": "objective", "register_sampler": "pair sampler", "register_mil": "MIL model"}


class Required:
    """The default of a parameter that has none."""

    def __repr__(self) -> str:
        return "REQUIRED"


REQUIRED = Required()


@dataclass(frozen=True)
class NotLiteral:
    """A default that is not a literal (e.g. a call), as its source text."""

    source: str


@dataclass(frozen=True)
class Registered:
    """A registered class: its name, literal class attributes and constructor parameters -> defaults."""

    name: str
    attrs: dict[str, object]
    params: dict[str, object]


@dataclass(frozen=True)
class _Class:
    module: str
    node: ast.ClassDef
    path: Path


def _literal(node: ast.expr) -> object:
    try:
        return ast.literal_eval(node)
    except (ValueError, TypeError, SyntaxError, MemoryError, RecursionError):
        return NotLiteral(ast.unparse(node))


@functools.cache
def _module_names(path: Path, stamp: tuple[int, int]) -> dict[str, _Class | Path]:
    """Top-level names of a module: its classes, and names imported from other package modules (their file)."""
    _, tree, _ = _parse(path)
    module = _dotted_name(PACKAGE_DIR, path)
    names: dict[str, _Class | Path] = {}
    for node in tree.body:
        if isinstance(node, ast.ClassDef):
            names[node.name] = _Class(module, node, path)
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            source = _module_file(PACKAGE_DIR, node.module)
            if source is not None:
                names.update({alias.asname or alias.name: source for alias in node.names})
    return names


def _names(path: Path) -> dict[str, _Class | Path]:
    st = path.stat()
    return _module_names(path, (st.st_mtime_ns, st.st_size))


def _resolve(path: Path, name: str) -> _Class | None:
    """The package class `name` means in module `path` (followed through imports); None outside the package."""
    for _ in range(10):  # re-export chains are short; a cycle must not hang planning
        found = _names(path).get(name)
        if not isinstance(found, Path):
            return found
        path = found
    return None


def _bases(cls: _Class) -> list[_Class]:
    return [b for b in (_resolve(cls.path, n.id) for n in cls.node.bases if isinstance(n, ast.Name)) if b]


def _attrs(cls: _Class) -> dict[str, object]:
    attrs: dict[str, object] = {}
    for base in reversed(_bases(cls)):
        attrs.update(_attrs(base))
    for stmt in cls.node.body:
        if isinstance(stmt, ast.Assign) and len(stmt.targets) == 1 and isinstance(stmt.targets[0], ast.Name):
            target, value = stmt.targets[0].id, _literal(stmt.value)
        elif isinstance(stmt, ast.AnnAssign) and isinstance(stmt.target, ast.Name) and stmt.value is not None:
            target, value = stmt.target.id, _literal(stmt.value)
        else:
            continue
        if isinstance(value, NotLiteral):
            attrs.pop(target, None)  # the subclass overrides the base's literal with something else
        else:
            attrs[target] = value
    return attrs


def _params(cls: _Class) -> dict[str, object]:
    init = next((s for s in cls.node.body if isinstance(s, ast.FunctionDef) and s.name == "__init__"), None)
    if init is None:
        return next((p for p in map(_params, _bases(cls)) if p), {})
    a = init.args
    positional = [*a.posonlyargs, *a.args][1:]  # less self
    defaults: list[object] = [REQUIRED] * (len(positional) - len(a.defaults)) + [_literal(d) for d in a.defaults]
    params = {arg.arg: d for arg, d in zip(positional, defaults)}
    params.update({arg.arg: REQUIRED if d is None else _literal(d) for arg, d in zip(a.kwonlyargs, a.kw_defaults)})
    return params


def _registered(decorator: str) -> dict[str, Registered]:
    stamps = tuple((p, st.st_mtime_ns, st.st_size) for p in sorted(PACKAGE_DIR.rglob("*.py")) for st in [p.stat()])
    return dict(_registered_as_of(decorator, stamps))


@functools.cache
def _registered_as_of(decorator: str, stamps: tuple[tuple[Path, int, int], ...]) -> dict[str, Registered]:
    """The classes registered with `decorator` in the package files `stamps` (path, mtime, size): planning
    asks per job, the answer changes only with the files."""
    found: dict[str, Registered] = {}
    where: dict[str, str] = {}
    for path, *_ in stamps:
        for cls in (c for c in _names(path).values() if isinstance(c, _Class)):
            for deco in cls.node.decorator_list:
                if not (isinstance(deco, ast.Call) and isinstance(deco.func, ast.Name) and deco.func.id == decorator
                        and deco.args and isinstance(deco.args[0], ast.Constant)):
                    continue
                name, origin = deco.args[0].value, f"{cls.module}.{cls.node.name}"
                if name in where and where[name] != origin:
                    raise duplicate_error(KINDS[decorator], name, where[name], origin)
                where[name] = origin
                found[name] = Registered(name, _attrs(cls), _params(cls))
    return found


def objectives() -> dict[str, Registered]:
    """slidemil.ssl.losses.OBJECTIVES as declared."""
    return _registered("register_objective")


def samplers() -> dict[str, Registered]:
    """slidemil.ssl.samplers.PAIR_SAMPLERS as declared."""
    return _registered("register_sampler")


def mil_models() -> dict[str, Registered]:
    """slidemil.mil.models.MIL_MODELS as declared."""
    return _registered("register_mil")
