"""A fingerprint of the code a stage runs, so that a code change reruns exactly its stages.

Every rule names its stage by dotted path (``"vqshrink.stages.synthetic.train_vq"``) and
carries this fingerprint as the Snakemake param ``code``: the module of the stage and every
``vqshrink`` module it imports (directly, lazily inside a function, or through a parent
package), read as parsed syntax. A change to any of them changes the param, and Snakemake
reruns the stage ("Params have changed since last execution") and what depends on it; a
change anywhere else in the package (another stage family, the launcher, the tests) reruns
nothing, and neither do comments, blank lines, formatting or docstrings. The modules are
read, never imported, so the Snakemake process does not load torch for this.
"""

from __future__ import annotations

import ast
import functools
import hashlib
from pathlib import Path

PACKAGE = "vqshrink"
SRC = Path(__file__).resolve().parents[1]


def _module_file(name: str) -> Path | None:
    base = SRC.joinpath(*name.split("."))
    for path in (base.with_suffix(".py"), base / "__init__.py"):
        if path.is_file():
            return path
    return None


def _with_parents(name: str) -> list[str]:
    parts = name.split(".")
    return [".".join(parts[: i + 1]) for i in range(len(parts))]


def _imports(name: str, tree: ast.AST, is_package: bool) -> set[str]:
    """The vqshrink modules a module imports (with their parent packages)."""
    package = name if is_package else name.rpartition(".")[0]
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                anchor = package.split(".")
                anchor = anchor[: len(anchor) - (node.level - 1)]
                base = ".".join(anchor + ([node.module] if node.module else []))
            else:
                base = node.module or ""
            # `from pkg import sub` may name a submodule
            targets = [base] + [f"{base}.{alias.name}" for alias in node.names]
        else:
            continue
        for target in targets:
            if target.split(".")[0] == PACKAGE and _module_file(target) is not None:
                found.update(m for m in _with_parents(target) if _module_file(m))
    return found


def _strip_docstrings(tree: ast.AST) -> ast.AST:
    for node in ast.walk(tree):
        if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)):
            body = node.body
            if body and isinstance(body[0], ast.Expr) and isinstance(body[0].value, ast.Constant) \
                    and isinstance(body[0].value.value, str):
                node.body = body[1:] or [ast.Pass()]
    return tree


@functools.cache
def _parsed(name: str) -> tuple[str, frozenset[str]]:
    """(syntax dump, imported vqshrink modules) of one module."""
    path = _module_file(name)
    tree = ast.parse(path.read_text(), filename=str(path))
    imports = _imports(name, tree, path.name == "__init__.py")
    return ast.dump(_strip_docstrings(tree)), frozenset(imports)


def modules_of(stage: str) -> list[str]:
    """Every vqshrink module that stage ``"vqshrink.stages.<module>.<function>"`` runs, sorted."""
    start = stage.rpartition(".")[0]
    if _module_file(start) is None:
        raise ValueError(f"unknown stage {stage!r}: no module {start}")
    seen: set[str] = set()
    todo = _with_parents(start)
    while todo:
        name = todo.pop()
        if name in seen:
            continue
        seen.add(name)
        todo.extend(_parsed(name)[1] - seen)
    return sorted(seen)


def code_version(stage: str) -> str:
    """A short hash of the syntax of every module :func:`modules_of` lists."""
    digest = hashlib.sha256()
    for name in modules_of(stage):
        digest.update(name.encode() + b"\0" + _parsed(name)[0].encode() + b"\0")
    return digest.hexdigest()[:16]
