"""Generation and teacher-forced log-probabilities for evaluation: decoding settings, responses, stops."""

from __future__ import annotations

import inspect
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass

import torch

from sweep.errors import UserError
from sweep.spec.recipe import EvalSpec


@dataclass(frozen=True)
class Decoding:
    """How responses are drawn."""

    max_new_tokens: int
    do_sample: bool
    temperature: float = 1.0
    top_p: float = 1.0

    @classmethod
    def of(cls, spec: EvalSpec) -> Decoding:
        """The decoding the recipe's eval section asks for."""
        return cls(spec.max_new_tokens, spec.do_sample, spec.temperature, spec.top_p)

    @property
    def samples_model(self) -> bool:
        """Whether responses are samples of the model's own distribution (usable to estimate KL)."""
        return self.do_sample and self.temperature == 1.0 and self.top_p == 1.0


@dataclass(frozen=True)
class Response:
    """Generated token ids, through the EOS when one was generated."""

    ids: tuple[int, ...]
    ended: bool

    @property
    def length(self) -> int:
        """Response tokens, the EOS not counted."""
        return len(self.ids) - int(self.ended)


def _base_model(model):
    """The transformers model under a PEFT wrapper (or the model itself)."""
    return model.get_base_model() if hasattr(model, "get_base_model") else model


def _device(model) -> torch.device:
    return next(model.parameters()).device


SENTINEL = "posweep-end-of-turn-probe"


def end_of_turn_ids(tokenizer) -> list[int]:
    """The special token the chat template closes an assistant turn with (Llama-3 <|eot_id|>, ChatML
    <|im_end|>, Gemma <end_of_turn>, Phi-3 <|end|>), found by rendering a turn; empty without a template."""
    if not tokenizer.chat_template:
        return []
    turn = [{"role": "user", "content": "hi"}, {"role": "assistant", "content": SENTINEL}]
    try:
        text = tokenizer.apply_chat_template(turn, tokenize=False)
    except Exception:  # a template that rejects this conversation (e.g. needs a system turn): no probe
        return []
    suffix = text.split(SENTINEL, 1)[1].lstrip() if SENTINEL in text else ""
    ids = tokenizer(suffix, add_special_tokens=False)["input_ids"] if suffix else []
    special = set(tokenizer.all_special_ids) | set(getattr(tokenizer, "added_tokens_decoder", {}))
    return ids[:1] if ids and ids[0] in special else []


def stop_ids(model, tokenizer) -> list[int]:
    """Token ids that end a response: the tokenizer's eos, the model's generation_config eos ids, and the
    chat template's end-of-turn token."""
    configured = getattr(_base_model(model).generation_config, "eos_token_id", None)
    candidates = [
        tokenizer.eos_token_id,
        *(configured if isinstance(configured, list) else [configured]),
        *end_of_turn_ids(tokenizer),
    ]
    ids = list(dict.fromkeys(token for token in candidates if token is not None))
    if not ids:
        raise UserError("the policy's tokenizer has no eos token, so responses could never end")
    return ids


@contextmanager
def _inference(model) -> Iterator[None]:
    """Eval mode and no gradients; the model's training mode is restored afterwards."""
    training = model.training
    model.eval()
    try:
        with torch.no_grad():
            yield
    finally:
        model.train(training)


@contextmanager
def _plain_generation_config(model) -> Iterator[None]:
    """Hide the model's generation_config so only the settings passed to `generate` apply."""
    from transformers import GenerationConfig

    base = _base_model(model)
    saved = base.generation_config
    base.generation_config = GenerationConfig()
    try:
        yield
    finally:
        base.generation_config = saved


def _left_padded(
    sequences: Sequence[Sequence[int]], pad_id: int, device
) -> tuple[torch.Tensor, torch.Tensor]:
    width = max(len(ids) for ids in sequences)
    input_ids = torch.full((len(sequences), width), pad_id, dtype=torch.long)
    attention_mask = torch.zeros((len(sequences), width), dtype=torch.long)
    for row, ids in enumerate(sequences):
        input_ids[row, width - len(ids) :] = torch.tensor(ids, dtype=torch.long)
        attention_mask[row, width - len(ids) :] = 1
    return input_ids.to(device), attention_mask.to(device)


def _cut(tokens: list[int], eos_ids: Sequence[int]) -> Response:
    for index, token in enumerate(tokens):
        if token in eos_ids:
            return Response(tuple(tokens[: index + 1]), True)
    return Response(tuple(tokens), False)


def generate(
    model,
    prompts: Sequence[Sequence[int]],
    samples: int,
    decoding: Decoding,
    batch_size: int,
    pad_id: int,
    eos_ids: Sequence[int],
    seed: int,
) -> list[Response]:
    """`samples` responses per prompt, prompt-major (greedy decoding generates once and repeats)."""
    from transformers import GenerationConfig

    draws = samples if decoding.do_sample else 1
    rows = [index for index in range(len(prompts)) for _ in range(draws)]
    order = sorted(range(len(rows)), key=lambda row: len(prompts[rows[row]]))
    sampling = {"temperature": decoding.temperature, "top_p": decoding.top_p, "top_k": 0}
    config = GenerationConfig(
        max_new_tokens=decoding.max_new_tokens,
        do_sample=decoding.do_sample,
        num_beams=1,
        use_cache=True,
        pad_token_id=pad_id,
        eos_token_id=list(eos_ids),
        **(sampling if decoding.do_sample else {}),
    )
    device = _device(model)
    responses: list[Response] = [Response((), False)] * len(rows)
    rng_devices = [device] if device.type == "cuda" else []
    with _inference(model), _plain_generation_config(model), torch.random.fork_rng(devices=rng_devices):
        torch.manual_seed(seed)
        for start in range(0, len(order), batch_size):
            batch = order[start : start + batch_size]
            input_ids, attention_mask = _left_padded([prompts[rows[row]] for row in batch], pad_id, device)
            output = model.generate(
                input_ids=input_ids, attention_mask=attention_mask, generation_config=config
            )
            for row, tokens in zip(batch, output[:, input_ids.shape[1] :].tolist(), strict=True):
                responses[row] = _cut(tokens, eos_ids)
    return [response for response in responses for _ in range(samples // draws)]


def _plain_head(base):
    """The output layer when logits are a plain linear map of the last hidden state, else None."""
    head = base.get_output_embeddings()
    config = base.config.get_text_config()
    scaled = any(getattr(config, name, None) for name in ("final_logit_softcapping", "logit_scale"))
    return head if isinstance(head, torch.nn.Linear) and not scaled else None


def _next_token_logps(model, input_ids, attention_mask, kept: int) -> torch.Tensor:
    """float32 log-softmax of the next-token distributions at the last `kept` positions before the end.

    The body may run in bf16; the output layer and the log-softmax run in float32.
    """
    base = _base_model(model)
    position_ids = (attention_mask.cumsum(-1) - 1).clamp(min=0)
    inputs = {"input_ids": input_ids, "attention_mask": attention_mask, "position_ids": position_ids}
    head = _plain_head(base)
    if head is None:
        keeps_logits = "logits_to_keep" in inspect.signature(base.forward).parameters
        extra = {"logits_to_keep": kept + 1} if keeps_logits else {}
        logits = model(**inputs, **extra).logits[:, -(kept + 1) : -1].float()
    else:
        hidden = base.get_decoder()(**inputs).last_hidden_state[:, -(kept + 1) : -1]
        bias = None if head.bias is None else head.bias.float()
        logits = torch.nn.functional.linear(hidden.float(), head.weight.float(), bias)
    return logits.log_softmax(-1)


def _batches(prompts, responses, batch_size: int, pad_id: int, device):
    """Left-padded (prompt + response) batches: rows, input ids, mask, response width, response-token mask."""
    order = sorted(range(len(responses)), key=lambda row: len(prompts[row]) + len(responses[row].ids))
    for start in range(0, len(order), batch_size):
        batch = order[start : start + batch_size]
        kept = max(len(responses[row].ids) for row in batch)
        sequences = [[*prompts[row], *responses[row].ids] for row in batch]
        input_ids, attention_mask = _left_padded(sequences, pad_id, device)
        lengths = torch.tensor([len(responses[row].ids) for row in batch], device=device)
        scored = torch.arange(kept, device=device)[None, :] >= (kept - lengths)[:, None]
        yield batch, input_ids, attention_mask, kept, scored


def sequence_logps(
    model, prompts: Sequence[Sequence[int]], responses: Sequence[Response], batch_size: int, pad_id: int
) -> list[float]:
    """log π(response | prompt) of each pair: a teacher-forced pass, summed over the response tokens."""
    totals = [0.0] * len(responses)
    with _inference(model):
        for batch, input_ids, attention_mask, kept, scored in _batches(
            prompts, responses, batch_size, pad_id, _device(model)
        ):
            logps = _next_token_logps(model, input_ids, attention_mask, kept)
            logps = logps.gather(-1, input_ids[:, -kept:, None]).squeeze(-1)
            for row, total in zip(batch, torch.where(scored, logps, 0.0).sum(-1).tolist(), strict=True):
                totals[row] = total
    return totals


@dataclass(frozen=True)
class TeacherForced:
    """One sampled response under the policy and the SFT model: both log-probabilities, and the exact
    next-token KL(π‖π_SFT) summed along it (every response position, the stop token's included)."""

    logp_policy: float
    logp_sft: float
    kl_exact: float


def teacher_forced_kl(
    policy,
    sft,
    prompts: Sequence[Sequence[int]],
    responses: Sequence[Response],
    batch_size: int,
    pad_id: int,
) -> list[TeacherForced]:
    """Both models' teacher-forced passes over the same responses, batch by batch.

    Σ_t KL(π(·|x, y<t) ‖ π_SFT(·|x, y<t)) along y ~ π has expectation KL(π‖π_SFT) over whole responses
    (the chain rule), with far less variance than log π(y|x) − log π_SFT(y|x).
    """
    results: list[TeacherForced | None] = [None] * len(responses)
    with _inference(policy), _inference(sft):
        for batch, input_ids, attention_mask, kept, scored in _batches(
            prompts, responses, batch_size, pad_id, _device(policy)
        ):
            policy_logps = _next_token_logps(policy, input_ids, attention_mask, kept)
            sft_logps = _next_token_logps(
                sft, input_ids.to(_device(sft)), attention_mask.to(_device(sft)), kept
            )
            sft_logps = sft_logps.to(policy_logps.device)
            kl = torch.stack([(p.exp() * (p - q)).sum(-1) for p, q in zip(policy_logps, sft_logps)])
            targets = input_ids[:, -kept:, None]
            chosen = [logps.gather(-1, targets).squeeze(-1) for logps in (policy_logps, sft_logps)]
            sums = [torch.where(scored, values, 0.0).sum(-1).tolist() for values in (*chosen, kl)]
            for row, lp, ls, k in zip(batch, *sums, strict=True):
                results[row] = TeacherForced(lp, ls, k)
    return results
