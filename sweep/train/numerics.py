"""A trial's numerics: master-weight dtype, planned optimizer steps, divergence, what metrics.json records."""

from __future__ import annotations

import copy
import math

import torch

from sweep.spec.methods import Method
from sweep.spec.recipe import TrainSpec
from sweep.train.config import autocast_dtype, rows_per_pair


def master_dtype(checkpoint: torch.dtype, train: TrainSpec, lora: bool) -> torch.dtype:
    """The dtype a trial's policy holds its weights in, and so the dtype of every copy that must compute as
    the policy does: the SFT starting point, the fixed reference (and its shared log-prob cache) and the SFT
    side of evaluation. One numerics for all of them: an untrained policy is its reference to the bit.

    AdamW on bf16/fp16 weights rounds small updates away, so full fine-tuning keeps fp32 master weights
    and computes in the autocast dtype `train.precision` asks for; `train.pure_bf16` keeps the checkpoint's
    dtype (lossy). LoRA keeps the frozen base in its dtype (peft keeps the adapters in fp32).
    """
    return checkpoint if (lora or train.pure_bf16) else torch.float32


def moving_reference(sft, lora: bool):
    """A TR-* trial's reference, updated from the policy every tau steps: a copy of the SFT model in the
    policy's dtype; in float32 for a LoRA policy (whose frozen base may be bf16), so that the update mixes
    float32 effective weights and keeps small policy deltas (`sweep.train.lora`)."""
    reference = copy.deepcopy(sft)
    return reference.float() if lora else reference


def planned_steps(train: TrainSpec, pairs: int) -> int:
    """The optimizer steps a trial takes over `pairs` training pairs (every method takes the same)."""
    if train.max_steps:
        return train.max_steps
    batches = math.ceil(pairs / train.per_device_train_batch_size)
    return max(1, math.ceil(train.num_train_epochs * math.ceil(batches / train.gradient_accumulation_steps)))


def trust_region_note(method: Method, fields: dict, steps: int) -> str | None:
    """Why a TR-* trial is plain DPO (tau >= its steps: the reference never moves), or None."""
    if method.reference != "moving" or fields["ref_model_sync_steps"] < steps:
        return None
    return (
        f"tau ({fields['ref_model_sync_steps']}) >= the trial's {steps} optimizer steps: the reference is "
        f"never updated, so this trial is {method.name.removeprefix('tr-')} with a fixed reference"
    )


def training_record(policy, train: TrainSpec, method: Method, device: str, steps: int) -> dict:
    """What metrics.json's `train` records about a trial's numerics and the examples it saw."""
    trainable = [p for p in policy.parameters() if p.requires_grad] or list(policy.parameters())
    batch = train.per_device_train_batch_size * train.gradient_accumulation_steps
    rows = rows_per_pair(method)
    return {
        "param_dtype": str(trainable[0].dtype).removeprefix("torch."),
        "autocast_dtype": autocast_dtype(train.precision, device),
        "examples_seen": steps * batch * rows,
        "pairs_seen": steps * batch,
    }


def first_nonfinite_parameter(model) -> str | None:
    """The name of the first parameter holding a NaN or an infinity, or None when all are finite."""
    with torch.no_grad():
        for name, parameter in model.named_parameters():
            if not torch.isfinite(parameter).all():
                return name
    return None


def divergence(diverged_at: int | None, last_loss: float | None, mean_loss: float, policy) -> dict | None:
    """Why a trained policy diverged, or None: a non-finite loss at a logged step or at any step (the mean
    of every step's loss is then non-finite: TRL's NaN filter is off), or non-finite weights after it."""
    if diverged_at is not None:
        message = f"the training loss became {last_loss} at step {diverged_at}"
        return {"type": "NonFiniteLoss", "message": message, "reason": "nan_loss"}
    if not math.isfinite(mean_loss):
        message = f"the mean training loss over all steps is {mean_loss} (a step between logs was not finite)"
        return {"type": "NonFiniteLoss", "message": message, "reason": "nan_loss"}
    name = first_nonfinite_parameter(policy)
    if name is not None:
        message = f"parameter {name} holds NaN or inf after training"
        return {"type": "NonFiniteWeights", "message": message, "reason": "nan_weights"}
    return None
