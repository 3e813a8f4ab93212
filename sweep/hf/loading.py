"""Loading models and tokenizers (one pad-token fallback), devices and dtypes, registry import strings."""

from __future__ import annotations

import importlib
import os
from typing import Any

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from sweep.errors import UserError
from sweep.io import first_line
from sweep.spec.recipe import ModelSpec

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def load_object(path: str):
    """The object named by a registry import string 'module:Name' (trl.experimental imported quietly)."""
    os.environ.setdefault("TRL_EXPERIMENTAL_SILENCE", "1")
    module, _, name = path.partition(":")
    return getattr(importlib.import_module(module), name)


def with_pad_token(tokenizer, name: str):
    """`tokenizer` with a pad token (its own, else eos); a UserError naming `name` when it has neither."""
    if tokenizer.pad_token is None:
        if tokenizer.eos_token is None:
            raise UserError(f"the tokenizer of {name!r} has neither a pad token nor an eos token")
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def load_policy_tokenizer(spec: ModelSpec, path: str, same_repo: bool):
    """The policy's tokenizer (the model's revision applies when it comes from the model's repository)."""
    tokenizer = AutoTokenizer.from_pretrained(
        path, revision=spec.revision if same_repo else None, trust_remote_code=spec.trust_remote_code
    )
    return with_pad_token(tokenizer, path)


def load_policy(spec: ModelSpec, path: str):
    """The policy (SFT) model in the recipe's dtype."""
    dtype = "auto" if spec.dtype == "auto" else DTYPES[spec.dtype]
    return AutoModelForCausalLM.from_pretrained(
        path, revision=spec.revision, dtype=dtype, trust_remote_code=spec.trust_remote_code
    )


def judge_device(name: str, default: str | torch.device | None) -> torch.device:
    """`auto` is the worker's device (or cuda when available, else cpu); anything else as given."""
    if name == "auto":
        if default is not None:
            return torch.device(default)
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise UserError(f"device {name!r} requested but CUDA is not available")
    return device


def judge_dtype(name: str, device: torch.device) -> torch.dtype:
    """`auto` is bfloat16 on a GPU that supports it, else float32; anything else as given."""
    if name != "auto":
        return getattr(torch, name)
    if device.type == "cuda" and torch.cuda.is_bf16_supported():
        return torch.bfloat16
    return torch.float32


def reset_cuda_peak() -> None:
    """Start measuring this process's peak GPU memory anew (nothing without CUDA)."""
    if torch.cuda.is_available():
        torch.cuda.reset_peak_memory_stats()


def cuda_memory() -> dict[str, float]:
    """GPU memory (MiB) this process holds now and at most since `reset_cuda_peak`; {} without CUDA."""
    if not torch.cuda.is_available():
        return {}
    return {
        "cuda_mb": round(torch.cuda.memory_allocated() / 2**20, 1),
        "cuda_peak_mb": round(torch.cuda.max_memory_allocated() / 2**20, 1),
    }


def load_tokenizer(name: str, trust_remote_code: bool = False):
    """A tokenizer (directory or Hub id) with a pad token (eos if it has none); UserError if it fails."""
    try:
        tokenizer = AutoTokenizer.from_pretrained(name, trust_remote_code=trust_remote_code)
    except (OSError, ValueError) as error:
        reason = first_line(error)
        raise UserError(f"cannot load the tokenizer of {name!r}: {reason}") from None
    return with_pad_token(tokenizer, name)


def resolve_device(name: str | Any):
    """`auto` is cuda when available, else cpu; anything else as given (cuda must be available)."""
    return judge_device(name, None) if isinstance(name, str) else name


def load_causal_lm(name: str, device: str | Any):
    """A causal LM (directory or Hub id; no remote code) on `device`, in eval mode."""
    target = resolve_device(device)
    try:
        model = AutoModelForCausalLM.from_pretrained(
            name, dtype=judge_dtype("auto", target), trust_remote_code=False
        )
    except (OSError, ValueError) as error:
        message = first_line(error)
        raise UserError(f"cannot load model {name!r}: {message}") from None
    return model.to(target).eval()
