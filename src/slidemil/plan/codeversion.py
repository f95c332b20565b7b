"""The code version a workflow rule passes as a param: a hash of the modules its stage imports.

Snakemake reruns a job when its params change, but it does not see Python code imported from
src/ changing. Each rule therefore passes `code=code_version(...)`; a hand-kept list of modules
goes stale (a stage starts importing a new module and nobody adds it), so the list is computed:
the import closure of the stage's roots within the package, found by reading `import` statements
(anywhere in a module, lazy imports inside functions included) with `ast`, never by importing.

A root is a module path relative to the package ("mil/loop.py") or a CLI entry point
("cli:cmd_mil"). For a CLI entry only that function's source and what it imports count, so
editing one stage's command does not rerun every stage of a cohort.
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


def _imported_modules(tree: ast.AST, package_dir: Path, path: Path) -> set[Path]:
    """Package files named by the import statements under `tree` (of module file `path`)."""
    here = _dotted_name(package_dir, path)
    is_package = path.name == "__init__.py"
    found: set[Path] = set()
    for node in ast.walk(tree):
        names: list[str] = []
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:  # relative: from .x import y / from .. import z
                anchor = here.split(".")
                drop = node.level - 1 if is_package else node.level
                anchor = anchor[: len(anchor) - drop] if drop else anchor
                base = ".".join(anchor + ([node.module] if node.module else []))
            else:
                base = node.module or ""
            names = [base] + [f"{base}.{a.name}" for a in node.names]  # `from pkg import submodule`
        for name in names:
            # importing a.b.c runs a/__init__ and a/b/__init__ too
            parts = name.split(".")
            for i in range(1, len(parts) + 1):
                f = _module_file(package_dir, ".".join(parts[:i]))
                if f is not None:
                    found.add(f)
    return found


@functools.cache
def _parsed(path: Path, stamp: tuple[int, int]) -> tuple[str, ast.Module, list[str]]:
    """(text, syntax tree, lines with their endings) of a file as of `stamp` (mtime, size): a workflow
    computes ~20 stages' closures over the same modules while it is read."""
    text = path.read_text()
    return text, ast.parse(text), text.splitlines(keepends=True)


def _parse(path: Path) -> tuple[str, ast.Module, list[str]]:
    st = path.stat()
    return _parsed(path, (st.st_mtime_ns, st.st_size))


@functools.cache
def _module_imports(package_dir: Path, path: Path, stamp: tuple[int, int]) -> frozenset[Path]:
    return frozenset(_imported_modules(_parsed(path, stamp)[1], package_dir, path))


def _segment(lines: list[str], node: ast.stmt) -> str:
    """ast.get_source_segment(text, node) from the file's lines, without splitting the text again per call."""
    first, last = node.lineno - 1, node.end_lineno - 1  # type: ignore[operator]
    if first == last:
        return lines[first].encode()[node.col_offset:node.end_col_offset].decode()
    return (lines[first].encode()[node.col_offset:].decode() + "".join(lines[first + 1:last])
            + lines[last].encode()[:node.end_col_offset].decode())


def import_closure(package_dir: Path, roots: list[str]) -> dict[str, str]:
    """Source text that determines the stage: {label: text} for every root and module it imports."""
    package_dir = Path(package_dir)
    sources: dict[str, str] = {}
    todo: list[Path] = []
    for root in roots:
        if root.startswith("cli:"):
            cli = package_dir / "cli.py"
            _, tree, lines = _parse(cli)
            fn = next((n for n in tree.body if isinstance(n, ast.FunctionDef) and n.name == root[4:]), None)
            if fn is None:
                raise KeyError(f"code_version: {cli} has no function {root[4:]!r}")
            # every stage also runs main() and the private helpers the commands share
            shared = [n for n in tree.body if isinstance(n, ast.FunctionDef)
                      and (n.name == "main" or n.name.startswith("_"))]
            for node in (fn, *shared):
                sources[f"cli:{node.name}"] = _segment(lines, node)
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
        st = path.stat()
        sources[label] = _parsed(path, (st.st_mtime_ns, st.st_size))[0]
        todo.extend(_module_imports(package_dir, path, (st.st_mtime_ns, st.st_size)))
    return sources


def code_version(package_dir: Path, *roots: str) -> str:
    """12 hex digits of a hash over the import closure of `roots` (order-independent)."""
    h = hashlib.sha256()
    for label, text in sorted(import_closure(package_dir, list(roots)).items()):
        h.update(label.encode() + b"\0" + text.encode() + b"\0")
    return h.hexdigest()[:12]
