"""`--set PATH=VALUE` overrides: applied to a recipe's raw YAML mapping before it is validated.

PATH is dotted keys and list indices (`train.max_steps`, `judges.0.batch_size`); VALUE is read as YAML
(`2` is an int, `[0.1]` a list, `null` None). A problem that validation finds under an overridden path
is reported against the `--set` argument that put it there.
"""

from __future__ import annotations

import copy
from typing import Any

import yaml


class OverrideError(ValueError):
    """A `--set` argument that cannot be applied; `arg` is the argument as given."""

    def __init__(self, arg: str, message: str):
        self.arg = arg
        super().__init__(message)


def parse(arg: str) -> tuple[list[str | int], Any]:
    """'judges.0.batch_size=4' -> (['judges', 0, 'batch_size'], 4)."""
    path, sep, text = arg.partition("=")
    if not sep or not path.strip():
        raise OverrideError(arg, "expected PATH=VALUE, e.g. train.max_steps=2")
    try:
        value = yaml.safe_load(text)
    except yaml.YAMLError as error:
        raise OverrideError(arg, f"VALUE is not YAML: {getattr(error, 'problem', None) or error}") from None
    parts: list[str | int] = []
    for part in path.strip().split("."):
        if not part:
            raise OverrideError(arg, f"empty key in {path!r}")
        parts.append(int(part) if part.lstrip("-").isdigit() else part)
    return parts, value


def apply(raw: dict, args: list[str]) -> tuple[dict, list[tuple[tuple[str | int, ...], str]]]:
    """A copy of `raw` with every override applied in order, and each override's (path, argument)."""
    result = copy.deepcopy(raw)
    where: list[tuple[tuple[str | int, ...], str]] = []
    for arg in args:
        parts, value = parse(arg)
        node: Any = result
        for depth, part in enumerate(parts):
            last = depth == len(parts) - 1
            if isinstance(node, list):
                if not isinstance(part, int) or not -len(node) <= part < len(node):
                    raise OverrideError(arg, f"{part!r} is not an index of a list of {len(node)}")
                if last:
                    node[part] = value
                else:
                    node = node[part]
            elif isinstance(node, dict):
                key = part if part in node else str(part)
                if last:
                    node[key] = value
                else:
                    node = node.setdefault(key, {})
            else:
                raise OverrideError(arg, f"{part!r} is inside a value, not a section")
        where.append((tuple(parts), arg))
    return result, where


def blame(problems: list[tuple[str, str]], where: dict[str, str]) -> list[tuple[str, str]]:
    """Name the `--set` argument in each problem found at, under or above a location it set (an unknown
    key is reported at its first unknown part; the last such `--set` wins); `where` maps a formatted
    location to its argument."""
    named = []
    for loc, message in problems:
        arg = next(
            (a for p, a in reversed(list(where.items())) if _related(loc, p)),
            None,
        )
        named.append((f"{loc} (from --set {arg})" if arg else loc, message))
    return named


def _related(loc: str, path: str) -> bool:
    """Whether one of two formatted locations is the other or holds it."""
    return any(a == b or a.startswith((b + ".", b + "[")) for a, b in ((loc, path), (path, loc)))
