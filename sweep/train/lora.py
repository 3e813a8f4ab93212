"""LoRA trials: the peft config, and the trust-region reference update of a LoRA policy.

A fixed-reference LoRA trial needs no reference copy: TRL computes the reference with the adapters
disabled (or posweep feeds it the shared reference cache, computed with the same base weights). TRL does
not sync a moving (TR-*) reference with a peft policy, so posweep does it itself: every tau steps the
reference, a full float32 copy, takes alpha of the policy's float32 effective weights (base plus the
adapters' delta), so a small delta on a bf16 base is not rounded away.
"""

from __future__ import annotations

import torch
from transformers import TrainerCallback

from sweep.errors import UserError
from sweep.spec.recipe import LoraSpec


def lora_config(spec: LoraSpec):
    """The peft LoraConfig of `model.lora` (a UserError when peft is not installed)."""
    try:
        from peft import LoraConfig
    except ImportError:
        raise UserError("model.lora needs the peft package: pip install peft (or posweep[lora])") from None
    return LoraConfig(
        r=spec.r,
        lora_alpha=spec.alpha,
        lora_dropout=spec.dropout,
        target_modules=spec.target_modules,
        task_type="CAUSAL_LM",
    )


def effective_weights(peft_model) -> dict[str, torch.Tensor]:
    """The weights a peft model computes with, in float32, named as in its base model: the base weights
    plus the active adapters' scaled product B·A (peft keeps the adapters in float32)."""
    from peft.tuners.lora import LoraLayer

    base = peft_model.get_base_model()
    deltas: dict[str, torch.Tensor] = {}
    for name, module in base.named_modules():
        if isinstance(module, LoraLayer):
            for adapter in module.active_adapters:
                key, delta = f"{name}.weight", module.get_delta_weight(adapter)
                deltas[key] = deltas[key] + delta if key in deltas else delta
    weights = {}
    for name, parameter in base.named_parameters():
        if "lora_" in name:
            continue
        key = name.replace(".base_layer.", ".")
        weights[key] = parameter.float() + deltas[key].float() if key in deltas else parameter.float()
    return weights


class LoraReferenceSync(TrainerCallback):
    """TR-* for a LoRA policy: every `every` steps, reference <- alpha * policy + (1 - alpha) * reference.

    The reference is float32 (`numerics.moving_reference`) and mixes the policy's float32 effective weights
    with `lerp`, which is exact at both ends: alpha 1 copies the policy's weights, and a policy equal to the
    reference (no adapter delta yet) leaves it bit-identical.
    """

    def __init__(self, reference, alpha: float, every: int):
        self.reference, self.alpha, self.every = reference, alpha, every

    def on_step_end(self, args, state, control, model=None, **kwargs):
        if state.global_step % self.every:
            return
        with torch.no_grad():
            weights = effective_weights(model)
            for name, target in self.reference.named_parameters():
                target.lerp_(weights[name].to(target.device), self.alpha)


def reference_sync(config, reference) -> LoraReferenceSync | None:
    """The TR-* reference update of a LoRA trial (TRL's own, which refuses a peft policy, is turned off)."""
    if not getattr(config, "sync_ref_model", False):
        return None
    config.sync_ref_model = False
    return LoraReferenceSync(reference, config.ref_model_mixup_alpha, config.ref_model_sync_steps)
