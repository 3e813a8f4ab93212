"""The TRL config of one trial: the method's fields, the recipe's train settings, then posweep's own."""

from __future__ import annotations

import dataclasses
import importlib.util
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from sweep.errors import UserError
from sweep.hf.loading import load_object
from sweep.spec.methods import Method
from sweep.spec.recipe import TrainSpec


def trl_config(
    method: Method,
    params: Mapping[str, float],
    train: TrainSpec,
    seed: int,
    output_dir: str | Path,
    device: str = "cpu",
    run_name: str | None = None,
    project: str = "posweep",
):
    """The TRL config of one trial: the method's fields, the recipe's train settings, then posweep's own.

    An unpaired method (KTO) reads each pair as two rows, so its batch holds twice the rows: every method
    then takes the same optimizer steps over the same pairs (a paired batch of B pairs is 2B sequences).
    """
    config_class = load_object(method.config)
    fields = {f.name for f in dataclasses.fields(config_class)}
    kwargs = method.trl_fields(params)
    kwargs.update(
        num_train_epochs=train.num_train_epochs,
        max_steps=train.max_steps or -1,
        per_device_train_batch_size=train.per_device_train_batch_size * rows_per_pair(method),
        gradient_accumulation_steps=train.gradient_accumulation_steps,
        max_length=train.max_length,
        lr_scheduler_type=train.lr_scheduler_type,
        weight_decay=train.weight_decay,
        max_grad_norm=train.max_grad_norm,
        optim=train.optim,
        logging_steps=train.logging_steps,
        use_liger_kernel=_liger(train.use_liger_kernel, device),
    )
    # transformers 5 folded warmup_ratio into warmup_steps (a float below 1 is a ratio) and renamed
    # gradient_checkpointing to activation_checkpointing; older versions know only the old names
    kwargs["warmup_ratio" if "warmup_ratio" in fields else "warmup_steps"] = train.warmup_ratio
    new_name = "activation_checkpointing"
    kwargs[new_name if new_name in fields else "gradient_checkpointing"] = train.gradient_checkpointing
    kwargs.update(train.extra)
    kwargs.update(posweep_fields(output_dir, seed, train.precision, device))
    kwargs.update(report_to=list(train.report_to) or "none", run_name=run_name, project=project)
    return config_class(**kwargs)


def rows_per_pair(method: Method) -> int:
    """How many training rows one pair becomes for this method (KTO: a desirable and an undesirable one)."""
    return 2 if method.data == "unpaired" else 1


def autocast_dtype(precision: str, device: str) -> str:
    """The autocast dtype a trial computes in: bfloat16, float16 or none."""
    flags = _precision(precision, device)
    return "bfloat16" if flags["bf16"] else "float16" if flags["fp16"] else "none"


def posweep_fields(output_dir: str | Path, seed: int, precision: str, device: str) -> dict[str, Any]:
    """The TRL fields posweep sets for every trial (a recipe cannot override them: POSWEEP_TRL_FIELDS)."""
    return dict(
        output_dir=str(output_dir),
        seed=seed,
        data_seed=seed,
        report_to="none",
        disable_tqdm=True,
        save_strategy="no",
        eval_strategy="no",
        logging_nan_inf_filter=False,
        use_cpu=device == "cpu",
        **_precision(precision, device),
    )


def _precision(precision: str, device: str) -> dict[str, bool]:
    """TrainingArguments' bf16/fp16 flags (TRL turns bf16 on unless told otherwise, so both are explicit)."""
    if precision == "auto":
        cuda = device.startswith("cuda") and torch.cuda.is_available()
        precision = "bf16" if cuda and torch.cuda.is_bf16_supported() else "fp32"
    return {"bf16": precision == "bf16", "fp16": precision == "fp16"}


def _liger(wanted: bool, device: str) -> bool:
    """`train.use_liger_kernel`, once checked: Liger's kernels need a GPU and the liger-kernel package."""
    if wanted and not device.startswith("cuda"):
        raise UserError(
            f"train.use_liger_kernel: Liger's kernels run on GPUs, and this trial runs on {device}"
        )
    if wanted and importlib.util.find_spec("liger_kernel") is None:
        raise UserError("train.use_liger_kernel needs the liger-kernel package: pip install 'posweep[liger]'")
    return wanted
