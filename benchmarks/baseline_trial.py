"""One sweep trial as a fresh process, the way it is scripted without posweep: the baseline of `make bench`.

    python benchmarks/baseline_trial.py RECIPE TRIAL_ID --out DIR

It does a posweep trial's work with the same libraries and settings, and shares nothing with other trials:
import torch, transformers and TRL; load the tokenizer, the SFT model (policy and, for methods that have
one, reference), the training pairs, the evaluation prompts and the judges from disk; train with the
method's TRL trainer and posweep's TRL config (so TRL tokenizes the data and runs the reference model in
every step); generate and judge the SFT model's responses and the trained policy's; estimate the KL to SFT.
Evaluation uses posweep's `Evaluator` (with a cache folder of its own) so that both sides compute the same
metrics. It writes DIR/trials/TRIAL_ID/metrics.json with posweep's keys and `time_s`, plus `setup_s`:
imports, loading and the SFT baseline, the work posweep does once per worker.
"""

from __future__ import annotations

import time

STARTED = time.perf_counter()

import argparse  # noqa: E402
import copy  # noqa: E402
import os  # noqa: E402
import warnings  # noqa: E402
from pathlib import Path  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("recipe", type=Path)
    parser.add_argument("trial_id")
    parser.add_argument("--out", type=Path, required=True, help="folder for trials/TRIAL_ID/ and its cache")
    options = parser.parse_args()

    os.environ.setdefault("TRL_EXPERIMENTAL_SILENCE", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    warnings.filterwarnings("ignore")
    import datasets
    import torch
    import transformers
    from transformers import AutoModelForCausalLM, AutoTokenizer, PrinterCallback, set_seed

    from sweep.evaluate.evaluator import Evaluator
    from sweep.hf.data import is_conversational, load_pairs
    from sweep.hf.loading import load_object
    from sweep.io import write_json
    from sweep.spec.methods import get_method
    from sweep.spec.plan import plan_recipe
    from sweep.spec.validate import load_recipe
    from sweep.train.config import trl_config
    from sweep.train.stages import Stages

    transformers.logging.set_verbosity_error()
    datasets.disable_progress_bars()
    torch.set_num_threads(max(1, os.cpu_count() or 1))  # as `posweep run` sets it for one CPU worker

    recipe = load_recipe(options.recipe)
    device = "cuda" if recipe.execution.devices != "cpu" and torch.cuda.is_available() else "cpu"
    spec = next(t for t in plan_recipe(recipe).trials if t.trial_id == options.trial_id)
    method = get_method(spec.method)
    folder = options.out / "trials" / spec.trial_id
    times = {}

    tokenizer = AutoTokenizer.from_pretrained(recipe.model.path)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    sft = AutoModelForCausalLM.from_pretrained(recipe.model.path).to(device).eval().requires_grad_(False)
    pairs = load_pairs(recipe.data.train)
    conversational = is_conversational(pairs[0])
    evaluator = Evaluator(
        recipe, sft, tokenizer, options.out, device, lambda line: None, train_conversational=conversational
    )
    setup_s = time.perf_counter() - STARTED
    stages = Stages(STARTED)  # its setup stage: this process's imports and loading, paid per trial

    stages.enter("load")
    clock = time.perf_counter()
    set_seed(spec.seed)
    policy = copy.deepcopy(sft).requires_grad_(True).train()
    times["load"] = time.perf_counter() - clock

    stages.enter("build")
    clock = time.perf_counter()
    if method.data == "unpaired":
        from trl import unpair_preference_dataset

        pairs = unpair_preference_dataset(pairs).shuffle(seed=spec.seed)
    reference = {} if method.reference == "none" else {"ref_model": sft}
    if method.reference == "moving":  # TR-* methods update their reference: keep the SFT model intact
        reference["ref_model"] = copy.deepcopy(sft)
    config = trl_config(method, spec.params, recipe.train, spec.seed, folder / "scratch", device)
    trainer = load_object(method.trainer)(
        model=policy, args=config, train_dataset=pairs, processing_class=tokenizer, **reference
    )
    trainer.remove_callback(PrinterCallback)
    stages.enter("train")
    output = trainer.train()
    policy = trainer.model
    for model in (policy, sft):
        vars(model).pop("forward", None)  # TRL's fused LM head and accelerate's autocast patches
    times["train"] = time.perf_counter() - clock

    stages.enter("evaluate")
    metrics = dict(evaluator.evaluate(policy, folder))
    times.update(metrics.pop("time_s"))
    stages.carve({key: times[key] for key in ("generate", "judge", "kl")})
    stages.enter("save")
    now = time.perf_counter()
    times["total"] = now - STARTED - setup_s
    record = {
        "trial_id": spec.trial_id,
        "state": "complete",
        "objective": evaluator.objective(metrics),
        "time_s": times,
        "setup_s": setup_s,
        "stages_s": stages.close(now),
        "train": {"loss": output.training_loss, "steps": output.global_step},
        **metrics,
    }
    write_json(folder / "metrics.json", record)


if __name__ == "__main__":
    main()
