"""Recipe loading and validation: one error per problem, ``FILE: dotted.path[index]: message``.

Every problem is reported at once, and nothing is written before the recipe is valid. Local paths are
resolved against the recipe's folder when they exist there (else the current folder); a value that is
not an existing path is a Hub id.
"""

from __future__ import annotations

import math
import re
import types
import typing
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import yaml
from pydantic import (
    BaseModel,
    Tag,
    ValidationError,
)

from sweep.errors import UserError
from sweep.spec import overrides
from sweep.spec.launching import launch_problems
from sweep.spec.methods import HYPERPARAMETERS, REGISTRY, did_you_mean, method_trl_fields
from sweep.spec.metrics import NEEDS_REFERENCE, OBJECTIVES, objective_keys
from sweep.spec.recipe import DATA_SUFFIXES, SAFE_NAME, Distribution, Recipe, TrainSpec
from sweep.spec.smoke import smoke_recipe
from sweep.spec.trlfields import POSWEEP_TRL_FIELDS


def format_loc(loc: tuple[Any, ...]) -> str:
    """('methods', 'simpo', 'gamma', 1) -> 'methods.simpo.gamma[1]'."""
    text = ""
    for part in loc:
        text += f"[{part}]" if isinstance(part, int) else (f".{part}" if text else str(part))
    return text or "(top level)"


def _unwrap_optional(annotation: Any) -> Any:
    """`X | None` -> X (the first non-None member of a union)."""
    while typing.get_origin(annotation) in (typing.Union, types.UnionType):
        annotation = next(a for a in typing.get_args(annotation) if a is not type(None))
    return annotation


def _strip_annotated(annotation: Any) -> Any:
    """`Annotated[X, ...]` -> X."""
    while typing.get_origin(annotation) is typing.Annotated:
        annotation = typing.get_args(annotation)[0]
    return annotation


def _is_union(annotation: Any) -> bool:
    """Whether `annotation` joins several types (pydantic then names the member tried in error locations)."""
    annotation = _strip_annotated(annotation)
    if typing.get_origin(annotation) not in (typing.Union, types.UnionType):
        return False
    return len([a for a in typing.get_args(annotation) if a is not type(None)]) > 1


def _union_member(annotation: Any, part: Any) -> Any:
    """The union member that pydantic's location part names (a Tag, or the member's class name)."""
    for member in typing.get_args(_strip_annotated(annotation)):
        tags = [m.tag for m in getattr(member, "__metadata__", ()) if isinstance(m, Tag)]
        if part in tags or getattr(_strip_annotated(member), "__name__", None) == part:
            return _strip_annotated(member)
    return None


def _inside(annotation: Any, part: Any) -> Any:
    """The annotation that one location part selects inside `annotation` (None when unknown)."""
    annotation = _unwrap_optional(_strip_annotated(annotation))
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        field = annotation.model_fields.get(part) if isinstance(part, str) else None
        return field.annotation if field else None
    if typing.get_origin(annotation) in (list, dict):
        return typing.get_args(annotation)[-1]
    return None


def _user_loc(root: type[BaseModel], loc: tuple[Any, ...]) -> tuple[tuple[Any, ...], type[BaseModel] | None]:
    """A pydantic location without the validator and union-member names it adds to the user's keys,
    and the section class holding its last key (for 'did you mean' on unknown keys)."""
    kept, current, parent = [], root, None
    for part in loc:
        if _is_union(current):
            current = _union_member(current, part)
        elif part not in ("function-after", "function-before", "[key]"):
            kept.append(part)
            parent, current = current, _inside(current, part)
    parent = _unwrap_optional(_strip_annotated(parent))
    return tuple(kept), parent if isinstance(parent, type) and issubclass(parent, BaseModel) else None


def _pydantic_problems(error: ValidationError, root: type[BaseModel] = Recipe) -> list[tuple[str, str]]:
    """Turn pydantic errors into (path, message) pairs with friendlier wording, one per path."""
    problems: dict[str, list[str]] = {}
    for item in error.errors(include_url=False):
        loc, parent = _user_loc(root, item["loc"])
        kind, message = item["type"], item["msg"]
        if kind == "string_pattern_mismatch" and item["ctx"]["pattern"] == SAFE_NAME.pattern:
            message = "must be 1-64 letters, digits, '.', '_' or '-', starting with a letter or digit"
        if "[key]" in item["loc"]:
            message = f"name {loc[-1]!r} {message}"
        if kind == "extra_forbidden":
            known = list(parent.model_fields) if parent else []
            message = f"unknown key{did_you_mean(loc[-1], known)}"
            if known:
                message += f"; expected one of: {', '.join(known)}"
        elif kind == "missing":
            message = "required key is missing"
        elif kind == "value_error":
            message = message.removeprefix("Value error, ")
        problems.setdefault(format_loc(loc), []).append(message)
    return [(where, "; ".join(dict.fromkeys(messages))) for where, messages in problems.items()]


def _space_problems(raw: dict, strategy: str) -> list[tuple[str, str]]:
    """Check each method's search space against the registry (names, ranges, grid vs. ranges)."""
    methods = raw.get("methods")
    if not isinstance(methods, dict):
        return []
    problems = []
    for method, space in methods.items():
        where = f"methods.{method}"
        entry = REGISTRY.get(method)
        if entry is None:
            problems.append((where, f"unknown method{did_you_mean(method, REGISTRY)}"))
            continue
        if space is None:
            continue
        if not isinstance(space, dict):
            problems.append(
                (where, "expected a mapping of hyperparameter -> values (or nothing for defaults)")
            )
            continue
        for name, spec in space.items():
            problems += _param_problems(
                entry.name, entry.hyperparameters, f"{where}.{name}", name, spec, strategy
            )
        both = [name for name in entry.exclusive if name in space]
        if len(both) > 1:
            problems.append((where, f"give either {' or '.join(both)}, not both (they set the same margin)"))
    return problems


def _param_problems(
    method: str, accepted: tuple[str, ...], where: str, name: Any, spec: Any, strategy: str
) -> list[tuple[str, str]]:
    """Problems with one hyperparameter's values."""
    if name not in accepted:
        hint = did_you_mean(name, accepted)
        return [(where, f"{method} does not take {name!r}{hint}; it takes: {', '.join(accepted)}")]
    knob = HYPERPARAMETERS[name]
    if isinstance(spec, dict):
        if strategy == "grid":
            return [(where, "a grid needs a list of values; ranges {low, high} are for random and tpe")]
        try:
            dist = Distribution.model_validate(spec)
        except ValidationError as error:
            return [
                (f"{where}.{loc}" if loc != "(top level)" else where, msg)
                for loc, msg in _pydantic_problems(error, Distribution)
            ]
        return [(where, why) for why in (knob.check(dist.low), knob.check(dist.high)) if why]
    values = spec if isinstance(spec, list) else [spec]
    if not values:
        return [(where, "empty list: give at least one value")]
    problems = []
    for index, value in enumerate(values):
        at = f"{where}[{index}]" if isinstance(spec, list) else where
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
            problems.append((at, f"expected a number, got {value!r}"))
        elif why := knob.check(value):
            problems.append((at, why))
    if isinstance(spec, list) and len(set(values)) != len(values) and not problems:
        problems.append((where, "values repeat; each grid value must be distinct"))
    return problems


def _judge_problems(recipe: Recipe) -> list[tuple[str, str]]:
    names = [j.name for j in recipe.judges]
    return [
        (f"judge[{i}].name", f"judge name {name!r} is used twice")
        for i, name in enumerate(names)
        if names.index(name) != i
    ]


def _objective_problems(recipe: Recipe) -> list[tuple[str, str]]:
    objective = recipe.eval.objective
    judge, _, metric = objective.rpartition(".")
    names = [j.name for j in recipe.judges]
    problems = []
    if metric not in OBJECTIVES:
        problems.append(("eval.objective", f"unknown metric {metric!r}{did_you_mean(metric, OBJECTIVES)}"))
    if judge and judge not in names[1:]:
        problems.append(
            ("eval.objective", f"{judge!r} is not a secondary judge (have: {', '.join(names[1:]) or 'none'})")
        )
    references = recipe.data.eval.columns.reference is not None
    if metric == NEEDS_REFERENCE and not references:
        problems.append(("eval.objective", f"{NEEDS_REFERENCE} needs data.eval.columns.reference"))
    elif not problems and objective not in objective_keys(names[1:], references):
        problems.append(
            ("eval.objective", f"{metric} does not depend on a judge: name it without the prefix {judge!r}")
        )
    return problems


def _extra_problems(recipe: Recipe) -> list[tuple[str, str]]:
    """train.extra keys must be real fields of every used method's TRL config class."""
    from sweep.spec.trlfields import config_fields

    problems = []
    hyper_fields = method_trl_fields()
    for key in recipe.train.extra:
        where = f"train.extra.{key}"
        if key in POSWEEP_TRL_FIELDS:
            problems.append((where, "is set by posweep for each trial"))
            continue
        if key in hyper_fields:
            problems.append((where, "is a method hyperparameter or set by the method: give it under methods"))
            continue
        if key in TrainSpec.model_fields:
            problems.append((where, f"set it as train.{key}"))
            continue
        for method in recipe.methods:
            fields = config_fields(REGISTRY[method].config)
            if fields is not None and key not in fields:
                config_name = REGISTRY[method].config.rsplit(":", 1)[1]
                hint = did_you_mean(key, fields)
                problems.append((where, f"not a field of TRL's {config_name} (used by {method}){hint}"))
                break
    return problems


def _local_path(value: str, base: Path) -> Path | None:
    """The existing local file or folder `value` names (relative to the recipe's folder first), if any."""
    if value.startswith("builtin:"):
        return None
    for candidate in (base / value, Path(value)):
        if candidate.expanduser().exists():
            return candidate.expanduser().resolve()
    return None


def _path_problems(recipe: Recipe, base: Path) -> list[tuple[str, str]]:
    """Resolve local paths in place; a missing file that is clearly meant to be local is an error."""
    problems = []
    targets = [
        ("model.path", recipe.model, "path"),
        ("model.tokenizer", recipe.model, "tokenizer"),
        ("data.eval.path", recipe.data.eval, "path"),
    ]
    targets += [
        (f"data.train.{name}.path" if name else "data.train.path", source, "path")
        for name, source in recipe.data.variants.items()
    ]
    targets += [(f"judge[{i}].reward_model", j, "reward_model") for i, j in enumerate(recipe.judges)]
    targets += [(f"judge[{i}].tokenizer", j, "tokenizer") for i, j in enumerate(recipe.judges)]
    targets.append(("execution.accelerate_config", recipe.execution, "accelerate_config"))
    for where, section, attribute in targets:
        value = getattr(section, attribute)
        if value is None:
            continue
        local = _local_path(value, base)
        looks_local = value.startswith((".", "/", "~")) or Path(value).suffix.lower() in DATA_SUFFIXES
        if local is not None:
            setattr(section, attribute, str(local))
        elif looks_local:
            problems.append((where, f"no such file or directory: {value}"))
    return problems


class YamlLoader(yaml.SafeLoader):
    """A safe loader that rejects duplicate keys and reads 1e-3 as a number (as YAML 1.2 does)."""


YamlLoader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"^[-+]?(?:\d+\.?\d*|\.\d+)[eE][-+]?\d+$"),
    list("-+0123456789."),
)


def _no_duplicates(loader: YamlLoader, node: yaml.MappingNode, deep: bool = False) -> dict:
    keys = set()
    for key_node, _ in node.value:
        key = loader.construct_object(key_node, deep=deep)
        if key in keys:
            mark = key_node.start_mark
            raise yaml.constructor.ConstructorError(None, None, f"duplicate key {key!r}", mark)
        keys.add(key)
    return loader.construct_mapping(node, deep)


YamlLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _no_duplicates)


class RecipeError(UserError):
    """A recipe with problems; `problems` holds one (path, message) pair per problem."""

    def __init__(self, file: str, problems: list[tuple[str, str]]):
        self.file = file
        self.problems = problems
        super().__init__("\n".join(f"{file}: {where}: {message}" for where, message in problems))


def parse_yaml(file: str | Path) -> Any:
    """Read a YAML file, turning syntax errors into a one-line RecipeError."""
    try:
        text = Path(file).read_text(encoding="utf-8")
    except OSError as error:
        raise RecipeError(str(file), [("(file)", f"cannot read: {error.strerror or error}")]) from None
    try:
        return yaml.load(text, Loader=YamlLoader)
    except yaml.YAMLError as error:
        mark = getattr(error, "problem_mark", None)
        where = f"line {mark.line + 1}, column {mark.column + 1}" if mark else "(file)"
        problem = getattr(error, "problem", None) or str(error).splitlines()[0]
        raise RecipeError(str(file), [(where, f"invalid YAML: {problem}")]) from None


def load_recipe(file: str | Path, sets: Sequence[str] = (), smoke: bool = False) -> Recipe:
    """Load and validate a recipe file, with `--smoke` then `--set` overrides applied to its raw mapping;
    raise RecipeError listing every problem (one under an overridden path names its `--set`)."""
    raw = parse_yaml(file)
    if not isinstance(raw, dict):
        raise RecipeError(
            str(file), [("(top level)", "a recipe is a mapping of sections (name, model, data, ...)")]
        )
    if smoke:
        raw = smoke_recipe(raw)
    try:
        raw, applied = overrides.apply(raw, list(sets))
    except overrides.OverrideError as error:
        raise RecipeError(str(file), [(f"--set {error.arg}", str(error))]) from None
    try:
        return _validated(raw, file)
    except RecipeError as error:
        where = {format_loc(path): arg for path, arg in applied}
        raise RecipeError(str(file), overrides.blame(error.problems, where)) from None


def _validated(raw: dict, file: str | Path) -> Recipe:
    strategy = (
        raw.get("search", {}).get("strategy", "grid") if isinstance(raw.get("search"), dict) else "grid"
    )
    problems = _space_problems(raw, strategy)
    try:
        recipe = Recipe.model_validate(raw)
    except ValidationError as error:
        covered = {where for where, _ in problems}
        problems = [p for p in _pydantic_problems(error) if p[0] not in covered] + problems
        raise RecipeError(str(file), _unique(problems)) from None
    problems += _judge_problems(recipe) + _objective_problems(recipe)
    problems += _path_problems(recipe, Path(file).resolve().parent)
    problems += [p for p in launch_problems(recipe) if p[0] not in {where for where, _ in problems}]
    if not problems:
        problems += _extra_problems(recipe)
    if problems:
        raise RecipeError(str(file), _unique(problems))
    return recipe


def _unique(problems: list[tuple[str, str]]) -> list[tuple[str, str]]:
    return list(dict.fromkeys(problems))
