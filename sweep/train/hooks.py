"""Every place posweep relies on TRL, accelerate or datasets internals, each with a contract test.

- `shared_trainer_class`: TRL trainers whose data preparation (DPO/KTO `_prepare_dataset`, CPO/ORPO
  `tokenize_row`) is served by a `SharedTraining` cache while `serving(shared)` is active; there CPO/ORPO
  rows are tokenized as DPO tokenizes them (no BOS or EOS of their own: `cpo_row`);
- `reference_logps`: a fixed reference model's log-probabilities computed as TRL's training step computes
  them (its collator, its fused LM head, its autocast, KTO's `compute_ref_log_probs`);
- `use_precomputed_reference`: hand those values to a built trainer as TRL's precomputed reference columns;
- `restore_forward`: undo the `forward` patches TRL and accelerate leave on a trained model;
- `restore_lora_dropout`: give the LoRA layers back the dropout TRL's `disable_dropout` zeroed;
- `gathered_policy`: a trained policy's full weights when FSDP or DeepSpeed ZeRO-3 sharded them over ranks;
- `dataset_fingerprint`: the `datasets` fingerprint of a dataset (memo key of content hashes).

tests/test_hooks.py checks each assumption against the installed versions and fails loudly when one changes.
"""

from __future__ import annotations

import contextlib
import contextvars
import copy
import inspect
import json
from collections.abc import Iterator, Mapping
from typing import Any

import datasets
import torch

from sweep.hf.formats import pair_token_ids

PREPARE_PARAMETERS = ("dataset", "processing_class", "args", "dataset_name")
TOKENIZE_ROW_PARAMETERS = ("feature", "model")
CPO_ROW_KEYS = (
    "prompt_input_ids", "prompt_attention_mask", "chosen_input_ids", "chosen_attention_mask", "chosen_labels",
    "rejected_input_ids", "rejected_attention_mask", "rejected_labels",
)  # fmt: skip
_SERVING: contextvars.ContextVar[Any] = contextvars.ContextVar("serving", default=None)
_TEMPLATED: contextvars.ContextVar[bool] = contextvars.ContextVar("templated", default=False)


@contextlib.contextmanager
def serving(shared, conversational: bool = False) -> Iterator[None]:
    """Serve the data preparation of the trainers built inside this block from `shared` (a SharedTraining);
    `conversational`: the data are conversations (CPO/ORPO see them rendered by the chat template)."""
    tokens = _SERVING.set(shared), _TEMPLATED.set(conversational)
    try:
        yield
    finally:
        _SERVING.reset(tokens[0])
        _TEMPLATED.reset(tokens[1])


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
    """CPO/ORPO's `tokenize_row` as DPO tokenizes (`cpo_row`), done once per distinct row and setup."""
    base, shared = type(self).posweep_base, _SERVING.get()
    if shared is None or model is not None or self.is_encoder_decoder:
        return base.tokenize_row(self, feature, model)
    templated = _TEMPLATED.get()
    if "posweep_rows_key" not in vars(self):
        setup = {name: getattr(self, name, None) for name in ("max_length", "padding_value")}
        trainer = f"{base.__module__}.{base.__qualname__}"
        self.posweep_rows_key = shared.key("rows", trainer=trainer, templated=templated, **setup)
    memo = shared.rows(self.posweep_rows_key)
    row = json.dumps([feature["prompt"], feature["chosen"], feature["rejected"]], default=str)
    if row not in memo:
        memo[row] = cpo_row(self.processing_class, feature, self.max_length, templated)
    return dict(memo[row])


def cpo_row(tokenizer, feature: Mapping[str, str], max_length: int | None, templated: bool) -> dict:
    """A CPO/ORPO training row (TRL's `tokenize_row` keys) with DPO's tokens: the prompt as DPO and evaluation
    tokenize it, no extra BOS, no EOS after a chat template's end of turn; completions cut at `max_length`."""
    prompt, *completions = pair_token_ids(tokenizer, dict(feature), templated=templated)
    row = {"prompt_input_ids": prompt, "prompt_attention_mask": [1] * len(prompt)}
    for side, completion in zip(("chosen", "rejected"), completions, strict=True):
        if max_length is not None:
            completion = completion[: max(0, max_length - len(prompt))]
        row[f"{side}_input_ids"] = prompt + completion
        row[f"{side}_attention_mask"] = [1] * (len(prompt) + len(completion))
        row[f"{side}_labels"] = [-100] * len(prompt) + completion
    return row


def _has_parameters(base: type, method: str, names: tuple[str, ...]) -> bool:
    """Whether `base.method` exists and takes exactly these parameters after self (the hook's contract)."""
    function = getattr(base, method, None)
    if function is None:
        return False
    return tuple(inspect.signature(function).parameters)[1:] == names


def dataset_fingerprint(dataset: datasets.Dataset) -> str:
    """The fingerprint `datasets` gives a dataset (changes with every transform)."""
    return dataset._fingerprint


def data_key(trainer) -> str | None:
    """The SharedTraining key of the data a shared trainer was built with (None when not served)."""
    return getattr(trainer, "posweep_data_key", None)


def computes_own_reference(trainer) -> bool:
    """Whether the trainer was asked to precompute reference log-probs itself (TRL's own precompute)."""
    return bool(getattr(trainer, "precompute_ref_logps", False))


def precision_flags(trainer) -> dict[str, bool]:
    """The bf16/fp16 flags the trainer trains with."""
    return {"bf16": trainer.args.bf16, "fp16": trainer.args.fp16}


def reference_logps(trainer, model, batch_size: int, paired: bool) -> dict[str, torch.Tensor]:
    """The fixed reference model's log-probabilities of every example of `trainer.train_dataset`.

    Computed as TRL computes them in a training step (its collator, its fused LM head, its autocast). Paired
    data give, for chosen and rejected, the completion's total and the parts LD-DPO weighs (the tokens within
    the shorter completion's length, and the tail past it), so one pass serves every `ld_alpha`; unpaired
    (KTO) data give TRL's own `ref_logps` and `ref_KL_logps`. A model TRL did not patch gets TRL's fused LM
    head as TRL gives its reference model (`restore_forward` removes it).
    """
    if "forward" not in vars(model):  # not handed to TRL as its ref_model (a LoRA trial's SFT model)
        from trl.trainer.utils import add_fused_lm_head

        add_fused_lm_head(model)
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


def use_precomputed_reference(trainer, columns: Mapping[str, torch.Tensor]) -> None:
    """Give a built TRL trainer precomputed reference columns, so its steps run no reference forward pass."""
    data = trainer.train_dataset
    for name, column in columns.items():
        data = data.add_column(name, column.tolist())
    trainer.train_dataset = data
    trainer.precompute_ref_logps = True
    trainer.ref_model = None


def ld_alpha(trainer) -> float | None:
    """The LD-DPO weight the trainer applies (None when it has none)."""
    return getattr(trainer, "ld_alpha", None)


def restore_forward(model) -> None:
    """Undo the `forward` patches TRL (fused LM head) and accelerate (autocast) put on a trained model."""
    for module in {model, model.get_base_model() if hasattr(model, "get_base_model") else model}:
        vars(module).pop("forward", None)
        vars(module).pop("_original_forward", None)


def restore_lora_dropout(model, p: float) -> int:
    """Set the dropout of every LoRA layer of a built trainer's peft `model` back to `p`; return how many.

    TRL's preference trainers (`disable_dropout=True`) set every `nn.Dropout` of the policy to 0, LoRA's
    `lora_dropout` modules included, so `model.lora.dropout` would do nothing; the base model's own dropout
    stays off. peft makes `lora_dropout[adapter]` an `nn.Dropout` when the dropout is above 0.
    """
    count = 0
    for module in model.modules():
        for dropout in getattr(module, "lora_dropout", {}).values():
            if isinstance(dropout, torch.nn.Dropout):
                dropout.p = p
                count += 1
    return count


def gathered_policy(trainer, like):
    """The trained policy with all its weights in this process, for evaluation and saving.

    FSDP and DeepSpeed ZeRO-3 shard the weights over the trial's ranks: every rank then takes part in
    gathering them (accelerate's `get_state_dict`; ZeRO-3 gives them in 16 bits), and rank 0 loads them into
    a float32 copy of `like` (the SFT model, same architecture). Unsharded, and on other ranks: as trained.
    """
    accelerator = trainer.accelerator
    plugin = getattr(accelerator.state, "deepspeed_plugin", None)
    if not (trainer.is_fsdp_enabled or (plugin is not None and plugin.zero_stage == 3)):
        return trainer.model
    state = accelerator.get_state_dict(trainer.model_wrapped)
    if not accelerator.is_main_process:
        return trainer.model
    full = copy.deepcopy(like).float()
    full.load_state_dict(state)
    return full
