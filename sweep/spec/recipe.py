"""The recipe schema: one YAML file describes one sweep, as strict pydantic models (no torch).

Loading and error wording live in `sweep.spec.validate`. Every section forbids unknown keys; each field
documents itself once (its `description`).
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Annotated, Any, Literal

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Discriminator,
    Field,
    Tag,
    field_validator,
    model_validator,
)

from sweep.spec import metrics
from sweep.spec.methods import REGISTRY

SAFE_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")
DATA_SUFFIXES = {".jsonl": "json", ".json": "json", ".parquet": "parquet", ".csv": "csv"}
CALLABLE = re.compile(r"^[A-Za-z_][\w.]*:[A-Za-z_]\w*$")
SCHEDULERS = Literal[
    "linear", "cosine", "cosine_with_restarts", "polynomial", "constant", "constant_with_warmup",
    "inverse_sqrt", "cosine_with_min_lr", "warmup_stable_decay",
]  # fmt: skip

Locate = Callable[[str], str]
"""Turns a model or data reference into one `from_pretrained`/`load_dataset` can read (see Recipe.located)."""


def as_given(ref: str) -> str:
    """The `Locate` that leaves every reference as it is."""
    return ref


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
    save_merged: bool = Field(False, description="keep also saves the model with the adapters merged in")


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
    sort_by_length: bool = Field(
        False, description="score in batches of similar length (less padding; equal scores up to rounding)"
    )
    trust_remote_code: bool = False
    format: Literal["auto", "pair", "chat", "raw"] = Field(
        "auto", description="reward-model input: text pair, own chat template, or prompt + response + eos"
    )

    @model_validator(mode="after")
    def _one_kind(self) -> JudgeSpec:
        if (self.reward_model is None) == (self.callable is None):
            raise ValueError("give exactly one of reward_model and callable")
        if self.callable is not None and not CALLABLE.match(self.callable):
            raise ValueError(f"callable must look like module.path:function, got {self.callable!r}")
        if self.callable is not None and self.format != "auto":
            raise ValueError("format applies to reward_model judges only")
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
    precision: Literal["auto", "fp32", "bf16", "fp16"] = Field(
        "auto", description="autocast of the forward/backward pass; master weights stay fp32"
    )
    pure_bf16: bool = Field(
        False, description="train in the checkpoint's dtype (lossy: bf16 rounds small updates away)"
    )
    min_completion_tokens: PositiveInt = Field(
        8, description="a pair whose prompt leaves fewer tokens than this under max_length is dropped"
    )
    gradient_checkpointing: bool = False
    use_liger_kernel: bool = Field(
        False, description="Liger's fused Triton kernels in the model's layers (GPU; posweep[liger] extra)"
    )
    logging_steps: PositiveInt = 1
    report_to: list[Literal["tensorboard", "mlflow", "wandb", "trackio"]] = Field(
        default_factory=list, description="experiment trackers: a run per trial (sweep.train.trackers)"
    )
    extra: dict[str, Any] = Field(default_factory=dict, description="passed to the TRL config as is")

    @model_validator(mode="after")
    def _room_for_completions(self) -> TrainSpec:
        if self.min_completion_tokens >= self.max_length:
            raise ValueError(
                f"min_completion_tokens ({self.min_completion_tokens}) must be below "
                f"max_length ({self.max_length})"
            )
        return self


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
    selection_fraction: Annotated[float, Field(gt=0, le=1)] = Field(
        0.5, description="share of the prompts whose metrics pick the best trial; the rest test it"
    )
    selection_seed: int = Field(0, description="seed of the index hash that splits selection from test")

    @property
    def direction(self) -> Literal["maximize", "minimize"]:
        """Whether a larger objective is better."""
        return metrics.direction(self.objective)


class SlurmSpec(Strict):
    """Resources of each SLURM worker job (`posweep run --launcher slurm`)."""

    partition: str | None = None
    account: str | None = None
    qos: str | None = None
    constraint: str | None = None
    gpus_per_worker: Annotated[int, Field(ge=0)] | None = None  # None: execution.processes_per_trial
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
    processes_per_trial: PositiveInt = 1
    accelerate_config: str | None = None
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

    def located(self, locate: Locate) -> Recipe:
        """This recipe with every model, tokenizer, data and judge reference passed through `locate`.

        The entry points hand the engine a `locate` that builds `builtin:` references into local paths;
        the stages below never see a `builtin:` reference.
        """

        def source(data):
            return data.model_copy(update={"path": locate(data.path)})

        def optional(ref: str | None) -> str | None:
            return None if ref is None else locate(ref)

        model = self.model.model_copy(
            update={"path": locate(self.model.path), "tokenizer": optional(self.model.tokenizer)}
        )
        train = self.data.train
        train = {name: source(d) for name, d in train.items()} if isinstance(train, dict) else source(train)
        data = self.data.model_copy(update={"train": train, "eval": source(self.data.eval)})
        judges = [
            judge.model_copy(
                update={"reward_model": optional(judge.reward_model), "tokenizer": optional(judge.tokenizer)}
            )
            for judge in self.judge
        ]
        return self.model_copy(update={"model": model, "data": data, "judge": judges})

    def dump(self) -> str:
        """The resolved recipe as YAML."""
        return yaml.safe_dump(self.model_dump(mode="json"), sort_keys=False, allow_unicode=True)


def _parse_space(spec: Any) -> ParamSpace:
    """A hyperparameter's values: a list, a single number, or a {low, high, log} range."""
    if isinstance(spec, dict):
        return Distribution.model_validate(spec)
    values = spec if isinstance(spec, list) else [spec]
    return [float(v) for v in values]
