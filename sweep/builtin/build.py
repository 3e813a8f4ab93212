"""Build and cache the built-in `toy` benchmark: data files, tokenizer, SFT policy and reward-model judge.

Everything is made offline from `BuildSettings` (the task itself is described in `sweep.builtin.toy`):

- a word-level tokenizer over the task's vocabulary, made with `tokenizers` and saved as an ordinary
  `PreTrainedTokenizerFast` directory (pad, bos, eos and unk tokens; every text starts with bos);
- the SFT policy: a small Llama built from `LlamaConfig`, trained from scratch with TRL's `SFTTrainer` on
  the demonstrations. Its initial embeddings give each topic's name and words a shared random direction,
  a stand-in for the word knowledge a pretrained model brings (without it a model this small needs many
  more steps to tie words to topics);
- the judge: a one-output sequence classifier started from the SFT backbone and trained on the judge's own
  preference pairs (never seen by trials) with `sweep.tools.rm.train_reward_model`. Its `posweep_rm.json`
  holds its held-out pairwise accuracy and how often it orders fresh response pairs as the gold reward
  does, on training-style prompts (`gold_agreement`) and on evaluation-style prompts (`gold_agreement_ood`).

A build lives in `<cache_dir>/builtin/toy-<key>/` (data/, sft/, rm/, build.json). The key hashes the
settings, the builder's source and the versions of posweep, torch, transformers and trl, so the build is
redone only when one of them changes. It is built under a file lock into a temporary directory that is
renamed into place when complete: concurrent processes build it once, an interrupted build leaves nothing.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import random
import shutil
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from functools import partial
from importlib.util import find_spec
from pathlib import Path

from sweep import io
from sweep.builtin import toy
from sweep.io import file_lock, read_json, utc_now, write_json, write_jsonl

SPECIAL_TOKENS = {"pad_token": "<pad>", "bos_token": "<bos>", "eos_token": "<eos>", "unk_token": "<unk>"}
SOURCES = ("sweep.builtin.toy", "sweep.builtin.build", "sweep.tools.rm")


@dataclass(frozen=True)
class BuildSettings:
    """Task, model size and training settings of a build; every field is part of the cache key."""

    task: toy.ToySettings = field(default_factory=toy.ToySettings)
    """The synthetic task."""
    hidden_size: int = 64
    """Width of the Llama-style policy (and of the judge, which starts from it)."""
    num_layers: int = 2
    """Transformer layers."""
    num_heads: int = 4
    """Attention heads."""
    intermediate_size: int = 192
    """Width of the MLP blocks."""
    topic_prior: float = 0.05
    """Scale of the random direction per topic added to the initial embeddings of its name and words."""
    max_length: int = 96
    """Longest tokenized prompt + response, in tokens."""
    sft_epochs: float = 3.0
    """Passes over the SFT demonstrations."""
    sft_learning_rate: float = 3e-3
    """SFT learning rate (AdamW, linear decay)."""
    sft_batch_size: int = 32
    """SFT batch size."""
    rm_epochs: float = 3.0
    """Passes over the judge's training pairs."""
    rm_learning_rate: float = 1e-3
    """Judge learning rate."""
    rm_batch_size: int = 32
    """Judge batch size, in pairs."""
    rm_eval_fraction: float = 0.125
    """Fraction of the judge's pairs held out to measure its accuracy."""
    n_gold_pairs: int = 512
    """Fresh response pairs per prompt kind on which the judge is compared with the gold reward."""


DEFAULT = BuildSettings()


def package_versions() -> dict[str, str]:
    """Versions of the packages that shape the built files."""
    return io.package_versions("posweep", "torch", "transformers", "trl")


def cache_key(settings: BuildSettings) -> str:
    """A short hash of the settings, the builder's source and `package_versions()`."""
    digest = hashlib.sha256(json.dumps([asdict(settings), package_versions()], sort_keys=True).encode())
    for module in SOURCES:
        digest.update(Path(find_spec(module).origin).read_bytes())
    return digest.hexdigest()[:12]


def build_dir(cache_dir: str | Path, settings: BuildSettings) -> Path:
    """Where the build for `settings` lives (or will live) under `cache_dir`."""
    return Path(cache_dir) / "builtin" / f"toy-{cache_key(settings)}"


def ensure_built(
    cache_dir: str | Path,
    settings: BuildSettings | None = None,
    log: Callable[[str], None] = partial(print, file=sys.stderr),
) -> Path:
    """The build directory for `settings` (default `DEFAULT`), building it first if it does not exist."""
    settings = settings or DEFAULT
    target = build_dir(cache_dir, settings)
    if target.is_dir():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    with file_lock(target.with_suffix(".lock")):
        if target.is_dir():  # another process built it while we waited for the lock
            return target
        log(
            "building builtin:toy once (synthetic data, tokenizer, SFT policy, reward-model judge; "
            f"under a minute on 2 CPU cores) into {target}"
        )
        with io.atomic_dir(target) as staging:
            _build(staging, settings, log)
    return target


@contextlib.contextmanager
def _quiet_and_single_threaded() -> Iterator[None]:
    """No progress bars, and one torch thread: more threads only contend on models this small (measured:
    a training step 6x slower with 2 threads than with 1 on 2 busy cores)."""
    import torch

    from sweep.hf.quiet import no_progress_bars

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        with no_progress_bars():
            yield
    finally:
        torch.set_num_threads(threads)


def _build(out: Path, settings: BuildSettings, log: Callable[[str], None]) -> None:
    started = time.perf_counter()
    data = toy.make_task(settings.task)
    for name, rows in data.items():
        write_jsonl(out / "data" / f"{name}.jsonl", rows)
    with _quiet_and_single_threaded():
        train_sft(data["sft"], build_tokenizer(), out / "sft", settings, log)
        judge = _train_judge(data["rm"], out / "sft", out / "rm", settings, log)
    seconds = time.perf_counter() - started
    write_json(
        out / "build.json",
        {
            "name": "builtin:toy",
            "key": cache_key(settings),
            "settings": asdict(settings),
            "created": utc_now(),
            "time_s": round(seconds, 1),
            "rows": {name: len(rows) for name, rows in data.items()},
            "versions": package_versions(),
        },
    )
    log(
        f"built builtin:toy in {seconds:.0f} s; judge held-out accuracy {judge['heldout_accuracy']:.2f}, "
        f"agreement with the gold reward {judge['gold_agreement']:.2f} "
        f"({judge['gold_agreement_ood']:.2f} on evaluation-style prompts)"
    )


def build_tokenizer():
    """A word-level `PreTrainedTokenizerFast` over the task's vocabulary; every text starts with bos."""
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    words = list(SPECIAL_TOKENS.values()) + toy.vocabulary()
    bos = SPECIAL_TOKENS["bos_token"]
    backend = Tokenizer(models.WordLevel({word: i for i, word in enumerate(words)}, unk_token="<unk>"))
    backend.normalizer = normalizers.Lowercase()
    backend.pre_tokenizer = pre_tokenizers.Whitespace()
    backend.post_processor = processors.TemplateProcessing(
        single=f"{bos} $A", special_tokens=[(bos, words.index(bos))]
    )
    return PreTrainedTokenizerFast(tokenizer_object=backend, model_max_length=256, **SPECIAL_TOKENS)


def train_sft(
    rows: list[dict], tokenizer, out: Path, settings: BuildSettings, log: Callable[[str], None]
) -> None:
    """Train a small Llama from scratch on (prompt, completion) rows with TRL's SFTTrainer; save in `out`."""
    import torch
    from datasets import Dataset
    from transformers import LlamaConfig, LlamaForCausalLM
    from trl import SFTConfig, SFTTrainer

    from sweep.hf.quiet import QUIET_ARGS, quiet_trainer

    torch.manual_seed(settings.task.seed)
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=settings.hidden_size,
        intermediate_size=settings.intermediate_size,
        num_hidden_layers=settings.num_layers,
        num_attention_heads=settings.num_heads,
        num_key_value_heads=settings.num_heads,
        max_position_embeddings=tokenizer.model_max_length,
        tie_word_embeddings=True,
        pad_token_id=tokenizer.pad_token_id,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
    )
    model = LlamaForCausalLM(config)
    _add_topic_prior(model.get_input_embeddings().weight.data, tokenizer, settings.topic_prior)
    args = SFTConfig(
        output_dir=str(out.with_name(f"{out.name}-trainer")),
        num_train_epochs=settings.sft_epochs,
        learning_rate=settings.sft_learning_rate,
        per_device_train_batch_size=settings.sft_batch_size,
        max_length=settings.max_length,
        seed=settings.task.seed,
        bf16=False,
        activation_checkpointing=False,
        dataloader_pin_memory=False,
        **QUIET_ARGS,
    )
    log(f"training the SFT policy on {len(rows)} demonstrations")
    trainer = SFTTrainer(
        model=model, args=args, train_dataset=Dataset.from_list(rows), processing_class=tokenizer
    )
    quiet_trainer(trainer, "SFT policy", log).train()
    shutil.rmtree(args.output_dir, ignore_errors=True)
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)


def _add_topic_prior(embeddings, tokenizer, scale: float) -> None:
    """Give each topic's name and words a shared random direction in embedding space."""
    import torch

    for topic, words in toy.TOPICS.items():
        embeddings[tokenizer.convert_tokens_to_ids([topic, *words])] += (
            torch.randn(embeddings.shape[1]) * scale
        )


def _train_judge(rows: list[dict], sft_dir: Path, out: Path, settings: BuildSettings, log) -> dict:
    """Train the judge from the SFT backbone, then record its agreement with the gold reward."""
    from datasets import Dataset
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    from sweep.tools import rm

    rm.train_reward_model(
        Dataset.from_list(rows),
        str(sft_dir),
        out,
        eval_fraction=settings.rm_eval_fraction,
        epochs=settings.rm_epochs,
        learning_rate=settings.rm_learning_rate,
        batch_size=settings.rm_batch_size,
        max_length=settings.max_length,
        seed=settings.task.seed,
        log=log,
    )
    model = AutoModelForSequenceClassification.from_pretrained(out)
    tokenizer = AutoTokenizer.from_pretrained(out)
    summary = {**read_json(out / rm.SUMMARY_FILE), "base_model": "builtin:toy", "tokenizer": "builtin:toy"}
    for key, prompt_kind in (("gold_agreement", toy.train_prompt), ("gold_agreement_ood", toy.eval_prompt)):
        rng = random.Random(f"posweep-toy-{settings.task.seed}-{key}")
        prompts = [prompt_kind(rng) for _ in range(settings.n_gold_pairs)]
        firsts = [toy.varied_response(rng, prompt) for prompt in prompts]
        seconds = [toy.varied_response(rng, prompt) for prompt in prompts]
        gold = zip(toy.gold_reward(prompts, firsts), toy.gold_reward(prompts, seconds), strict=True)
        judged = zip(
            rm.score(model, tokenizer, prompts, firsts), rm.score(model, tokenizer, prompts, seconds)
        )
        votes = [(g1 > g2) == (j1 > j2) for (g1, g2), (j1, j2) in zip(gold, judged, strict=True) if g1 != g2]
        summary[key] = sum(votes) / len(votes)
    summary["n_gold_pairs"] = settings.n_gold_pairs
    write_json(out / rm.SUMMARY_FILE, summary)
    return summary
