"""The recipe: one YAML file describes one sweep. Pydantic models, loading, and validation.

Every problem is reported as ``FILE: dotted.path[index]: message``, all at once, and nothing is
written before the recipe is valid. Local paths are resolved against the recipe's folder when they
exist there (else the current folder); a value that is not an existing path is a Hub id.
"""

from __future__ import annotations

import math
import re
import types
import typing
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Discriminator,
    Field,
    Tag,
    ValidationError,
    field_validator,
    model_validator,
)

from sweep.errors import UserError
from sweep.methods import HYPERPARAMETERS, REGISTRY, did_you_mean

SAFE_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")
DATA_SUFFIXES = {".jsonl": "json", ".json": "json", ".parquet": "parquet", ".csv": "csv"}
CALLABLE = re.compile(r"^[A-Za-z_][\w.]*:[A-Za-z_]\w*$")
METRICS = (
    "win_rate_vs_sft",
    "lc_win_rate_vs_sft",
    "win_rate_vs_chosen",
    "judge_score_mean",
    "kl_to_sft",
    "kl_to_sft_per_token",
    "length_mean",
)
MINIMIZED_METRICS = ("kl_to_sft", "kl_to_sft_per_token", "length_mean")
POSWEEP_TRL_FIELDS = {
    "output_dir", "seed", "data_seed", "report_to", "logging_dir", "disable_tqdm", "save_strategy",
    "eval_strategy", "logging_nan_inf_filter", "use_cpu", "bf16", "fp16", "loss_weights",
}  # fmt: skip
SCHEDULERS = Literal[
    "linear", "cosine", "cosine_with_restarts", "polynomial", "constant", "constant_with_warmup",
    "inverse_sqrt", "cosine_with_min_lr", "warmup_stable_decay",
]  # fmt: skip


class Strict(BaseModel):
    """Base of every recipe section: unknown keys are errors."""

    model_config = ConfigDict(extra="forbid", validate_default=True)


PositiveInt = Annotated[int, Field(gt=0)]
SafeName = Annotated[str, Field(pattern=SAFE_NAME.pattern)]
PositiveFloat = Annotated[float, Field(gt=0)]
Fraction = Annotated[float, Field(ge=0, lt=1)]


class LoraSpec(Strict):
    """LoRA adapters (PEFT) instead of full fine-tuning."""

    r: PositiveInt = 16
    alpha: PositiveFloat = 32.0
    dropout: Fraction = 0.05
    target_modules: list[str] | Literal["all-linear"] = "all-linear"


class ModelSpec(Strict):
    """The policy, which is also the SFT model every trial starts from."""

    path: str = Field(description="local directory, Hub id, or builtin:NAME")
    tokenizer: str | None = Field(None, description="tokenizer directory or Hub id, if not the model's")
    revision: str | None = Field(None, description="Hub revision (branch, tag or commit)")
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = "auto"
    trust_remote_code: bool = Field(
        False, description="run the model repository's own code (off unless asked)"
    )
    lora: LoraSpec | None = None

    @model_validator(mode="before")
    @classmethod
    def _shorthand(cls, value: Any) -> Any:
        return {"path": value} if isinstance(value, str) else value


class PairColumns(Strict):
    """Where the preference fields are in the training data."""

    prompt: str = "prompt"
    chosen: str = "chosen"
    rejected: str = "rejected"


class EvalColumns(Strict):
    """Where the prompt (and an optional reference response) are in the evaluation data."""

    prompt: str = "prompt"
    reference: str | None = Field(None, description="column of reference (chosen) responses, if any")


class Source(Strict):
    """A dataset: local JSONL/JSON/Parquet/CSV file, Hub dataset id, or builtin:NAME/SPLIT."""

    path: str
    split: str = "train"
    subset: str | None = Field(None, description="Hub dataset configuration name")
    revision: str | None = None


class TrainData(Source):
    """Preference pairs for training (plain strings or conversational message lists)."""

    columns: PairColumns = PairColumns()
    max_samples: PositiveInt | None = None


class EvalData(Source):
    """The evaluation (out-of-distribution) prompts."""

    split: str = "test"
    columns: EvalColumns = EvalColumns()
    max_prompts: PositiveInt | None = 256


class DataSpec(Strict):
    """Training pairs (one source, or named variants: a sweep dimension) and evaluation prompts."""

    train: Annotated[
        Annotated[TrainData, Tag("single")] | Annotated[dict[SafeName, TrainData], Tag("variants")],
        Discriminator(
            lambda value: "variants" if isinstance(value, dict) and "path" not in value else "single"
        ),
    ]
    eval: EvalData

    @property
    def variants(self) -> dict[str | None, TrainData]:
        """Training data by variant name (a single source is the variant None)."""
        return dict(self.train) if isinstance(self.train, dict) else {None: self.train}


class JudgeSpec(Strict):
    """A reward model, or a Python callable `module:function(prompts, responses) -> scores`."""

    name: str | None = Field(None, description="prefix of this judge's metrics (the first judge's are plain)")
    reward_model: str | None = Field(
        None, description="sequence-classifier directory, Hub id, or builtin:NAME"
    )
    callable: str | None = Field(None, description="module:function returning one score per response")
    tokenizer: str | None = None
    revision: str | None = None
    batch_size: PositiveInt = 16
    device: str = Field("auto", description="auto, cpu, cuda, cuda:N")
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = "auto"
    max_length: PositiveInt = 1024
    trust_remote_code: bool = False

    @model_validator(mode="after")
    def _one_kind(self) -> JudgeSpec:
        if (self.reward_model is None) == (self.callable is None):
            raise ValueError("give exactly one of reward_model and callable")
        if self.callable is not None and not CALLABLE.match(self.callable):
            raise ValueError(f"callable must look like module.path:function, got {self.callable!r}")
        if self.name is not None and not SAFE_NAME.match(self.name):
            raise ValueError(f"name must be letters, digits, '.', '_' or '-', got {self.name!r}")
        if self.name is None:
            self.name = "rm" if self.reward_model else self.callable.rsplit(":", 1)[1]
        return self


class Distribution(Strict):
    """A range to sample a hyperparameter from (random and TPE searches)."""

    low: float
    high: float
    log: bool = False

    @model_validator(mode="after")
    def _ordered(self) -> Distribution:
        if not self.low < self.high:
            raise ValueError(f"low ({self.low:g}) must be below high ({self.high:g})")
        if self.log and self.low <= 0:
            raise ValueError("a log-scale range needs low > 0")
        return self


ParamSpace = list[float] | Distribution


class SearchSpec(Strict):
    """How the method spaces become trials."""

    strategy: Literal["grid", "random", "tpe"] = "grid"
    n_trials: PositiveInt | None = Field(None, description="random/tpe: trials per method and seed")
    seeds: list[int] = Field(default_factory=lambda: [0], min_length=1)
    pruner: Literal["none", "median", "hyperband"] = "none"

    @model_validator(mode="after")
    def _trials(self) -> SearchSpec:
        if self.strategy != "grid" and self.n_trials is None:
            raise ValueError(f"n_trials is required for strategy {self.strategy}")
        if self.strategy == "grid" and self.n_trials is not None:
            raise ValueError("n_trials applies to random and tpe; a grid runs every point")
        if len(set(self.seeds)) != len(self.seeds):
            raise ValueError("seeds must be distinct")
        return self


class TrainSpec(Strict):
    """TRL training arguments shared by every trial (hyperparameters live under `methods`)."""

    max_steps: PositiveInt | None = Field(None, description="overrides num_train_epochs when set")
    num_train_epochs: PositiveFloat = 1.0
    per_device_train_batch_size: PositiveInt = 8
    gradient_accumulation_steps: PositiveInt = 1
    max_length: PositiveInt = 1024
    warmup_ratio: Fraction = 0.1
    lr_scheduler_type: SCHEDULERS = "linear"
    weight_decay: Annotated[float, Field(ge=0)] = 0.0
    max_grad_norm: PositiveFloat = 1.0
    optim: str = "adamw_torch"
    precision: Literal["auto", "fp32", "bf16", "fp16"] = "auto"
    gradient_checkpointing: bool = False
    logging_steps: PositiveInt = 1
    extra: dict[str, Any] = Field(default_factory=dict, description="passed to the TRL config as is")


class EvalSpec(Strict):
    """Generation on the evaluation prompts, and the objective."""

    max_new_tokens: PositiveInt = 128
    do_sample: bool = False
    temperature: PositiveFloat = 1.0
    top_p: Annotated[float, Field(gt=0, le=1)] = 1.0
    samples_per_prompt: PositiveInt = 1
    batch_size: PositiveInt = 16
    kl_samples: PositiveInt = Field(
        1, description="sampled responses per prompt for KL when decoding greedily"
    )
    bootstrap: PositiveInt = Field(1000, description="bootstrap resamples for confidence intervals")
    objective: str = "win_rate_vs_sft"
    every_steps: PositiveInt | None = Field(None, description="quick evaluation every N steps (pruning)")
    quick_prompts: PositiveInt = 32

    @property
    def direction(self) -> Literal["maximize", "minimize"]:
        """Whether a larger objective is better."""
        return "minimize" if self.objective.rsplit(".", 1)[-1] in MINIMIZED_METRICS else "maximize"


class SlurmSpec(Strict):
    """Resources of each SLURM worker job (`posweep run --launcher slurm`)."""

    partition: str | None = None
    account: str | None = None
    qos: str | None = None
    constraint: str | None = None
    gpus_per_worker: Annotated[int, Field(ge=0)] = 1
    cpus_per_worker: PositiveInt = 8
    mem_gb: PositiveInt = 64
    time_min: PositiveInt = Field(24 * 60, description="time limit of each worker job, minutes")
    additional: dict[str, str | int] = Field(default_factory=dict, description="extra #SBATCH options")


class ExecutionSpec(Strict):
    """Where and how trials run."""

    results_dir: str = "results"
    storage: str | None = Field(None, description="Optuna storage URL or env:VAR; default a journal file")
    workers: PositiveInt = 1
    devices: Literal["auto", "cpu"] | list[Annotated[int, Field(ge=0)]] = "auto"
    cpu_threads: PositiveInt | None = Field(
        None, description="torch threads per CPU worker; default cores/workers, 1 on machines with <= 4 cores"
    )
    max_retries: Annotated[int, Field(ge=0)] = 1
    keep: Literal["none", "best", "all"] = "none"
    slurm: SlurmSpec = SlurmSpec()


class Recipe(Strict):
    """One sweep: a model, preference data, evaluation prompts, judges and method search spaces."""

    name: str
    description: str | None = None
    model: ModelSpec
    data: DataSpec
    judge: list[JudgeSpec] = Field(min_length=1)
    methods: dict[str, dict[str, Any] | None] = Field(min_length=1)
    search: SearchSpec = SearchSpec()
    train: TrainSpec = TrainSpec()
    eval: EvalSpec = EvalSpec()
    execution: ExecutionSpec = ExecutionSpec()

    @field_validator("name")
    @classmethod
    def _safe_name(cls, value: str) -> str:
        if not SAFE_NAME.match(value) or set(value) <= {"."}:
            raise ValueError(
                f"{value!r} is not a safe folder name: use 1-64 letters, digits, '.', '_' or '-', "
                "starting with a letter or digit"
            )
        return value

    @field_validator("judge", mode="before")
    @classmethod
    def _judge_list(cls, value: Any) -> Any:
        return [value] if isinstance(value, dict) else value

    @property
    def judges(self) -> list[JudgeSpec]:
        """The judges, primary first."""
        return self.judge

    def space(self, method: str) -> dict[str, ParamSpace]:
        """The validated search space of one method (the registry's default when the recipe gives none)."""
        given = self.methods[method]
        if not given:
            return {name: list(values) for name, values in REGISTRY[method].space.items()}
        return {name: _parse_space(spec) for name, spec in given.items()}

    def dump(self) -> str:
        """The resolved recipe as YAML."""
        return yaml.safe_dump(self.model_dump(mode="json"), sort_keys=False, allow_unicode=True)


def _parse_space(spec: Any) -> ParamSpace:
    """A hyperparameter's values: a list, a single number, or a {low, high, log} range."""
    if isinstance(spec, dict):
        return Distribution.model_validate(spec)
    values = spec if isinstance(spec, list) else [spec]
    return [float(v) for v in values]


# --------------------------------------------------------------------------- validation


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
    if metric not in METRICS:
        problems.append(("eval.objective", f"unknown metric {metric!r}{did_you_mean(metric, METRICS)}"))
    if judge and judge not in names[1:]:
        problems.append(
            ("eval.objective", f"{judge!r} is not a secondary judge (have: {', '.join(names[1:]) or 'none'})")
        )
    if metric == "win_rate_vs_chosen" and recipe.data.eval.columns.reference is None:
        problems.append(("eval.objective", "win_rate_vs_chosen needs data.eval.columns.reference"))
    return problems


def _extra_problems(recipe: Recipe) -> list[tuple[str, str]]:
    """train.extra keys must be real fields of every used method's TRL config class."""
    from sweep.trlfields import config_fields

    problems = []
    hyper_fields = {
        "learning_rate",
        "beta",
        "loss_type",
        "simpo_gamma",
        "cpo_alpha",
        "label_smoothing",
        "ld_alpha",
        "sync_ref_model",
        "ref_model_mixup_alpha",
        "ref_model_sync_steps",
    }
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


def load_recipe(file: str | Path) -> Recipe:
    """Load and validate a recipe file; raise RecipeError listing every problem."""
    raw = parse_yaml(file)
    if not isinstance(raw, dict):
        raise RecipeError(
            str(file), [("(top level)", "a recipe is a mapping of sections (name, model, data, ...)")]
        )
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
    if not problems:
        problems += _extra_problems(recipe)
    if problems:
        raise RecipeError(str(file), _unique(problems))
    return recipe


def _unique(problems: list[tuple[str, str]]) -> list[tuple[str, str]]:
    return list(dict.fromkeys(problems))
