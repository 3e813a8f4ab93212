"""Multi-process trials in a recipe: `execution.processes_per_trial` and `execution.accelerate_config` checks.

A trial is launched (its processes started by `accelerate launch`) when it spans several processes or names
an accelerate config. The accelerate config is read here, without importing accelerate: its distributed type
must be one a single-machine trial can use, and the sharding it asks for (DeepSpeed ZeRO, FSDP) must combine
with every method of the recipe. Its `num_processes` is replaced by `execution.processes_per_trial`.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path
from typing import Any

import yaml

from sweep.spec.methods import REGISTRY
from sweep.spec.recipe import Recipe

DISTRIBUTED_TYPES = ("NO", "MULTI_GPU", "MULTI_CPU", "DEEPSPEED", "FSDP")
SHARDING = ("DEEPSPEED", "FSDP")
WHERE = "execution.accelerate_config"


def launched(recipe: Recipe) -> bool:
    """Whether the recipe's trials run under `accelerate launch` rather than inside the worker process."""
    return recipe.execution.processes_per_trial > 1 or recipe.execution.accelerate_config is not None


def slurm_gpus(recipe: Recipe) -> int:
    """The GPUs of each SLURM worker job: `execution.slurm.gpus_per_worker`, by default one trial's worth."""
    given = recipe.execution.slurm.gpus_per_worker
    return recipe.execution.processes_per_trial if given is None else given


def read_accelerate_config(path: str | Path) -> dict[str, Any]:
    """An accelerate config file as a mapping; ValueError with the reason when it is not one."""
    try:
        data = yaml.safe_load(Path(path).read_text(encoding="utf-8"))
    except OSError as error:
        raise ValueError(f"cannot read {path}: {error.strerror or error}") from None
    except yaml.YAMLError as error:
        raise ValueError(f"{path} is not valid YAML: {str(error).splitlines()[0]}") from None
    if not isinstance(data, dict):
        raise ValueError(f"{path} is not an accelerate config (a mapping such as `accelerate config` writes)")
    return data


def zero_stage(config: dict[str, Any]) -> int | None:
    """The DeepSpeed ZeRO stage a config asks for (None when it is not a DeepSpeed config)."""
    if config.get("distributed_type") != "DEEPSPEED":
        return None
    return (config.get("deepspeed_config") or {}).get("zero_stage", 0)


def launch_problems(recipe: Recipe) -> list[tuple[str, str]]:
    """Every problem of the recipe's multi-process settings, as (dotted path, message)."""
    execution, k = recipe.execution, recipe.execution.processes_per_trial
    problems = []
    if isinstance(execution.devices, list) and len(execution.devices) % k:
        problems.append(
            (
                "execution.processes_per_trial",
                f"{k} does not divide the {len(execution.devices)} devices listed",
            )
        )
    gpus = execution.slurm.gpus_per_worker
    if gpus is not None and gpus % k:
        problems.append(
            ("execution.slurm.gpus_per_worker", f"{gpus} is not a multiple of processes_per_trial ({k})")
        )
    if launched(recipe) and recipe.search.pruner != "none":
        problems.append(
            (
                "search.pruner",
                "pruning needs a trial's reports in the worker; launched trials cannot prune yet",
            )
        )
    if execution.accelerate_config is not None:
        try:
            config = read_accelerate_config(execution.accelerate_config)
        except ValueError as error:
            return [*problems, (WHERE, str(error))]
        problems += [(WHERE, message) for message in _config_problems(recipe, config)]
    return problems


def _config_problems(recipe: Recipe, config: dict[str, Any]) -> list[str]:
    """What keeps an accelerate config from running this recipe's trials."""
    kind = config.get("distributed_type", "NO")
    if kind not in DISTRIBUTED_TYPES:
        return [f"distributed_type {kind!r} is not supported (use one of {', '.join(DISTRIBUTED_TYPES)})"]
    problems = []
    if config.get("num_machines", 1) != 1:
        problems.append("num_machines must be 1: a trial's processes run on one machine (a worker's GPUs)")
    if kind in SHARDING and recipe.execution.devices == "cpu":
        problems.append(
            f"{kind} needs GPUs: accelerate runs CPU processes as plain data parallel (devices: cpu)"
        )
    if kind == "DEEPSPEED" and importlib.util.find_spec("deepspeed") is None:
        problems.append("DEEPSPEED needs the deepspeed package where trials run: pip install deepspeed")
    stage = zero_stage(config)
    if stage is not None and stage not in (0, 1, 2, 3):
        problems.append(f"deepspeed_config.zero_stage {stage!r} is not 0, 1, 2 or 3")
    version = (config.get("fsdp_config") or {}).get("fsdp_version", 1)
    if kind == "FSDP" and version not in (1, 2):
        problems.append(f"fsdp_config.fsdp_version {version!r} is not 1 or 2")
    sharded = kind == "FSDP" or stage == 3
    for method in recipe.methods:
        moving = REGISTRY[method].reference == "moving"
        if moving and kind == "FSDP":
            problems.append(
                f"{method} updates its reference from the policy every tau steps, and TRL gathers the "
                "policy's parameters for that under DeepSpeed ZeRO-3 only, not under FSDP (use ZeRO-3)"
            )
    if sharded and recipe.model.lora is not None:
        problems.append(
            "model.lora under FSDP or ZeRO-3: posweep gathers a sharded policy's full weights for evaluation "
            "into a full model, not into adapters yet (use ZeRO-2 or DDP with LoRA, or full fine-tuning)"
        )
    return problems
