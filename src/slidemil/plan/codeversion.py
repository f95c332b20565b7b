"""The code version a workflow rule passes as a param: a hash of the modules its stage imports.

Snakemake reruns a job when its params change, but it does not see Python code imported from
src/ changing. Each rule therefore passes `code=code_version(...)`; a hand-kept list of modules
goes stale (a stage starts importing a new module and nobody adds it), so the list is computed:
the import closure of the stage's roots within the package, found by reading `import` statements
(anywhere in a module, lazy imports inside functions included) with `ast`, never by importing.

A root is a module path relative to the package ("mil/loop.py") or a CLI entry point
("cli:cmd_mil"). For a CLI entry only that function's code and what it imports count, so
editing one stage's command does not rerun every stage of a cohort.

What is hashed is what the code does: each module's syntax tree (`ast.dump`, which has no
comments, line numbers or layout) with docstrings removed, so a comment, a docstring or a blank
line reruns nothing. (A new Python may dump trees differently: that reruns every stage once.)

A registry package's `__init__.py` imports every registered module (`from . import abmil, clam,
...`) only so they register; a job that uses one model runs no other model's code. Modules named
in `excluded` (slidemil.plan.registered's files) are therefore not followed through such
registration imports: a job's roots name the registered modules it uses, and a registered module
that another module in the closure imports by name (weaksupcon's `from ..simclr import nt_xent`)
is still followed, so editing abmil.py reruns abmil's runs only, and simclr.py weaksupcon's too.
"""

from __future__ import annotations

import ast
import functools
import hashlib
from pathlib import Path

PACKAGE = "slidemil"


def _module_file(package_dir: Path, dotted: str) -> Path | None:
    """slidemil.a.b -> <package_dir>/a/b.py or a/b/__init__.py; None outside the package or missing."""
    parts = dotted.split(".")
    if parts[0] != PACKAGE:
        return None
    base = package_dir.joinpath(*parts[1:])
    for candidate in (base.with_suffix(".py"), base / "__init__.py"):
        if candidate.is_file():
            return candidate
    return None


def _dotted_name(package_dir: Path, path: Path) -> str:
    rel = path.relative_to(package_dir).with_suffix("")
    parts = [PACKAGE, *rel.parts]
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imports(tree: ast.AST, package_dir: Path, path: Path) -> tuple[set[Path], set[Path]]:
    """Package files run by the import statements under `tree` (of module file `path`), and those of them
    imported only as submodule objects of `path`'s own package by its `__init__.py` (`from . import
    abmil`): registration imports, which `excluded` (import_closure) may skip."""
    here = _dotted_name(package_dir, path)
    is_package = path.name == "__init__.py"
    found: set[Path] = set()
    registering: set[Path] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            modules, members, base = [a.name for a in node.names], [], ""
        elif isinstance(node, ast.ImportFrom):
            if node.level:  # relative: from .x import y / from .. import z
                anchor = here.split(".")
                drop = node.level - 1 if is_package else node.level
                anchor = anchor[: len(anchor) - drop] if drop else anchor
                base = ".".join(anchor + ([node.module] if node.module else []))
            else:
                base = node.module or ""
            modules, members = [base], [f"{base}.{a.name}" for a in node.names]  # `from pkg import submodule`
        else:
            continue
        for name in modules:
            # importing a.b.c runs a/__init__ and a/b/__init__ too
            parts = name.split(".")
            for i in range(1, len(parts) + 1):
                f = _module_file(package_dir, ".".join(parts[:i]))
                if f is not None:
                    own = is_package and i == len(parts) > 1 and ".".join(parts[:-1]) == here  # import pkg.sub
                    (registering if own else found).add(f)
        for name in members:
            f = _module_file(package_dir, name)
            if f is not None:
                (registering if is_package and base == here else found).add(f)
    return found | registering, registering - found


def _imported_modules(tree: ast.AST, package_dir: Path, path: Path) -> set[Path]:
    """Package files named by the import statements under `tree` (of module file `path`)."""
    return _imports(tree, package_dir, path)[0]


def _stamp(path: Path) -> tuple[int, int]:
    st = path.stat()
    return st.st_mtime_ns, st.st_size


@functools.cache
def _parsed(path: Path, stamp: tuple[int, int]) -> ast.Module:
    """The syntax tree of a file as of `stamp` (mtime, size), without the docstrings of its module, classes
    and functions (ast keeps no comments): a workflow computes ~20 stages' closures over the same modules
    while it is read, and nothing read from the tree (imports, registrations) is in a docstring."""
    tree = ast.parse(path.read_text())
    for node in ast.walk(tree):
        if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)) and node.body:
            first = node.body[0]
            if isinstance(first, ast.Expr) and isinstance(first.value, ast.Constant) and isinstance(first.value.value, str):
                node.body = node.body[1:]
    return tree


def _parse(path: Path) -> ast.Module:
    return _parsed(path, _stamp(path))


@functools.cache
def _module_imports(package_dir: Path, path: Path, stamp: tuple[int, int]) -> tuple[frozenset[Path], frozenset[Path]]:
    """(every package file the module imports, those its package `__init__` imports only to register them)."""
    found, registering = _imports(_parsed(path, stamp), package_dir, path)
    return frozenset(found), frozenset(registering)


@functools.cache
def _code(path: Path, stamp: tuple[int, int]) -> str:
    """What a module does: its tree without docstrings, dumped (no comments, line numbers or layout)."""
    return ast.dump(_parsed(path, stamp))


def import_closure(package_dir: Path, roots: list[str], excluded: frozenset[str] = frozenset()) -> dict[str, str]:
    """What determines the stage: {label: code dump} for every root and module it imports. `excluded`:
    package-relative module paths not followed through their package's registration imports."""
    package_dir = Path(package_dir)
    sources: dict[str, str] = {}
    todo: list[Path] = []
    for root in roots:
        if root.startswith("cli:"):
            cli = package_dir / "cli.py"
            tree = _parse(cli)
            fn = next((n for n in tree.body if isinstance(n, ast.FunctionDef) and n.name == root[4:]), None)
            if fn is None:
                raise KeyError(f"code_version: {cli} has no function {root[4:]!r}")
            # every stage also runs main() and the private helpers the commands share
            shared = [n for n in tree.body if isinstance(n, ast.FunctionDef)
                      and (n.name == "main" or n.name.startswith("_"))]
            for node in (fn, *shared):
                sources[f"cli:{node.name}"] = ast.dump(node)
            top_imports = [n for n in tree.body if isinstance(n, (ast.Import, ast.ImportFrom))]
            for node in (fn, *shared, *top_imports):
                todo.extend(_imported_modules(node, package_dir, cli))
        else:
            path = package_dir / root
            if not path.is_file():
                raise FileNotFoundError(f"code_version: no module {path}")
            todo.append(path)
    while todo:
        path = todo.pop()
        label = path.relative_to(package_dir).as_posix()
        if label in sources:
            continue
        stamp = _stamp(path)
        sources[label] = _code(path, stamp)
        found, registration = _module_imports(package_dir, path, stamp)
        todo.extend(f for f in found
                    if not (f in registration and f.relative_to(package_dir).as_posix() in excluded))
    return sources


def code_version(package_dir: Path, *roots: str, excluded: frozenset[str] = frozenset()) -> str:
    """12 hex digits of a hash over the import closure of `roots` (order-independent; see import_closure)."""
    h = hashlib.sha256()
    for label, code in sorted(import_closure(package_dir, list(roots), excluded).items()):
        h.update(label.encode() + b"\0" + code.encode() + b"\0")
    return h.hexdigest()[:12]
