"""One trial: train the registry's TRL trainer with one point of the search space, evaluate it, record it.

A `Worker` lives as long as its process: it loads the tokenizer, the training pairs and the SFT weights
once, and keeps the SFT model frozen on its device, where it serves as the starting point of every trial,
the fixed reference model of the methods that have one, and the SFT side of evaluation.

Work that does not depend on a trial's hyperparameters is done once per sweep (`SharedTraining`): the
training sets as TRL tokenizes them, and the fixed reference model's log-probabilities of every training
example, which are handed to TRL as its precomputed reference columns, so no trial runs a reference forward
pass. Both are kept in memory for the worker's life and under the sweep's `cache/` for every other worker and
resumed sweeps, keyed by a hash of everything they depend on. Moving-reference (TR-*) methods keep their own.

`Worker.run` writes `trials/<id>/params.json` first and `metrics.json` last. Failures are data: an
exception, a NaN loss or an out-of-memory error ends that trial (state failed or diverged), never the
worker; only KeyboardInterrupt propagates, after the trial is recorded as interrupted.
"""

from __future__ import annotations

import contextlib
import contextvars
import copy
import dataclasses
import gc
import hashlib
import importlib
import inspect
import io
import json
import math
import os
import shutil
import tempfile
import time
import traceback
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from importlib.metadata import version
from pathlib import Path
from typing import Any

import datasets
import psutil
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, PrinterCallback, TrainerCallback, set_seed
from transformers.utils import logging as transformers_logging

from sweep.builtin import resolve
from sweep.data import load_pairs
from sweep.errors import UserError
from sweep.io import append_jsonl, file_lock, read_json, utc_now, write_bytes, write_json, write_text
from sweep.methods import Method, get_method
from sweep.plan import TrialSpec
from sweep.recipe import LoraSpec, ModelSpec, Recipe, TrainSpec

EVALUATION_TIMES = ("generate", "judge", "kl")
TIME_KEYS = ("load", "train", *EVALUATION_TIMES, "total")
SCRATCH = "scratch"
CACHE_FORMAT = 1
PREPARE_PARAMETERS = ("dataset", "processing_class", "args", "dataset_name")
REFERENCE_BATCH_FACTOR = 4
"""The reference pass uses batches this many times the training batch (no gradients, no optimizer state)."""
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


@dataclass
class TrialResult:
    """The outcome of one trial, as recorded in its metrics.json."""

    trial_id: str
    state: str
    objective: float | None
    metrics: dict[str, Any] = field(default_factory=dict)
    error: dict[str, str] | None = None


@dataclass
class _Outcome:
    """What a trial has produced so far; filled in as it goes, so a failure keeps what came before."""

    state: str = "complete"
    objective: float | None = None
    error: dict[str, str] | None = None
    train: dict[str, Any] = field(default_factory=dict)
    metrics: dict[str, Any] = field(default_factory=dict)
    times: dict[str, float] = field(default_factory=lambda: dict.fromkeys(TIME_KEYS, 0.0))


class _TrialCallback(TrainerCallback):
    """Appends TRL's log records to train_log.jsonl, stops on a non-finite loss, and reports for pruning.

    The pruning value is `quick(model)` every `every_steps` steps, or the last logged loss without `quick`.
    """

    def __init__(
        self,
        log_path: Path,
        every_steps: int | None,
        quick: Callable[[Any], float] | None,
        report: Callable[[int, float], bool] | None,
    ):
        self.log_path = log_path
        self.every_steps = every_steps if report is not None else None
        self.quick = quick
        self.report = report
        self.last_loss: float | None = None
        self.diverged_at: int | None = None
        self.quick_value: float | None = None
        self.pruned_at: int | None = None

    def on_log(self, args, state, control, logs=None, **kwargs):
        append_jsonl(self.log_path, {"step": state.global_step, "epoch": state.epoch, **(logs or {})})
        if logs and "loss" in logs:
            self.last_loss = float(logs["loss"])
            if not math.isfinite(self.last_loss):
                self.diverged_at = state.global_step
                control.should_training_stop = True

    def on_step_end(self, args, state, control, model=None, **kwargs):
        if self.every_steps is None or state.global_step % self.every_steps:
            return
        if self.quick is None:
            value = self.last_loss
        else:
            was_training = model.training
            value = self.quick(model)
            model.train(was_training)
        if value is None or not math.isfinite(value):
            return
        self.quick_value = value
        if self.report(state.global_step, value):
            self.pruned_at = state.global_step
            control.should_training_stop = True


class SharedTraining:
    """Work shared by every trial of a sweep: tokenized training sets and fixed-reference log-probabilities.

    Each result is computed once per key under a file lock, kept in memory for the worker's life, and stored
    under `cache_dir` (`prepared/<key>/`, a saved `datasets.Dataset`; `reference/<key>.pt`, a dict of
    tensors) for every other worker and resumed sweeps. A key hashes the inputs the result depends on,
    the tokenizer's files and the library versions, so any change computes it anew.
    """

    def __init__(self, cache_dir: str | Path, tokenizer):
        self.cache_dir = Path(cache_dir)
        self.tokenizer_hash = _tokenizer_hash(tokenizer)
        self._prepared: dict[str, datasets.Dataset] = {}
        self._references: dict[str, dict[str, torch.Tensor]] = {}
        self._rows: dict[str, dict[str, dict]] = {}
        self._hashes: dict[str, str] = {}
        self._versions = {name: version(name) for name in ("torch", "transformers", "trl", "datasets")}

    def key(self, kind: str, **inputs: Any) -> str:
        """A short hash of what a cached result depends on."""
        payload = {"format": CACHE_FORMAT, "kind": kind, "tokenizer": self.tokenizer_hash, **inputs}
        payload["versions"] = self._versions
        return hashlib.sha256(json.dumps(payload, sort_keys=True, default=str).encode()).hexdigest()[:16]

    def content_hash(self, dataset: datasets.Dataset) -> str:
        """A hash of a dataset's rows in order (memoized by the dataset's fingerprint)."""
        fingerprint = dataset._fingerprint
        if fingerprint not in self._hashes:
            digest = hashlib.sha256(json.dumps(dataset.column_names).encode())
            for batch in dataset.iter(batch_size=1024):
                digest.update(json.dumps(batch, sort_keys=True, default=str).encode())
            self._hashes[fingerprint] = digest.hexdigest()
        return self._hashes[fingerprint]

    def prepared(self, key: str, prepare: Callable[[], datasets.Dataset]) -> datasets.Dataset:
        """The training set TRL prepared for `key`: from memory, from the cache, or prepared and stored."""
        if key not in self._prepared:
            folder = self.cache_dir / "prepared" / key
            with file_lock(folder.with_suffix(".lock")):
                if not folder.is_dir():
                    _save_dataset(prepare(), folder)
                self._prepared[key] = datasets.load_from_disk(str(folder))
        return self._prepared[key]

    def reference(self, key: str, compute: Callable[[], dict[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
        """Reference log-probabilities for `key`: from memory, from the cache, or computed now and stored."""
        if key not in self._references:
            path = self.cache_dir / "reference" / f"{key}.pt"
            with file_lock(path.with_suffix(".lock")):
                if path.is_file():
                    values = torch.load(path, weights_only=True)
                else:
                    values = {name: tensor.detach().cpu() for name, tensor in compute().items()}
                    buffer = io.BytesIO()
                    torch.save(values, buffer)
                    write_bytes(path, buffer.getvalue())
            self._references[key] = values
        return self._references[key]

    @contextlib.contextmanager
    def serving(self) -> Iterator[None]:
        """Serve the data preparation of the trainers built inside this block (see `shared_trainer_class`)."""
        token = _SERVING.set(self)
        try:
            yield
        finally:
            _SERVING.reset(token)

    def rows(self, key: str) -> dict[str, dict]:
        """The memo of tokenized rows for one tokenizing setup (kept in memory only)."""
        return self._rows.setdefault(key, {})


_SERVING: contextvars.ContextVar[SharedTraining | None] = contextvars.ContextVar("serving", default=None)


def shared_trainer_class(base: type) -> type:
    """`base` with its data preparation served by the `SharedTraining` that is serving, when it has a hook.

    TRL's DPO and KTO trainers prepare (tokenize, truncate-filter, pair KL completions) a whole dataset in
    `_prepare_dataset`; CPO and ORPO tokenize row by row in `tokenize_row`. Anything else is used as is.
    The subclass is a module attribute, so that `datasets`, which fingerprints `dataset.map(self.method)`
    by pickling it, pickles it by name (as it does the TRL class) and not with the cache behind it.
    """
    name = f"Shared{base.__name__}"
    known = globals().get(name)
    if known is not None and known.posweep_base is base:
        return known
    if _has_parameters(base, "_prepare_dataset", PREPARE_PARAMETERS):
        hooks = {"_prepare_dataset": _shared_prepare_dataset}
    elif _has_parameters(base, "tokenize_row", ("feature", "model")):
        hooks = {"tokenize_row": _shared_tokenize_row}
    else:
        return base
    namespace = {**hooks, "posweep_base": base, "__module__": __name__, "__qualname__": name}
    globals()[name] = subclass = type(name, (base,), namespace)
    return subclass


def _shared_prepare_dataset(self, dataset, processing_class, args, dataset_name):
    """TRL's `_prepare_dataset`, done once per key; records the key as `posweep_data_key`."""
    base, shared = type(self).posweep_base, _SERVING.get()

    def prepare():
        return base._prepare_dataset(self, dataset, processing_class, args, dataset_name)

    if shared is None or not isinstance(dataset, datasets.Dataset):
        return prepare()
    settings = {"max_length": args.max_length, "truncation_mode": getattr(args, "truncation_mode", None)}
    if hasattr(self, "calculate_KL"):  # KTO pairs each completion with its neighbour in a training batch
        settings.update(calculate_kl=self.calculate_KL, batch_size=args.per_device_train_batch_size)
    self.posweep_data_key = shared.key(
        "prepared",
        trainer=f"{base.__module__}.{base.__qualname__}",
        name=dataset_name,
        data=shared.content_hash(dataset),
        **settings,
    )
    return shared.prepared(self.posweep_data_key, prepare)


def _shared_tokenize_row(self, feature, model=None):
    """TRL's `tokenize_row`, done once per distinct row and tokenizing setup."""
    base, shared = type(self).posweep_base, _SERVING.get()
    if shared is None or model is not None:
        return base.tokenize_row(self, feature, model)
    if "posweep_rows_key" not in vars(self):
        setup = {
            name: getattr(self, name, None)
            for name in ("max_length", "max_completion_length", "is_encoder_decoder", "padding_value")
        }
        trainer = f"{base.__module__}.{base.__qualname__}"
        self.posweep_rows_key = shared.key("rows", trainer=trainer, **setup)
    memo = shared.rows(self.posweep_rows_key)
    row = json.dumps([feature["prompt"], feature["chosen"], feature["rejected"]], default=str)
    if row not in memo:
        memo[row] = base.tokenize_row(self, feature)
    return dict(memo[row])


def _has_parameters(base: type, method: str, names: tuple[str, ...]) -> bool:
    """Whether `base.method` exists and takes exactly these parameters after self (the hook's contract)."""
    function = getattr(base, method, None)
    if function is None:
        return False
    return tuple(inspect.signature(function).parameters)[1:] == names


def _tokenizer_hash(tokenizer) -> str:
    """A hash of the tokenizer's saved files (vocabulary, merges, special tokens, chat template)."""
    digest = hashlib.sha256(type(tokenizer).__name__.encode())
    with tempfile.TemporaryDirectory() as folder:
        tokenizer.save_pretrained(folder)
        for path in sorted(Path(folder).iterdir()):
            digest.update(path.name.encode() + path.read_bytes())
    return digest.hexdigest()[:16]


def _model_stamp(path: str) -> list | None:
    """Name, size and modification time of a local model folder's files (None for a Hub id)."""
    folder = Path(path)
    if not folder.is_dir():
        return None
    return [(p.name, p.stat().st_size, p.stat().st_mtime_ns) for p in sorted(folder.iterdir()) if p.is_file()]


def _save_dataset(dataset: datasets.Dataset, folder: Path) -> None:
    """Save a dataset into `folder` atomically (a temporary folder renamed into place)."""
    folder.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{folder.name}.", suffix=".tmp", dir=folder.parent))
    try:
        dataset.save_to_disk(str(staging))
        staging.rename(folder)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise


def reference_logps(trainer, model, batch_size: int, paired: bool) -> dict[str, torch.Tensor]:
    """The fixed reference model's log-probabilities of every example of `trainer.train_dataset`.

    Computed as TRL computes them in a training step (its collator, its fused LM head, its autocast). Paired
    data give, for chosen and rejected, the completion's total and the parts LD-DPO weighs (the tokens within
    the shorter completion's length, and the tail past it), so one pass serves every `ld_alpha`; unpaired
    (KTO) data give TRL's own `ref_logps` and `ref_KL_logps`.
    """
    data = trainer.train_dataset
    data = data.select_columns([name for name in data.column_names if name.endswith(("_ids", "label"))])
    loader = torch.utils.data.DataLoader(data, batch_size=batch_size, collate_fn=trainer.data_collator)
    device = next(model.parameters()).device
    parts: dict[str, list[torch.Tensor]] = {}
    with torch.no_grad(), trainer.accelerator.autocast():
        for batch in loader:
            batch = {name: value.to(device) for name, value in batch.items()}
            if paired:
                found = _paired_logps(model, batch)
            else:
                logps, kl_logps = trainer.compute_ref_log_probs(model, batch)
                found = (
                    {"ref_logps": logps, "ref_KL_logps": kl_logps}
                    if kl_logps is not None
                    else {"ref_logps": logps}
                )
            for name, values in found.items():
                parts.setdefault(name, []).append(values.float().cpu())
    return {name: torch.cat(values) for name, values in parts.items()}


def _paired_logps(model, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Sums of per-token log-probabilities of a [chosen; rejected] batch (TRL's DPO reference arithmetic)."""
    mask = batch["completion_mask"]
    labels = batch["input_ids"].masked_fill(mask == 0, -100)
    inputs = {name: value for name, value in batch.items() if name not in ("completion_mask", "label")}
    per_token = model(**inputs, labels=labels, use_cache=False, fused_lm_head=True).log_probs
    mask = mask[..., 1:]
    per_token = per_token[:, -mask.size(1) :]
    position = mask.cumsum(dim=1)
    chosen_lengths, rejected_lengths = mask.sum(dim=1).long().chunk(2, dim=0)
    shared = torch.minimum(chosen_lengths, rejected_lengths)
    shared = torch.cat([shared, shared], dim=0)
    values = {
        "total": per_token.sum(dim=1),
        "shared": (per_token * ((position > 0) & (position <= shared.unsqueeze(1)))).sum(dim=1),
        "tail": (per_token * (position > shared.unsqueeze(1))).sum(dim=1),
    }
    found = {}
    for part, both in values.items():
        found[f"chosen_{part}"], found[f"rejected_{part}"] = both.chunk(2, dim=0)
    return found


def reference_columns(values: Mapping[str, torch.Tensor], ld_alpha: float | None) -> dict[str, torch.Tensor]:
    """TRL's precomputed-reference columns from cached values (DPO's weigh the tail by `ld_alpha` if set)."""
    if "ref_logps" in values:
        return dict(values)
    return {
        f"ref_{side}_logps": values[f"{side}_total"]
        if ld_alpha is None
        else values[f"{side}_shared"] + ld_alpha * values[f"{side}_tail"]
        for side in ("chosen", "rejected")
    }


class Worker:
    """Runs trials one after another in one process, loading the shared inputs once.

    `setup_s` is the time spent on that one-off work (loading the model, tokenizer and evaluator; the first
    evaluator use happens within a trial but is not counted in its time); `trials_run` counts trials run.
    `reference_cache=False` makes fixed-reference trials run TRL's own reference pass in every step.
    """

    def __init__(
        self,
        recipe: Recipe,
        sweep_dir: str | Path,
        device: str = "cpu",
        log: Callable[[str], None] = print,
        evaluator_factory: Callable[[Any, Any], Any] | None = None,
        train_dataset: datasets.Dataset | None = None,
        reference_cache: bool = True,
    ):
        started = time.perf_counter()
        self.recipe = recipe
        self.sweep_dir = Path(sweep_dir)
        self.device = device
        self.log = log
        self._evaluator_factory = evaluator_factory
        self._evaluator = None
        self._lora = _lora_config(recipe.model.lora) if recipe.model.lora else None
        cache_dir = self.sweep_dir / "cache"
        model_path = resolve(recipe.model.path, log=log)
        tokenizer = recipe.model.tokenizer
        tokenizer_path = resolve(tokenizer, log=log) if tokenizer else model_path
        self._pairs = (
            {None: train_dataset}
            if train_dataset is not None
            else {
                variant: load_pairs(source, where=f"data.train.{variant}" if variant else "data.train")
                for variant, source in recipe.data.variants.items()
            }
        )
        with _no_progress_bars():
            self.tokenizer = _load_tokenizer(recipe.model, tokenizer_path, same_repo=tokenizer is None)
            self.sft = _load_model(recipe.model, model_path).to(device).eval().requires_grad_(False)
        self.shared = SharedTraining(cache_dir, self.tokenizer)
        self.reference_cache = reference_cache
        self._reference_identity = {
            "model": recipe.model.model_dump(mode="json", exclude={"lora"}),
            "path": model_path,
            "files": _model_stamp(model_path),
            "dtype": str(self.sft.dtype),
            "device": torch.device(device).type,
        }
        self.trials_run = 0
        self.setup_s = time.perf_counter() - started

    def pairs(self, variant: str | None = None) -> datasets.Dataset:
        """The training pairs of a data variant (all loaded when the worker starts)."""
        return self._pairs[variant]

    @property
    def direction(self) -> str:
        """Whether a larger objective is better (the final training loss, without evaluator, is minimized)."""
        return self.recipe.eval.direction if self._evaluator_factory else "minimize"

    @property
    def evaluator(self):
        """The evaluator (created on first use), or None when the objective is the training loss."""
        if self._evaluator is None and self._evaluator_factory is not None:
            started = time.perf_counter()
            self._evaluator = self._evaluator_factory(self.sft, self.tokenizer)
            self.setup_s += time.perf_counter() - started
        return self._evaluator

    def trial_dir(self, trial_id: str) -> Path:
        """The folder of one trial."""
        return self.sweep_dir / "trials" / trial_id

    def run(
        self, spec: TrialSpec, attempt: int = 1, report: Callable[[int, float], bool] | None = None
    ) -> TrialResult:
        """Train, evaluate and record one trial; `report(step, value)` returning True prunes it."""
        folder = self.trial_dir(spec.trial_id)
        recorded = _read_metrics(folder)
        if recorded is not None and recorded.get("state") == "complete":
            return _result_from(recorded)
        if folder.exists():
            shutil.rmtree(folder)
        method = get_method(spec.method)
        self.trials_run += 1
        started, clock, setup = utc_now(), time.perf_counter(), self.setup_s
        params = {**spec.to_json(), "trl_fields": method.trl_fields(spec.params), "attempt": attempt}
        write_json(folder / "params.json", params)
        outcome = _Outcome()
        try:
            self._train_and_evaluate(spec, method, folder, report, outcome)
        except KeyboardInterrupt:
            outcome.state, outcome.objective = "interrupted", None
            self._write_metrics(spec, folder, outcome, started, clock + self.setup_s - setup, attempt)
            raise
        except Exception as error:  # a failed trial is a result, not a crash of the worker
            outcome.state, outcome.objective = "failed", None
            outcome.error = _describe(error, "oom" if _is_oom(error) else "exception")
            write_text(folder / "traceback.txt", traceback.format_exc())
            self.log(f"{spec.trial_id}: failed: {outcome.error['type']}: {outcome.error['message']}")
        finally:
            shutil.rmtree(folder / SCRATCH, ignore_errors=True)
            _restore_forward(self.sft)
            _free_memory(freeze=self.trials_run == 1)
        return self._write_metrics(spec, folder, outcome, started, clock + self.setup_s - setup, attempt)

    def _train_and_evaluate(
        self,
        spec: TrialSpec,
        method: Method,
        folder: Path,
        report: Callable[[int, float], bool] | None,
        outcome: _Outcome,
    ) -> None:
        """The body of a trial: build, train, evaluate, keep weights; fills `outcome` as it goes."""
        set_seed(spec.seed)
        clock = time.perf_counter()
        policy = copy.deepcopy(self.sft).to(self.device).requires_grad_(True).train()
        reference = None
        if method.reference == "moving":
            reference = copy.deepcopy(self.sft)
        elif method.reference == "fixed" and self._lora is None:
            reference = self.sft
        outcome.times["load"] = time.perf_counter() - clock

        evaluator = self.evaluator
        quick = evaluator.quick if evaluator is not None else None
        clock = time.perf_counter()
        callback = _TrialCallback(folder / "train_log.jsonl", self.recipe.eval.every_steps, quick, report)
        trainer = self._trainer(spec, method, policy, reference, folder / SCRATCH, callback)
        reference_s = self._supply_reference(trainer, method) if reference is self.sft else None
        output = trainer.train()
        policy = trainer.model
        del trainer, reference
        _restore_forward(self.sft)
        _restore_forward(policy)
        outcome.times["train"] = time.perf_counter() - clock - (reference_s or 0.0)
        if reference_s is not None:
            outcome.times["ref_logps"] = reference_s
        outcome.train = {
            "loss": callback.last_loss if callback.last_loss is not None else output.training_loss,
            "mean_loss": output.training_loss,
            "steps": output.global_step,
            "runtime_s": output.metrics.get("train_runtime"),
        }

        if callback.diverged_at is not None:
            outcome.state = "diverged"
            outcome.error = {
                "type": "NonFiniteLoss",
                "message": f"the training loss became {callback.last_loss} at step {callback.diverged_at}",
                "reason": "nan_loss",
            }
            return
        if callback.pruned_at is None:
            self._evaluate(policy, folder, outcome)
        else:
            outcome.state, outcome.objective = "pruned", callback.quick_value
            try:
                self._evaluate(policy, folder, outcome)
            except Exception as error:  # a pruned trial keeps its quick value without full metrics
                self.log(f"{spec.trial_id}: pruned at step {callback.pruned_at}; evaluation failed: {error}")
        self._keep(policy, folder, outcome)

    def _trainer(
        self,
        spec: TrialSpec,
        method: Method,
        policy,
        reference,
        output_dir: Path,
        callback: _TrialCallback,
    ):
        """The method's TRL trainer for this trial, its data prepared as the method needs."""
        config = trl_config(method, spec.params, self.recipe.train, spec.seed, output_dir, self.device)
        extra = {"ref_model": reference} if method.reference != "none" else {}
        if self._lora is not None:
            extra["peft_config"] = self._lora
        with _no_progress_bars(), self.shared.serving():
            data = self.pairs(spec.variant)
            if method.data == "unpaired":
                from trl import unpair_preference_dataset

                # KTO reads batches in order (its KL term pairs neighbours), so desirable and undesirable
                # examples are mixed here rather than by the sampler
                data = unpair_preference_dataset(data).shuffle(seed=spec.seed)
            trainer = shared_trainer_class(load_object(method.trainer))(
                model=policy,
                args=config,
                train_dataset=data,
                processing_class=self.tokenizer,
                callbacks=[callback],
                **extra,
            )
        trainer.remove_callback(PrinterCallback)
        return trainer

    def _supply_reference(self, trainer, method: Method) -> float | None:
        """Give TRL the shared reference log-probabilities as precomputed columns, computing them when no
        worker has yet; return the seconds spent computing (None when they came from the cache or are off)."""
        key = getattr(trainer, "posweep_data_key", None)
        if not self.reference_cache or key is None or trainer.precompute_ref_logps:  # TRL's own precompute
            return None
        args, computed = trainer.args, []

        def compute() -> dict[str, torch.Tensor]:
            started = time.perf_counter()
            batch = REFERENCE_BATCH_FACTOR * args.per_device_train_batch_size
            values = reference_logps(trainer, self.sft, batch, paired=method.data == "paired")
            computed.append(time.perf_counter() - started)
            return values

        precision = {"bf16": args.bf16, "fp16": args.fp16}
        key = self.shared.key("reference", data=key, reference=self._reference_identity, precision=precision)
        values = self.shared.reference(key, compute)
        data = trainer.train_dataset
        for name, column in reference_columns(values, getattr(trainer, "ld_alpha", None)).items():
            data = data.add_column(name, column.tolist())
        trainer.train_dataset = data
        trainer.precompute_ref_logps = True
        trainer.ref_model = None
        return computed[0] if computed else None

    def _evaluate(self, policy, folder: Path, outcome: _Outcome) -> None:
        """Evaluate the trained policy and set the objective (a pruned trial keeps its last quick value)."""
        evaluator = self.evaluator
        if evaluator is None:
            value = outcome.train["loss"]
        else:
            metrics = dict(evaluator.evaluate(policy, folder))
            times = metrics.pop("time_s", {})
            outcome.times.update({key: times[key] for key in EVALUATION_TIMES if key in times})
            outcome.metrics = metrics
            value = evaluator.objective(metrics)
        if outcome.state == "pruned":
            return
        if value is None or not math.isfinite(value):
            name = self.recipe.eval.objective if evaluator is not None else "the final training loss"
            raise ValueError(f"no finite objective: {name} is {value}")
        outcome.objective = float(value)

    def _keep(self, policy, folder: Path, outcome: _Outcome) -> None:
        """Save the trained weights as `execution.keep` asks (all trials, or only the best complete one)."""
        keep = self.recipe.execution.keep
        if keep == "none" or outcome.state not in ("complete", "pruned"):
            return
        if keep == "best":
            if outcome.state != "complete" or not self._beats_others(folder.name, outcome.objective):
                return
            for other in (self.sweep_dir / "trials").glob("*/model"):
                if other.parent.name != folder.name:
                    shutil.rmtree(other, ignore_errors=True)
        with _no_progress_bars():
            policy.save_pretrained(folder / "model")
            self.tokenizer.save_pretrained(folder / "model")

    def _beats_others(self, trial_id: str, objective: float) -> bool:
        """Whether `objective` is better than that of every other complete trial of the sweep."""
        sign = 1.0 if self.direction == "maximize" else -1.0
        for path in (self.sweep_dir / "trials").glob("*/metrics.json"):
            other = _read_metrics(path.parent)
            if path.parent.name == trial_id or not other or other.get("state") != "complete":
                continue
            if other.get("objective") is not None and sign * objective <= sign * other["objective"]:
                return False
        return True

    def _write_metrics(
        self, spec: TrialSpec, folder: Path, outcome: _Outcome, started: str, clock: float, attempt: int
    ) -> TrialResult:
        """Write metrics.json (the trial's last file) and return the result."""
        outcome.times["total"] = time.perf_counter() - clock
        record = {
            "trial_id": spec.trial_id,
            "state": outcome.state,
            "objective": outcome.objective,
            "error": outcome.error,
            "time_s": outcome.times,
            "started": started,
            "finished": utc_now(),
            "attempt": attempt,
            "train": outcome.train,
            "worker": {
                "pid": os.getpid(),
                "trial": self.trials_run,
                "setup_s": round(self.setup_s, 3),
                "rss_mb": round(psutil.Process().memory_info().rss / 2**20, 1),
            },
            **outcome.metrics,
        }
        write_json(folder / "metrics.json", record)
        return _result_from(record)


def trl_config(
    method: Method,
    params: Mapping[str, float],
    train: TrainSpec,
    seed: int,
    output_dir: str | Path,
    device: str = "cpu",
):
    """The TRL config of one trial: the method's fields, the recipe's train settings, then posweep's own."""
    config_class = load_object(method.config)
    fields = {f.name for f in dataclasses.fields(config_class)}
    kwargs = method.trl_fields(params)
    kwargs.update(
        num_train_epochs=train.num_train_epochs,
        max_steps=train.max_steps or -1,
        per_device_train_batch_size=train.per_device_train_batch_size,
        gradient_accumulation_steps=train.gradient_accumulation_steps,
        max_length=train.max_length,
        lr_scheduler_type=train.lr_scheduler_type,
        weight_decay=train.weight_decay,
        max_grad_norm=train.max_grad_norm,
        optim=train.optim,
        logging_steps=train.logging_steps,
    )
    # transformers 5 folded warmup_ratio into warmup_steps (a float below 1 is a ratio) and renamed
    # gradient_checkpointing to activation_checkpointing; older versions know only the old names
    kwargs["warmup_ratio" if "warmup_ratio" in fields else "warmup_steps"] = train.warmup_ratio
    new_name = "activation_checkpointing"
    kwargs[new_name if new_name in fields else "gradient_checkpointing"] = train.gradient_checkpointing
    kwargs.update(train.extra)
    kwargs.update(
        output_dir=str(output_dir),
        seed=seed,
        data_seed=seed,
        report_to="none",
        disable_tqdm=True,
        save_strategy="no",
        eval_strategy="no",
        logging_nan_inf_filter=False,
        use_cpu=device == "cpu",
        **_precision(train.precision, device),
    )
    return config_class(**kwargs)


def load_object(path: str):
    """The object named by a registry import string 'module:Name' (trl.experimental imported quietly)."""
    os.environ.setdefault("TRL_EXPERIMENTAL_SILENCE", "1")
    module, _, name = path.partition(":")
    return getattr(importlib.import_module(module), name)


def _result_from(record: dict) -> TrialResult:
    top = ("trial_id", "state", "objective", "error")
    metrics = {key: value for key, value in record.items() if key not in top}
    return TrialResult(record["trial_id"], record["state"], record["objective"], metrics, record["error"])


def _read_metrics(folder: Path) -> dict | None:
    """A trial's metrics.json, or None when it has none (not started, running, or killed)."""
    path = folder / "metrics.json"
    return read_json(path) if path.is_file() else None


def _describe(error: BaseException, reason: str) -> dict[str, str]:
    message = str(error).strip() or repr(error)
    return {"type": type(error).__name__, "message": message[:2000], "reason": reason}


def _is_oom(error: BaseException) -> bool:
    """Whether an exception means the accelerator (or host) ran out of memory."""
    if isinstance(error, (torch.cuda.OutOfMemoryError, MemoryError)):
        return True
    return isinstance(error, RuntimeError) and "out of memory" in str(error).lower()


def _precision(precision: str, device: str) -> dict[str, bool]:
    """TrainingArguments' bf16/fp16 flags (TRL turns bf16 on unless told otherwise, so both are explicit)."""
    if precision == "auto":
        cuda = device.startswith("cuda") and torch.cuda.is_available()
        precision = "bf16" if cuda and torch.cuda.is_bf16_supported() else "fp32"
    return {"bf16": precision == "bf16", "fp16": precision == "fp16"}


def _load_tokenizer(spec: ModelSpec, path: str, same_repo: bool):
    """The policy's tokenizer (the model's revision applies when it comes from the model's repository)."""
    tokenizer = AutoTokenizer.from_pretrained(
        path, revision=spec.revision if same_repo else None, trust_remote_code=spec.trust_remote_code
    )
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def _load_model(spec: ModelSpec, path: str):
    dtype = "auto" if spec.dtype == "auto" else DTYPES[spec.dtype]
    return AutoModelForCausalLM.from_pretrained(
        path, revision=spec.revision, dtype=dtype, trust_remote_code=spec.trust_remote_code
    )


def _lora_config(spec: LoraSpec):
    try:
        from peft import LoraConfig
    except ImportError:
        raise UserError("model.lora needs the peft package: pip install peft") from None
    return LoraConfig(
        r=spec.r,
        lora_alpha=spec.alpha,
        lora_dropout=spec.dropout,
        target_modules=spec.target_modules,
        task_type="CAUSAL_LM",
    )


def _restore_forward(model) -> None:
    """Undo the `forward` patches TRL (fused LM head) and accelerate (autocast) put on a trained model."""
    for module in {model, model.get_base_model() if hasattr(model, "get_base_model") else model}:
        vars(module).pop("forward", None)
        vars(module).pop("_original_forward", None)


def _free_memory(freeze: bool = False) -> None:
    """Free a finished trial's trainer, optimizer and activations; `freeze` what survives.

    What survives a full collection after a worker's first trial lives as long as the worker (modules, the
    shared model and caches); freezing it once keeps every later full collection (here and in accelerate, two
    per trial) from walking those hundreds of thousands of objects again. (`gc.get_objects` leaves frozen
    objects out until `gc.unfreeze`.)
    """
    gc.collect()
    if freeze:
        gc.freeze()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


@contextlib.contextmanager
def _no_progress_bars() -> Iterator[None]:
    """Hide the progress bars of `datasets` (TRL's data preparation) and transformers (loading, saving)."""
    datasets_bars, transformers_bars = (
        datasets.is_progress_bar_enabled(),
        transformers_logging.is_progress_bar_enabled(),
    )
    datasets.disable_progress_bars()
    transformers_logging.disable_progress_bar()
    try:
        yield
    finally:
        if datasets_bars:
            datasets.enable_progress_bars()
        if transformers_bars:
            transformers_logging.enable_progress_bar()
