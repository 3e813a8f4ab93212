"""One trial: train the registry's TRL trainer with one point of the search space, evaluate it, record it.

A `Worker` lives as long as its process: it loads the tokenizer, the training pairs and the SFT weights
once, and keeps the SFT model frozen on its device in the policy's master dtype (`numerics.master_dtype`),
where it serves as the starting point of every trial, the fixed reference model of the methods that have
one (and of the shared reference cache), and the SFT side of evaluation: all compute as the policy does.

Work that does not depend on a trial's hyperparameters is done once per sweep (`sweep.train.shared`).

`Worker.run` writes `trials/<id>/params.json` first and `metrics.json` last. Failures are data: an
exception, a NaN loss or an out-of-memory error ends that trial (state failed or diverged), never the
worker; only a stop propagates, after the trial is recorded as interrupted: a KeyboardInterrupt, or any
error raised once a stop has arrived (a library the stop landed in may raise an error of its own).
"""

from __future__ import annotations

import copy
import math
import tempfile
import time
import traceback
from collections.abc import Callable
from pathlib import Path

import datasets
import torch
from transformers import PrinterCallback, TrainerCallback, set_seed

from sweep.hf.data import is_conversational, load_pairs
from sweep.hf.formats import one_format
from sweep.hf.loading import load_object, load_policy, load_policy_tokenizer, reset_cuda_peak
from sweep.hf.quiet import no_progress_bars
from sweep.io import utc_now
from sweep.results import SweepFolder, TrialFolder, TrialParams
from sweep.signals import as_stop, raise_if_stopped
from sweep.spec.methods import Method, get_method
from sweep.spec.plan import TrialSpec
from sweep.spec.recipe import Recipe
from sweep.train import hooks
from sweep.train.callback import TrialCallback
from sweep.train.config import trl_config
from sweep.train.lengths import apply_length_policy
from sweep.train.lora import lora_config, reference_sync
from sweep.train.numerics import (
    divergence,
    master_dtype,
    moving_reference,
    planned_steps,
    training_record,
    trust_region_note,
)
from sweep.train.outcome import (
    EVALUATION_TIMES,
    Outcome,
    TrialResult,
    describe,
    free_memory,
    is_oom,
    metrics_record,
    result_from,
    save_weights,
    worker_block,
)
from sweep.train.protocol import EvaluatorFactory, PolicyEvaluator
from sweep.train.shared import SharedTraining, _model_stamp
from sweep.train.stages import Stages
from sweep.train.trackers import TrackedRun, check_installed


class Worker:
    """Runs trials one after another in one process, loading the shared inputs once.

    `setup_s` is the time spent on that one-off work (loading the model, tokenizer and evaluator; the first
    evaluator use happens within a trial but is not counted in its time); `trials_run` counts trials run.
    `reference_cache=False` makes fixed-reference trials run TRL's own reference pass in every step. `results`
    is where its trials' files go (default the sweep folder's own; a rank other than 0 passes a private one).
    """

    def __init__(
        self,
        recipe: Recipe,
        sweep_dir: str | Path,
        device: str = "cpu",
        log: Callable[[str], None] = print,
        evaluator_factory: EvaluatorFactory | None = None,
        train_dataset: datasets.Dataset | None = None,
        reference_cache: bool = True,
        results: SweepFolder | None = None,
    ):
        started = time.perf_counter()
        self.recipe = recipe
        self.sweep_dir = Path(sweep_dir)
        self.results = results or SweepFolder(sweep_dir)
        self.device = device
        self.log = log
        self._evaluator_factory = evaluator_factory
        self._evaluator: PolicyEvaluator | None = None
        self._lora = lora_config(recipe.model.lora) if recipe.model.lora else None
        check_installed(recipe.train.report_to)
        model_path = recipe.model.path
        tokenizer = recipe.model.tokenizer
        tokenizer_path = tokenizer or model_path
        sources = {None: train_dataset} if train_dataset is not None else recipe.data.variants
        with no_progress_bars():
            self.tokenizer = load_policy_tokenizer(recipe.model, tokenizer_path, same_repo=tokenizer is None)
            sft = load_policy(recipe.model, model_path)
            dtype = master_dtype(sft.dtype, recipe.train, self._lora is not None)
            self.sft = sft.to(device=device, dtype=dtype).eval().requires_grad_(False)
        self._pairs, self.length_counts = {}, {}
        for variant, source in sources.items():
            where = f"data.train.{variant}" if variant else "data.train"
            pairs = source if isinstance(source, datasets.Dataset) else load_pairs(source, where=where)
            self._pairs[variant], counts = apply_length_policy(
                pairs, self.tokenizer, recipe.train.max_length, recipe.train.min_completion_tokens, where
            )
            self.length_counts[variant or ""] = counts.to_json()
        self.results.record_training_data(self.length_counts)
        self.conversational = one_format(
            {v: is_conversational(p[0]) for v, p in self._pairs.items() if len(p)}
        )
        self.shared = SharedTraining(self.results.cache, self.tokenizer)
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

    def serve(self, sweep_dir: str | Path, log: Callable[[str], None], evaluator_factory, evaluator) -> None:
        """Work for the sweep in `sweep_dir` from now on (the preflight's worker, handed to the sweep it
        checked): files, shared cache and log go there; model, data, tokenized sets and `evaluator` stay."""
        self.sweep_dir, self.results, self.log = Path(sweep_dir), SweepFolder(sweep_dir), log
        self.results.record_training_data(self.length_counts)
        self.shared.move_to(self.results.cache)
        self._evaluator_factory, self._evaluator = evaluator_factory, evaluator

    def pairs(self, variant: str | None = None) -> datasets.Dataset:
        """The training pairs of a data variant (all loaded when the worker starts)."""
        return self._pairs[variant]

    @property
    def direction(self) -> str:
        """Whether a larger objective is better (the final training loss, without evaluator, is minimized)."""
        return self.recipe.eval.direction if self._evaluator_factory else "minimize"

    @property
    def evaluator(self) -> PolicyEvaluator | None:
        """The evaluator (created on first use), or None when the objective is the training loss."""
        if self._evaluator is None and self._evaluator_factory is not None:
            started = time.perf_counter()
            self._evaluator = self._evaluator_factory(self.sft, self.tokenizer, self.conversational)
            self.setup_s += time.perf_counter() - started
        return self._evaluator

    def trial_dir(self, trial_id: str) -> Path:
        """The folder of one trial."""
        return self.results.trial(trial_id).path

    def run(
        self,
        spec: TrialSpec,
        attempt: int = 1,
        report: Callable[[int, float], bool] | None = None,
        waited_s: float = 0.0,
    ) -> TrialResult:
        """Train, evaluate and record one trial; `report(step, value)` returning True prunes it; `waited_s`,
        the engine's wait for this trial's claim, is its first stage."""
        folder = self.results.trial(spec.trial_id)
        recorded = folder.read_metrics()
        if recorded is not None and recorded.state == "complete":
            return result_from(recorded)
        method = get_method(spec.method)
        self.trials_run += 1
        reset_cuda_peak()
        started, now, setup = utc_now(), time.perf_counter(), self.setup_s
        clock = now - waited_s
        fields = method.trl_fields(spec.params)
        steps = planned_steps(self.recipe.train, len(self.pairs(spec.variant)))
        note = trust_region_note(method, fields, steps)
        if note is not None:
            self.log(f"{spec.trial_id}: warning: {note}")
        notes = {"notes": [note]} if note else {}
        given = spec.to_json()
        slot = {"slot": given.pop("slot")} if "slot" in given else {}
        params = TrialParams(**given, trl_fields=fields, attempt=attempt, extra={**notes, **slot})
        folder.start(params)
        outcome = Outcome(stages=Stages(now, claim_s=waited_s))
        try:
            with TrackedRun(
                self.recipe.train.report_to, self.results.name, spec, folder.tensorboard
            ) as tracked:
                self._train_and_evaluate(spec, method, folder, report, outcome, tracked)
                tracked.log_final(outcome.metrics, outcome.objective, outcome.train.get("steps", 0))
        except (KeyboardInterrupt, Exception) as error:  # a failed trial is a result, not a worker's crash
            stop = as_stop(error)
            if stop is not None:
                outcome.state, outcome.objective = "interrupted", None
                self._write_metrics(spec, folder, outcome, started, clock + self.setup_s - setup, attempt)
                if stop is error:
                    raise
                raise stop from error
            outcome.state, outcome.objective = "failed", None
            outcome.error = describe(error, "oom" if is_oom(error) else "exception")
            folder.write_traceback(traceback.format_exc())
            self.log(f"{spec.trial_id}: failed: {outcome.error['type']}: {outcome.error['message']}")
        finally:
            stopped = self._clean_up(folder, outcome)
        result = self._write_metrics(spec, folder, outcome, started, clock + self.setup_s - setup, attempt)
        if stopped is not None:
            raise stopped  # the trial had ended before the stop came: it is recorded as it ended
        return result

    def _clean_up(self, folder: TrialFolder, outcome: Outcome) -> KeyboardInterrupt | None:
        """Remove the trial's scratch files and free its memory; a stop that lands here is returned, not
        raised, so that the trial is still recorded."""
        outcome.stages.enter("cleanup")
        try:
            folder.discard_scratch()
            hooks.restore_forward(self.sft)
            free_memory(freeze=self.trials_run == 1)
        except KeyboardInterrupt as stop:
            return stop
        return None

    def render(self, spec: TrialSpec) -> str:
        """Build the trial's TRL trainer without training (TRL tokenizes the data); show its first example."""
        method = get_method(spec.method)
        policy = copy.deepcopy(self.sft).to(self.device)
        reference = self.sft if method.reference != "none" and self._lora is None else None
        with tempfile.TemporaryDirectory() as scratch:
            try:
                trainer = self._trainer(spec, method, policy, reference, Path(scratch), TrainerCallback())
                first = trainer.train_dataset[0]
            finally:
                hooks.restore_forward(self.sft)
        return ", ".join(f"{key} {len(value)}" for key, value in first.items() if key.endswith("_ids"))

    def _train_and_evaluate(
        self,
        spec: TrialSpec,
        method: Method,
        folder: TrialFolder,
        report: Callable[[int, float], bool] | None,
        outcome: Outcome,
        tracked: TrackedRun,
    ) -> None:
        """The body of a trial: build, train, evaluate, keep weights; fills `outcome` as it goes."""
        stages = outcome.stages
        stages.enter("load")
        set_seed(spec.seed)
        clock = time.perf_counter()
        train = self.recipe.train
        policy = copy.deepcopy(self.sft).requires_grad_(True).train()
        reference = None
        if method.reference == "moving":
            reference = moving_reference(self.sft, self._lora is not None)
        elif method.reference == "fixed" and self._lora is None:
            reference = self.sft
        outcome.times["load"] = time.perf_counter() - clock

        setup = self.setup_s
        evaluator = self.evaluator
        stages.skip(self.setup_s - setup)  # the evaluator's first load is the worker's setup, not the trial's
        quick = evaluator.quick if evaluator is not None else None
        stages.enter("build")
        clock = time.perf_counter()
        callback = TrialCallback(folder.log, self.recipe.eval.every_steps, quick, report)
        with tracked.building_trainer():
            trainer = self._trainer(spec, method, policy, reference, folder.scratch, callback)
        raise_if_stopped()  # a stop swallowed while TRL prepared the data (datasets catches everything)
        stages.enter("ref_logps")
        reference_s = None
        if self.reference_cache and method.reference == "fixed":
            paired = method.data == "paired"
            reference_s = self.shared.supply_reference(trainer, self.sft, self._reference_identity, paired)
        stages.enter("train")
        output = trainer.train()
        rows, world_size = len(trainer.train_dataset), trainer.args.world_size
        policy = hooks.gathered_policy(trainer, self.sft)
        del trainer, reference
        hooks.restore_forward(self.sft)
        hooks.restore_forward(policy)
        outcome.times["train"] = time.perf_counter() - clock - (reference_s or 0.0)
        if reference_s is not None:
            outcome.times["ref_logps"] = reference_s
        outcome.train = {
            "loss": callback.last_loss if callback.last_loss is not None else output.training_loss,
            "mean_loss": output.training_loss,
            "steps": output.global_step,
            "runtime_s": output.metrics.get("train_runtime"),
            "length_policy": self.length_counts[spec.variant or ""],
            "training_rows": rows,
            "world_size": world_size,
            **training_record(policy, train, method, self.device, output.global_step),
        }
        diverged = divergence(callback.diverged_at, callback.last_loss, output.training_loss, policy)
        if diverged is not None:
            outcome.state, outcome.error = "diverged", diverged
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
        callback: TrialCallback,
    ):
        """The method's TRL trainer for this trial, its data prepared as the method needs."""
        names = {"run_name": spec.trial_id, "project": self.results.name}
        config = trl_config(
            method, spec.params, self.recipe.train, spec.seed, output_dir, self.device, **names
        )
        extra = {"ref_model": reference} if method.reference != "none" else {}
        if self._lora is not None:
            extra["peft_config"] = self._lora
        sync = reference_sync(config, reference) if self._lora is not None else None
        data = self.pairs(spec.variant)
        with no_progress_bars(), hooks.serving(self.shared, conversational=is_conversational(data[0])):
            if method.data == "unpaired":
                from trl import unpair_preference_dataset

                # KTO reads batches in order (its KL term pairs neighbours), so desirable and undesirable
                # examples are mixed here rather than by the sampler
                data = unpair_preference_dataset(data).shuffle(seed=spec.seed)
            trainer = hooks.shared_trainer_class(load_object(method.trainer))(
                model=policy,
                args=config,
                train_dataset=data,
                processing_class=self.tokenizer,
                callbacks=[callback],
                **extra,
            )
        trainer.remove_callback(PrinterCallback)
        if self._lora is not None:
            hooks.restore_lora_dropout(trainer.model, self.recipe.model.lora.dropout)
        if sync is not None:
            trainer.add_callback(sync)
        return trainer

    def _evaluate(self, policy, folder: TrialFolder, outcome: Outcome) -> None:
        """Evaluate the trained policy and set the objective (a pruned trial keeps its last quick value)."""
        evaluator = self.evaluator
        if evaluator is None:
            value = outcome.train["loss"]
        else:
            outcome.stages.enter("evaluate")
            metrics = dict(evaluator.evaluate(policy, folder.path))
            times = metrics.pop("time_s", {})
            outcome.stages.carve({key: times[key] for key in EVALUATION_TIMES if key in times})
            outcome.times.update({key: times[key] for key in EVALUATION_TIMES if key in times})
            outcome.metrics = metrics
            value = evaluator.objective(metrics)
        if outcome.state == "pruned":
            return
        if value is None or not math.isfinite(value):
            name = self.recipe.eval.objective if evaluator is not None else "the final training loss"
            raise ValueError(f"no finite objective: {name} is {value}")
        outcome.objective = float(value)

    def _write_metrics(
        self,
        spec: TrialSpec,
        folder: TrialFolder,
        outcome: Outcome,
        started: str,
        clock: float,
        attempt: int,
    ) -> TrialResult:
        """Write metrics.json (the trial's last file) and return the result."""
        worker = worker_block(self.trials_run, self.setup_s)
        record = metrics_record(spec.trial_id, outcome, started, clock, attempt, worker)
        folder.write_metrics(record)
        return result_from(record)

    def _keep(self, policy, folder: TrialFolder, outcome: Outcome) -> None:
        """Save the trained weights if `execution.keep` may want them (for `best` the engine keeps one)."""
        outcome.stages.enter("save")
        keep = self.recipe.execution.keep
        wanted = ("complete",) if keep == "best" else ("complete", "pruned")
        if keep == "none" or outcome.state not in wanted:
            return
        merged = self._lora is not None and self.recipe.model.lora.save_merged
        save_weights(policy, self.tokenizer, folder.model, merged)
