"""`make gpu-smoke`: a real posweep sweep on one GPU, offline, with its training MFU, throughput and memory.

    python benchmarks/gpu_smoke.py [--cpu] [--tiny] [--workdir DIR] [--json PATH] [--peak-tflops X]
                                   [--pairs N] [--prompts N] [--new-tokens N] [--max-length N]

It builds everything it needs in --workdir (default a temporary folder): a BPE tokenizer trained on synthetic
text with a ChatML chat template, a Qwen2-architecture policy of about 0.5B parameters (random weights,
saved in bf16 like a Hub checkpoint), a small Qwen2 reward-model judge, conversational preference pairs
with prompts of 256-512 tokens, each pair filling --max-length tokens, and evaluation prompts. It writes a
recipe (dpo, ln-dpo, simpo and kto, one trial each; fp32 master weights with `train.precision: auto`, bf16
autocast on a GPU) and runs it with `run_sweep`, the function `posweep run` calls, in this process (one
GPU, one worker). Then it reads the results folder through sweep/results.py and prints, per trial and in
total: training tokens/s (the pairs' prompt+completion tokens, chosen and rejected, over `time_s.train`;
the shared reference pass is timed apart), MFU (6·N·tokens / train time / the GPU's dense bf16 peak, N the
parameters less the input embedding; attention's own FLOPs and KTO's no-grad KL-term pass are not counted,
so MFU errs low), peak GPU memory, generation tokens/s of the policy and of the SFT
baseline (the baseline's time includes its judging), judge throughput (pairs actually scored, i.e. not
reused as an SFT response, per second of `time_s.judge`) and the evaluation share of the trial's wall
time ((generate + judge + kl) / total). It checks that the GPU memory each trial leaves behind stays
within ±5% of what the first one left (the worker's steady state: SFT model, judge, evaluator), and exits
1 when a trial did not complete or the memory check fails.

`--cpu --tiny` runs the same path on the CPU with a tiny model; GPU-only figures read "not measured: no GPU".
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
METHODS = {
    "dpo": {"beta": [0.1]},
    "ln-dpo": {"beta": [0.5]},
    "simpo": {"beta": [2.0], "gamma_beta_ratio": [0.5]},
    "kto": {"beta": [0.1]},
}
PEAKS_TFLOPS = (  # dense bf16 tensor-core peaks (the datasheets quote twice these, with sparsity)
    ("H200 NVL", 835.0, "NVIDIA H200 NVL datasheet"),
    ("H200", 989.4, "NVIDIA H200 SXM datasheet"),
    ("H100 NVL", 835.0, "NVIDIA H100 NVL datasheet"),
    ("H100 PCIe", 756.0, "NVIDIA H100 PCIe datasheet"),
    ("H100", 989.4, "NVIDIA H100 SXM datasheet"),
    ("A100", 312.0, "NVIDIA A100 datasheet (SXM and PCIe)"),
)
CHATML = (
    "{% for message in messages %}<|im_start|>{{ message['role'] }}\n{{ message['content'] }}<|im_end|>\n"
    "{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)
SPECIAL = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
NO_GPU = "not measured: no GPU"
SIZES = {  # policy, judge, vocabulary, and the data: (prompt tokens low, high), pairs, prompts, new tokens
    "full": dict(
        policy=dict(hidden_size=1024, intermediate_size=4352, num_hidden_layers=28, num_attention_heads=16,
                    num_key_value_heads=8),
        judge=dict(hidden_size=512, intermediate_size=1376, num_hidden_layers=4, num_attention_heads=8,
                   num_key_value_heads=8),
        vocab=16384, prompt=(256, 512), pairs=1024, prompts=512, new_tokens=256, max_length=1024,
        batch=8, eval_batch=128, judge_batch=64, learning_rate=1e-5,
    ),
    "tiny": dict(
        policy=dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                    num_key_value_heads=2),
        judge=dict(hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2,
                   num_key_value_heads=2),
        vocab=600, prompt=(24, 48), pairs=16, prompts=8, new_tokens=16, max_length=96,
        batch=4, eval_batch=8, judge_batch=8, learning_rate=1e-3,
    ),
}  # fmt: skip


def peak_tflops(device_name: str) -> tuple[float, str] | None:
    """The dense bf16 peak (TFLOP/s) of a GPU named as torch.cuda.get_device_name names it, and its source."""
    for key, value, source in PEAKS_TFLOPS:
        if key.lower() in device_name.lower():
            return value, source
    return None


def mfu(params: int, tokens: int, seconds: float, peak: float) -> float:
    """Model FLOPs utilization of training: 6·N·tokens FLOPs in `seconds`, as a fraction of `peak` TFLOP/s."""
    return 6.0 * params * tokens / seconds / (peak * 1e12)


def _words(rng: random.Random, count: int) -> list[str]:
    syllables = [c + v for c in "bdfgklmnprstvz" for v in "aeiou"]
    return list(dict.fromkeys("".join(rng.choices(syllables, k=rng.randint(1, 3))) for _ in range(count)))


def build_assets(work: Path, size: dict, device: str = "cpu", seed: int = 0) -> dict:
    """Tokenizer, bf16 policy and judge checkpoints (initialised on `device`), training pairs and evaluation
    prompts, in `work`."""
    import torch
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import (
        AutoModelForSequenceClassification,
        PreTrainedTokenizerFast,
        Qwen2Config,
        Qwen2ForCausalLM,
    )

    from sweep.hf.quiet import no_progress_bars

    rng = random.Random(seed)
    vocabulary = _words(rng, 3 * size["vocab"])
    corpus = [" ".join(rng.choices(vocabulary, k=64)) for _ in range(4000)]
    backend = Tokenizer(models.BPE())
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    backend.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=size["vocab"], special_tokens=SPECIAL, initial_alphabet=pre_tokenizers.ByteLevel.alphabet()
    )
    backend.train_from_iterator(corpus, trainer)
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=backend, eos_token="<|im_end|>", pad_token=SPECIAL[0]
    )
    tokenizer.chat_template = CHATML

    def text(tokens: int) -> str:
        ids = tokenizer(" ".join(rng.choices(vocabulary, k=tokens)), add_special_tokens=False)["input_ids"]
        return tokenizer.decode(ids[:tokens]).strip()

    def templated(messages: list[dict]) -> int:
        ids = tokenizer.apply_chat_template(
            messages, add_generation_prompt=True, tokenize=True, return_dict=True
        )
        return len(ids["input_ids"])

    def prompt_of(tokens: int) -> tuple[list[dict], int]:
        """A user message of about `tokens` tokens once templated, and its templated length."""
        message = [{"role": "user", "content": text(tokens - overhead)}]
        return message, templated(message)

    overhead = templated([{"role": "user", "content": ""}])
    low, high = size["prompt"]
    pairs, prompts = [], []
    for _ in range(size["pairs"]):
        prompt, length = prompt_of(rng.randint(low, high))
        room = size["max_length"] - length - 4  # the completion's end-of-turn tokens, and a little slack
        chosen, rejected = text(room), text(room - rng.randint(0, low // 4))
        pairs.append(
            {
                "prompt": prompt,
                "chosen": [{"role": "assistant", "content": chosen}],
                "rejected": [{"role": "assistant", "content": rejected}],
            }
        )
    for _ in range(size["prompts"]):
        prompts.append({"prompt": prompt_of(rng.randint(low, high))[0]})
    for name, rows in (("train.jsonl", pairs), ("eval.jsonl", prompts)):
        (work / name).write_text("".join(json.dumps(row) + "\n" for row in rows), encoding="utf-8")

    positions = size["max_length"] + size["new_tokens"] + 64
    common = dict(
        vocab_size=len(tokenizer),
        max_position_embeddings=positions,
        tie_word_embeddings=False,
        pad_token_id=tokenizer.pad_token_id,
        eos_token_id=tokenizer.eos_token_id,
        bos_token_id=None,
    )
    torch.manual_seed(seed)
    with torch.device(device):
        policy = Qwen2ForCausalLM(Qwen2Config(**common, **size["policy"]))
        judge = AutoModelForSequenceClassification.from_config(
            Qwen2Config(**common, **size["judge"], num_labels=1)
        )
    counted = sum(p.numel() for p in policy.parameters()) - policy.get_input_embeddings().weight.numel()
    resident = 4 * sum(p.numel() for p in policy.parameters()) + 2 * sum(
        p.numel() for p in judge.parameters()
    )
    with no_progress_bars():
        for name, model in (("policy", policy), ("judge", judge)):
            model.to(torch.bfloat16).save_pretrained(work / name)
            tokenizer.save_pretrained(work / name)
    return {"tokenizer": tokenizer, "pairs": pairs, "params": counted, "resident_mb": resident / 2**20}


def write_recipe(work: Path, size: dict, cpu: bool) -> Path:
    """The smoke's recipe: four methods, one trial each, on the assets in `work`."""
    import yaml

    recipe = {
        "name": "gpu-smoke",
        "model": {"path": str(work / "policy"), "dtype": "auto"},
        "data": {
            "train": {"path": str(work / "train.jsonl")},
            "eval": {"path": str(work / "eval.jsonl"), "split": "train", "max_prompts": size["prompts"]},
        },
        "judge": {
            "reward_model": str(work / "judge"),
            "batch_size": size["judge_batch"],
            "sort_by_length": True,
            "max_length": size["max_length"] + size["new_tokens"],
        },
        "methods": {
            name: {**space, "learning_rate": [size["learning_rate"]]} for name, space in METHODS.items()
        },
        "train": {
            "per_device_train_batch_size": size["batch"],
            "max_length": size["max_length"],
            "logging_steps": 10,
            "precision": "auto",
        },
        "eval": {
            "max_new_tokens": size["new_tokens"],
            "do_sample": True,
            "batch_size": size["eval_batch"],
            "bootstrap": 200,
        },
        "execution": {
            "results_dir": str(work / "results"),
            "workers": 1,
            "devices": "cpu" if cpu else [0],
        },
    }
    path = work / "recipe.yaml"
    path.write_text(yaml.safe_dump(recipe, sort_keys=False), encoding="utf-8")
    return path


def training_tokens(tokenizer, pairs: list[dict], max_length: int) -> int:
    """Tokens of one epoch: prompt + chosen and prompt + rejected of every pair, each cut at max_length.

    Every method here sees them once (KTO as one desirable and one undesirable example per pair).
    """
    from sweep.hf.formats import pair_token_ids

    total = 0
    for pair in pairs:
        prompt, chosen, rejected = pair_token_ids(tokenizer, pair)
        total += min(len(prompt) + len(chosen), max_length) + min(len(prompt) + len(rejected), max_length)
    return total


def figures(folder, tokens: int, params: int, peak: float | None) -> dict:
    """Per-trial and total figures of a finished smoke sweep, read through sweep/results.py."""
    trials, sums = {}, dict.fromkeys(("tokens", "train_s", "eval_s", "total_s"), 0.0)
    for record in folder.trials():
        metrics = record.metrics
        times = metrics.time_s if metrics else {}
        samples = folder.trial(record.folder).read_samples()
        generated = sum(line["length"] for line in samples)
        sft = {(line["prompt_index"], line["sft_response"]) for line in samples}
        scored = len({(line["prompt_index"], line["response"]) for line in samples} - sft)
        eval_s = sum(times.get(key, 0.0) for key in ("generate", "judge", "kl"))
        row = {
            "method": record.params.method,
            "state": record.state,
            "tokens": tokens,
            "train_s": times.get("train"),
            "ref_logps_s": times.get("ref_logps"),
            "tokens_per_s": tokens / times["train"] if times.get("train") else None,
            "mfu": mfu(params, tokens, times["train"], peak) if peak and times.get("train") else None,
            "peak_mb": (metrics.worker if metrics else {}).get("cuda_peak_mb"),
            "after_mb": (metrics.worker if metrics else {}).get("cuda_mb"),
            "generate_tokens_per_s": generated / times["generate"] if times.get("generate") else None,
            "judged": scored,
            "judge_per_s": scored / times["judge"] if scored and times.get("judge") else None,
            "eval_share": eval_s / times["total"] if times.get("total") else None,
            "total_s": times.get("total"),
        }
        trials[record.trial_id] = row
        if row["train_s"]:
            sums["tokens"] += tokens
            sums["train_s"] += row["train_s"]
        sums["eval_s"] += eval_s
        sums["total_s"] += times.get("total", 0.0)
    baseline = folder.read_baseline()
    total = {
        "tokens_per_s": sums["tokens"] / sums["train_s"] if sums["train_s"] else None,
        "mfu": mfu(params, int(sums["tokens"]), sums["train_s"], peak) if peak and sums["train_s"] else None,
        "eval_share": sums["eval_s"] / sums["total_s"] if sums["total_s"] else None,
        "sft_tokens_per_s": sum(baseline.lengths) / baseline.time_s if baseline and baseline.time_s else None,
        "sweep_wall_s": folder.read_sweep().extra.get("wall_s"),
    }
    return {"trials": trials, "total": total}


def memory_check(trials: dict, tolerance: float = 0.05) -> tuple[bool | None, str]:
    """Whether every trial left GPU memory within `tolerance` of what the first trial left (None on CPU)."""
    after = [row["after_mb"] for row in trials.values()]
    if not after or any(value is None for value in after):
        return None, NO_GPU
    base = after[0]
    worst = max(abs(value - base) / base for value in after) if base else 0.0
    return (
        worst <= tolerance,
        f"after each trial {', '.join(f'{v:.0f}' for v in after)} MiB (worst {worst:+.1%})",
    )


def _show(value, unit: str = "", digits: int = 0, missing: str = "-") -> str:
    return missing if value is None else f"{value:,.{digits}f}{unit}"


def _percent(value, missing: str = "-") -> str:
    return _show(None if value is None else 100 * value, "%", 1, missing)


COLUMNS = (  # header, width, how a trial row shows
    ("train tok/s", 12, lambda row: _show(row["tokens_per_s"])),
    ("MFU", 8, lambda row: _percent(row["mfu"], "n/m")),
    ("peak MiB", 10, lambda row: _show(row["peak_mb"], missing="n/m")),
    ("ref s", 7, lambda row: _show(row["ref_logps_s"], "", 1)),
    ("gen tok/s", 11, lambda row: _show(row["generate_tokens_per_s"])),
    ("judge/s", 9, lambda row: _show(row["judge_per_s"], "", 1)),
    ("eval %", 8, lambda row: _percent(row["eval_share"])),
    ("total s", 9, lambda row: _show(row["total_s"], "", 1)),
)


def report(result: dict, peak: tuple[float, str] | None, device: str, assets: dict, wall: float) -> list[str]:
    """The printed table (n/m: not measured, on the CPU)."""
    if peak:
        peak_line = f"{peak[0]:g} TFLOP/s dense bf16 ({peak[1]})"
    else:
        peak_line = NO_GPU if device == "cpu" else "not measured: unknown GPU (pass --peak-tflops)"
    lines = [
        f"device: {device}; policy {assets['params'] / 1e6:.1f}M parameters in 6·N (less input embedding)",
        f"peak: {peak_line}",
        f"{'trial':<28}{'state':<10}" + "".join(f"{name:>{width}}" for name, width, _ in COLUMNS),
    ]
    for trial_id, row in result["trials"].items():
        cells = "".join(f"{show(row):>{width}}" for _, width, show in COLUMNS)
        lines.append(f"{trial_id:<28}{row['state']:<10}{cells}")
    total = result["total"]
    unmeasured = {True: "yes", False: "NO", None: NO_GPU}
    sft = _show(total["sft_tokens_per_s"], " tokens/s (its judging included)")
    lines += [
        f"total: training {_show(total['tokens_per_s'], ' tokens/s')}; MFU {_percent(total['mfu'], NO_GPU)}; "
        f"evaluation {_percent(total['eval_share'])} of trial wall",
        f"generation: SFT baseline {sft}",
        f"memory: {result['memory'][1]}; back to baseline ±5%: {unmeasured[result['memory'][0]]} "
        f"(SFT weights in fp32 and judge in bf16 alone: {assets['resident_mb']:,.0f} MiB)",
        f"sweep wall {total['sweep_wall_s']} s; smoke wall {wall:.1f} s (build, sweep and report)",
    ]
    return lines


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cpu", action="store_true", help="run on the CPU (GPU-only figures not measured)")
    parser.add_argument("--tiny", action="store_true", help="a tiny model and data set instead of 0.5B")
    parser.add_argument("--workdir", type=Path, help="where to build and run (default a temporary folder)")
    parser.add_argument("--json", type=Path, help="also write the figures to this JSON file")
    parser.add_argument("--peak-tflops", type=float, help="the GPU's dense bf16 peak, if not in the table")
    for name in ("pairs", "prompts", "new-tokens", "max-length"):
        parser.add_argument(f"--{name}", type=int, help="override the size's default")
    args = parser.parse_args(argv)
    started = time.perf_counter()
    offline = ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE", "TRANSFORMERS_OFFLINE", "TRL_EXPERIMENTAL_SILENCE")
    os.environ.update(dict.fromkeys(offline, "1"), TOKENIZERS_PARALLELISM="false")
    sys.path.insert(0, str(ROOT))
    import torch

    from sweep.engine.workers import run_sweep
    from sweep.results import SweepFolder
    from sweep.spec.validate import load_recipe

    cuda = torch.cuda.is_available() and not args.cpu
    size = dict(SIZES["tiny" if args.tiny else "full"])
    given = {key: getattr(args, key) for key in ("pairs", "prompts", "new_tokens", "max_length")}
    size.update({key: value for key, value in given.items() if value})
    work = args.workdir or Path(tempfile.mkdtemp(prefix="posweep-gpu-smoke-"))
    work.mkdir(parents=True, exist_ok=True)
    shutil.rmtree(work / "results", ignore_errors=True)  # a fresh sweep: a reused folder would resume
    assets = build_assets(work, size, "cuda" if cuda else "cpu")
    recipe = write_recipe(work, size, cpu=not cuda)
    tokens = training_tokens(assets["tokenizer"], assets["pairs"], size["max_length"])
    device = torch.cuda.get_device_name(0) if cuda else "cpu"
    peak = (args.peak_tflops, "--peak-tflops") if cuda and args.peak_tflops else None
    peak = peak or (peak_tflops(device) if cuda else None)
    print(f"built in {time.perf_counter() - started:.1f} s: {work}; training tokens per trial {tokens:,}")
    code = run_sweep(load_recipe(recipe), quiet=True, new=True)
    folder = SweepFolder(work / "results" / "gpu-smoke")
    result = figures(folder, tokens, assets["params"], peak[0] if peak else None)
    result["memory"] = memory_check(result["trials"])
    result["device"], result["peak"] = device, peak
    lines = report(result, peak, device, assets, time.perf_counter() - started)
    print("\n".join(lines))
    if args.json:
        args.json.write_text(json.dumps(result, indent=1), encoding="utf-8")
    states = [row["state"] for row in result["trials"].values()]
    complete = states == ["complete"] * len(METHODS)
    return 0 if code == 0 and complete and result["memory"][0] is not False else 1


if __name__ == "__main__":
    sys.exit(main())
