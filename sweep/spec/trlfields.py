"""The fields of a TRL config dataclass, read from its source without importing torch or trl.

`posweep plan` and `posweep validate` check `train.extra` keys against the real TRL config classes
installed, but importing them costs seconds (torch, transformers). Dataclass fields are class-level
annotated assignments, so they can be read from the source files with `ast`, following base classes
through the import statements and the lazy `_import_structure` tables of trl and transformers.
`POSWEEP_TRL_FIELDS` are the fields posweep sets itself, which a recipe may not override.
"""

from __future__ import annotations

import ast
import functools
import importlib.util
from pathlib import Path

POSWEEP_TRL_FIELDS = {
    "output_dir", "seed", "data_seed", "report_to", "logging_dir", "disable_tqdm", "save_strategy",
    "eval_strategy", "logging_nan_inf_filter", "use_cpu", "bf16", "fp16", "loss_weights", "run_name",
    "project",
}  # fmt: skip


def _module_file(module: str) -> Path | None:
    """The source file of a module, found without importing the package."""
    top, *rest = module.split(".")
    spec = importlib.util.find_spec(top)
    if spec is None or spec.origin is None:
        return None
    base = Path(spec.origin).parent
    target = base.joinpath(*rest)
    for candidate in (target.with_suffix(".py"), target / "__init__.py"):
        if candidate.is_file():
            return candidate
    return None


@functools.lru_cache(maxsize=64)
def _parse(module: str) -> ast.Module | None:
    path = _module_file(module)
    return ast.parse(path.read_text(encoding="utf-8")) if path else None


def _absolute(module: str, level: int, name: str | None, is_package: bool) -> str:
    """Resolve a relative import `from ..x import y` seen in `module`."""
    if level == 0:
        return name or ""
    parts = module.split(".")
    keep = len(parts) - level + (1 if is_package else 0)
    return ".".join(parts[:keep] + ([name] if name else []))


def _locate(module: str, name: str, depth: int = 0) -> tuple[str, ast.ClassDef] | None:
    """Find the class `name` as seen from `module`, following imports and lazy import tables."""
    tree = _parse(module)
    if tree is None or depth > 8:
        return None
    path = _module_file(module)
    is_package = path is not None and path.name == "__init__.py"
    for node in ast.walk(tree):
        if isinstance(node, ast.ClassDef) and node.name == name:
            return module, node
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and any((a.asname or a.name) == name for a in node.names):
            original = next(a.name for a in node.names if (a.asname or a.name) == name)
            found = _locate(_absolute(module, node.level, node.module, is_package), original, depth + 1)
            if found:
                return found
    for node in ast.walk(tree):
        if isinstance(node, ast.Dict):
            for key, value in zip(node.keys, node.values, strict=False):
                listed = isinstance(value, ast.List) and any(
                    isinstance(e, ast.Constant) and e.value == name for e in value.elts
                )
                if listed and isinstance(key, ast.Constant) and isinstance(key.value, str):
                    return _locate(f"{module}.{key.value}", name, depth + 1)
    return None


def _fields_of(module: str, cls: ast.ClassDef, depth: int = 0) -> set[str]:
    fields = {
        node.target.id
        for node in cls.body
        if isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name)
    }
    for base in cls.bases:
        if isinstance(base, ast.Name) and depth < 8:
            found = _locate(module, base.id)
            if found:
                fields |= _fields_of(found[0], found[1], depth + 1)
    return fields


@functools.lru_cache(maxsize=32)
def config_fields(import_path: str) -> frozenset[str] | None:
    """Field names of the config class at 'module:Class', or None if its source cannot be read."""
    module, _, name = import_path.partition(":")
    found = _locate(module, name)
    if found is None:
        return None
    fields = _fields_of(*found)
    return frozenset(fields) if fields else None
