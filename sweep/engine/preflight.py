"""Preflight: every sweep-dooming mistake caught before the first trial, through the code trials run.

`preflight` loads the model config and tokenizer, reads every training variant and the evaluation prompts
with the loaders trials use (every row validated), builds each method family's TRL trainer on the real data
(TRL's own tokenization), generates the SFT baseline and scores it with every judge (count, type and
finiteness checked), checks the results folder is writable with room to spare and the study storage is
reachable, and estimates the sweep's size. It writes nothing under the results folder: its work happens
in a temporary folder, and the SFT baseline it computed is handed to the sweep folder once that exists
(`Checked.hand_over`), where every worker reuses it. Any failure is one `UserError` line that starts with
the recipe field at fault.
"""

from __future__ import annotations

import contextlib
import errno
import gc
import math
import os
import shutil
import tempfile
import time
import traceback
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sweep.engine.storage import check_reachable, storage_url
from sweep.errors import UserError
from sweep.io import first_line
from sweep.results import SftBaseline, SweepFolder
from sweep.spec.methods import get_method
from sweep.spec.plan import Plan, TrialSpec, plan_recipe
from sweep.spec.recipe import Recipe

PROBE_BYTES = 1 << 20
"""The results folder must take a file of this size (a full disk fails here, not in the first trial)."""
DISK_ERRORS = (errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EACCES, errno.EPERM)
JUDGE_PROBE = 4
"""Baseline responses every judge scores again in the preflight (a reused baseline scores nothing)."""


@dataclass
class Checked:
    """What the preflight leaves for the sweep: the SFT baseline to hand to the sweep folder, and (when asked
    to keep it) its loaded worker and evaluator with the temporary folder they worked in."""

    baseline: SftBaseline | None = None
    warm: tuple[Any, Any] | None = None
    staging: tempfile.TemporaryDirectory | None = None

    def warm_worker(self, recipe: Recipe, folder: SweepFolder, log: Callable[[str], None], factory):
        """The preflight's loaded worker, now serving `folder` (its model, data, tokenized training sets and
        evaluator reused), or None when it was not kept or checked another recipe; taken once."""
        warm, self.warm = self.warm, None
        if warm is None:
            return None
        worker, evaluator = warm
        try:
            if worker.recipe != recipe:
                return None
            worker.serve(folder.path, log, factory, evaluator)  # copies the tokenized sets out first
        finally:
            self.staging.cleanup()
        log("worker: the preflight's model, data, tokenized training sets, judges and SFT baseline reused")
        return worker

    def hand_over(self, folder: SweepFolder) -> None:
        """Store the SFT baseline in the sweep folder, where workers reuse it (unless it holds this one)."""
        if self.baseline is None:
            return
        held = folder.read_baseline()
        if held is None or held.key != self.baseline.key:
            folder.write_baseline(self.baseline)


def is_disk_error(error: BaseException) -> bool:
    """Whether an error means the results folder cannot take more data (full, read-only, forbidden)."""
    return isinstance(error, OSError) and error.errno in DISK_ERRORS


@contextlib.contextmanager
def blame(name: str) -> Iterator[None]:
    """Turn any error in the block into one UserError line starting with the recipe field `name`."""
    try:
        yield
    except UserError as error:
        text = str(error)
        root = name.split(".")[0].split("[")[0]
        raise UserError(text if text.startswith(root) else f"{name}: {text}") from None
    except Exception as error:  # whatever a loader raises, the user sees the field and one line
        raise UserError(f"{name}: {type(error).__name__}: {first_line(error)}") from None


def _judge_blamed(recipe: Recipe, error: Exception) -> UserError | None:
    """The error of the innermost judge in the traceback, as `judge[i].kind: message` (None if no judge)."""
    from sweep.hf.judges import Judge

    names = {spec.name: index for index, spec in enumerate(recipe.judges)}
    found = None
    for frame, _ in traceback.walk_tb(error.__traceback__):
        candidate = frame.f_locals.get("self")
        if isinstance(candidate, Judge) and candidate.name in names:
            found = candidate.name
    if found is None:
        return None
    index = names[found]
    spec = recipe.judges[index]
    where = "judge" if len(recipe.judges) == 1 else f"judge[{index}]"
    kind = "reward_model" if spec.reward_model is not None else "callable"
    text = str(error) if isinstance(error, UserError) else f"{type(error).__name__}: {first_line(error)}"
    text = text.removeprefix(f"judge {found}: ")
    return UserError(f"{where}.{kind}: judge {found}: {first_line(UserError(text))}")


def check_results_folder(root: Path, name: str, field_name: str) -> str:
    """The nearest existing folder of `root/name` takes a PROBE_BYTES file; return its free space, shown."""
    target = root / name
    existing = next(path for path in (target, *target.parents) if path.exists())
    if not existing.is_dir():
        raise UserError(f"{field_name}: {existing} is not a folder")
    try:
        handle, probe = tempfile.mkstemp(prefix=".posweep-probe.", dir=existing)
    except OSError as error:
        raise UserError(f"{field_name}: cannot write in {existing}: {error.strerror}") from None
    try:
        with os.fdopen(handle, "wb") as file:
            file.write(b"\0" * PROBE_BYTES)
            file.flush()
            os.fsync(file.fileno())
    except OSError as error:
        raise UserError(
            f"{field_name}: cannot write {PROBE_BYTES >> 20} MiB in {existing}: {error.strerror}"
        ) from None
    finally:
        Path(probe).unlink(missing_ok=True)
    return f"{shutil.disk_usage(existing).free / 2**30:.1f} GiB free"


def _storage(value: str | None, field_name: str) -> str:
    """Connect to the study storage (a database URL) once; the journal file needs the results folder only."""
    with blame(field_name):
        url = storage_url(value)
        if url is None:
            return "journal file in the sweep folder"
        check_reachable(url)
    return "reachable"


def _families(recipe: Recipe, plan: Plan) -> dict[tuple[str, str], TrialSpec]:
    """One trial per (TRL trainer, data kind): the plan's first trial of it, or the method's defaults."""
    families: dict[tuple[str, str], TrialSpec] = {}
    variant = plan.variants[0]
    for name in plan.spaces:
        method = get_method(name)
        key = (method.trainer, method.data)
        if key in families:
            continue
        planned = next((t for t in plan.trials if t.method == name), None)
        families[key] = planned or TrialSpec(f"preflight-{name}", name, dict(method.defaults), 0, variant)
    return families


def _size(recipe: Recipe, plan: Plan, pairs: dict, prompts: int) -> str:
    """Trials, optimizer steps and evaluation generations the sweep will run."""
    train = recipe.train
    per_step = train.per_device_train_batch_size * train.gradient_accumulation_steps
    counts: dict[tuple[str, str | None], int] = {}
    if plan.strategy == "grid":
        for trial in plan.trials:
            counts[trial.method, trial.variant] = counts.get((trial.method, trial.variant), 0) + 1
    else:
        for variant in plan.variants:
            for method in plan.spaces:
                counts[method, variant] = (plan.n_trials or 0) * len(plan.seeds)
    steps = 0
    for (method, variant), count in counts.items():
        examples = len(pairs[variant]) * (2 if get_method(method).data == "unpaired" else 1)
        steps += count * (train.max_steps or math.ceil(train.num_train_epochs * examples / per_step))
    settings = recipe.eval
    samples_model = settings.do_sample and settings.temperature == 1.0 and settings.top_p == 1.0
    kl = 0 if samples_model else prompts * settings.kl_samples
    per_trial = prompts * settings.samples_per_prompt + kl
    return (
        f"{plan.total} trials, {steps} optimizer steps in all; {per_trial} generations per trial "
        f"({plan.total * per_trial} in all) and {prompts * settings.samples_per_prompt} for the SFT baseline"
    )


FEW_CORES = 4
"""On this many CPU cores or fewer, tiny models train fastest with one worker of one torch thread (measured
on 2 cores: tiny.yaml 52.6 s with one worker, 54.1 s with two)."""


def cpu_cores() -> int:
    """The CPU cores this process may run on."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def cpu_threads(processes: int) -> int:
    """Torch threads per process of `processes` sharing this machine's CPU: one on few cores, else a share."""
    cores = cpu_cores()
    return 1 if cores <= FEW_CORES else max(1, cores // processes)


def workers_hint(envs: list[dict[str, str]]) -> str | None:
    """A one-line hint where more CPU workers were asked for than pay on this machine; None otherwise."""
    cpu = sum(env.get("POSWEEP_DEVICE") == "cpu" for env in envs)
    cores = cpu_cores()
    if cpu < 2 or cores > FEW_CORES:
        return None
    return (
        f"preflight: hint: {cpu} CPU workers share {cores} cores; on {FEW_CORES} cores or fewer one worker "
        "is as fast or faster"
    )


def preflight(
    recipe: Recipe,
    results: Path | None,
    storage: str | None,
    device: str,
    log: Callable[[str], None],
    existing: SweepFolder | None = None,
    keep_worker: bool = False,
) -> Checked:
    """Check a located recipe end to end without writing under the results folder; raise UserError.
    `keep_worker`: keep the loaded worker for the sweep (`Checked.warm_worker`) instead of freeing it."""
    started = time.perf_counter()
    checked = Checked()

    def say(line: str) -> None:
        log(f"preflight: {line}")

    plan = plan_recipe(recipe)
    root = Path(results if results is not None else recipe.execution.results_dir)
    where_root = "--results" if results is not None else "execution.results_dir"
    free = check_results_folder(root, recipe.name, where_root)
    where_storage = "--storage" if storage is not None else "execution.storage"
    reach = _storage(storage or recipe.execution.storage, where_storage)
    say(f"results folder {root} writable ({free}); storage: {reach}")
    staging = tempfile.TemporaryDirectory(prefix="posweep-preflight-")
    try:
        checked.baseline, warm = _models_data_judges(recipe, plan, device, Path(staging.name), existing, say)
    except BaseException:
        staging.cleanup()
        raise
    if keep_worker:
        checked.warm, checked.staging = warm, staging
    else:
        del warm
        _release(staging)
    say(f"ok in {time.perf_counter() - started:.1f} s")
    return checked


def _models_data_judges(
    recipe: Recipe,
    plan: Plan,
    device: str,
    staging: Path,
    existing: SweepFolder | None,
    say: Callable[[str], None],
) -> SftBaseline:
    """The checks that load models and data: run in `staging`; return the SFT baseline computed there."""
    from transformers import AutoConfig

    from sweep.hf.data import is_conversational, load_eval_prompts, load_pair_rows
    from sweep.hf.formats import one_format, templated
    from sweep.hf.loading import load_policy_tokenizer

    model = recipe.model
    model_field = "model.tokenizer" if model.tokenizer else "model.path"
    with blame("model.path"):
        config = AutoConfig.from_pretrained(
            model.path, revision=model.revision, trust_remote_code=model.trust_remote_code
        )
    with blame(model_field):
        tokenizer = load_policy_tokenizer(model, model.tokenizer or model.path, same_repo=not model.tokenizer)
    pairs = {}
    for variant, source in recipe.data.variants.items():
        where = f"data.train.{variant}" if variant else "data.train"
        with blame(where):
            pairs[variant] = load_pair_rows(source, where)
    with blame("data.eval"):
        prompts = load_eval_prompts(recipe.data.eval)
    chat = [f"data.train{'.' + v if v else ''}" for v, rows in pairs.items() if is_conversational(rows[0])]
    eval_chat = not isinstance(prompts[0].prompt, str)
    chat += ["data.eval"] if eval_chat else []
    train_chat = one_format({v: is_conversational(rows[0]) for v, rows in pairs.items()})
    if templated(train_chat, eval_chat) and not eval_chat:
        say("data.eval: plain prompts go through the chat template as one user message, as in training")
    if chat and not getattr(tokenizer, "chat_template", None):
        raise UserError(
            f"{model_field}: the tokenizer of {model.tokenizer or model.path!r} has no chat template, "
            f"but {', '.join(chat)} rows are conversational (message lists)"
        )
    shown = ", ".join(f"{v or 'data.train'}: {len(rows)} pairs" for v, rows in pairs.items())
    say(
        f"model {model.path} ({type(config).__name__}); {shown}; data.eval: {len(prompts)} prompts"
        f"{', with references' if prompts[0].reference is not None else ''}"
    )
    say(f"sweep size: {_size(recipe, plan, pairs, len(prompts))}")
    return _trainers_and_judges(recipe, plan, device, staging, existing, say)


def _trainers_and_judges(
    recipe: Recipe,
    plan: Plan,
    device: str,
    staging: Path,
    existing: SweepFolder | None,
    say: Callable[[str], None],
) -> tuple[SftBaseline, tuple[Any, Any]]:
    """Build each method family's trainer, the evaluator (SFT baseline) and probe every judge; return the
    baseline, and the worker and evaluator that did it."""
    from sweep.evaluate.evaluated import prompt_rows
    from sweep.evaluate.evaluator import Evaluator
    from sweep.train.trial import Worker

    folder = SweepFolder(staging)
    held = existing.read_baseline() if existing is not None and existing.exists() else None
    if held is not None:
        folder.write_baseline(held)
    with blame("model.path"):
        worker = Worker(recipe, staging, device=device, log=lambda line: None)
    try:
        rendered = []
        for (trainer, _), spec in _families(recipe, plan).items():
            with blame(f"methods.{spec.method}"):
                tokens = worker.render(spec)
            rendered.append(f"{spec.method} ({trainer.rsplit(':', 1)[-1]}: {tokens})")
        say(f"TRL tokenized the training data for {'; '.join(rendered)}")
        try:
            evaluator = Evaluator(
                recipe,
                worker.sft,
                worker.tokenizer,
                staging,
                device,
                lambda line: None,
                train_conversational=worker.conversational,
            )
        except Exception as error:  # a judge's own exception is the judge's fault; the rest is eval's
            raise _judge_blamed(recipe, error) or _as_field("eval", error) from None
        baseline = folder.read_baseline()
        count = min(JUDGE_PROBE, len(baseline.responses))
        rows = prompt_rows(range(len(evaluator.items)), recipe.eval.samples_per_prompt)
        probe = [evaluator.items[index].prompt for index in rows[:count]]
        scored = []
        for judge in evaluator.judges:
            try:
                judge.score(probe, baseline.responses[:count])
            except Exception as error:  # as above
                raise _judge_blamed(recipe, error) or _as_field("judge", error) from None
            mean = sum(baseline.scores[judge.name]) / len(baseline.scores[judge.name])
            scored.append(f"{judge.name} mean {mean:.4g}")
        reused = "reused" if held is not None and held.key == baseline.key else "generated"
        say(f"SFT baseline {reused}: {len(baseline.responses)} responses; judges: {', '.join(scored)}")
        return baseline, (worker, evaluator)
    except BaseException:
        del worker
        gc.collect()
        _empty_device_cache()
        raise


def _as_field(name: str, error: Exception) -> UserError:
    """`error` as one line starting with a recipe field (its own when it names one, else `name`)."""
    text = str(error) if isinstance(error, UserError) else f"{type(error).__name__}: {first_line(error)}"
    named = isinstance(error, UserError) and text.split(":")[0].split(".")[0] in ("data", "model", "judge")
    return UserError(first_line(UserError(text)) if named else f"{name}: {first_line(UserError(text))}")


def _release(staging: tempfile.TemporaryDirectory) -> None:
    """Free what the preflight loaded (the caller dropped its references) and remove its folder."""
    gc.collect()
    _empty_device_cache()
    staging.cleanup()


def _empty_device_cache() -> None:
    import torch

    if torch.cuda.is_available():
        torch.cuda.empty_cache()
