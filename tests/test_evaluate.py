"""Evaluation: generation, the KL estimator against an exact enumeration, and the Evaluator end to end."""

import itertools
import json
import math
import threading

import numpy as np
import pytest
import torch
from tiny import CHAT_TEMPLATE, save_dir, tiny_causal_lm, tiny_reward_model, tiny_tokenizer

from sweep.errors import UserError
from sweep.evaluate import estimators as stats
from sweep.evaluate.evaluator import Evaluator
from sweep.evaluate.generation import Decoding, generate, sequence_logps, stop_ids, teacher_forced_kl
from sweep.evaluate.scores import ScoreMemo
from sweep.hf.formats import encode_prompt, one_format, templated
from sweep.hf.judges import Judge
from sweep.io import read_jsonl
from sweep.spec.metrics import objective_keys, selection_value
from sweep.spec.recipe import Recipe

WORDS = ["a", "b", "c", "d", ":", "user", "assistant"]
EVAL_ROWS = [
    {"prompt": "a b :", "chosen": "c d"},
    {"prompt": "c :", "chosen": "a"},
    {"prompt": "d d a :", "chosen": "b b c"},
    {"prompt": "b :", "chosen": "d"},
    {"prompt": "a a a c :", "chosen": "c c"},
]
JUDGE_METRICS = [
    "judge_score_mean",
    "judge_score_std",
    "win_rate_vs_sft",
    "win_rate_vs_sft_ci",
    "lc_win_rate_vs_sft",
    "win_rate_vs_chosen",
    "win_rate_vs_chosen_ci",
]
KL_METRICS = [
    name + suffix for name in ("kl_to_sft", "kl_to_sft_per_token") for suffix in ("", "_se", "_mc", "_mc_se")
]
OTHER_METRICS = [
    *KL_METRICS,
    "repeated_3gram_fraction",
    "judge_formats",
    "selection",
    "test",
    "length_mean",
    "length_median",
    "length_p90",
    "words_mean",
    "empty_fraction",
    "truncated_fraction",
]
torch.set_num_threads(1)


@pytest.fixture(scope="module")
def tokenizer():
    return tiny_tokenizer(WORDS)


def causal_lm(tokenizer, seed):
    return tiny_causal_lm(tokenizer, seed, initializer_range=0.3)


# ------------------------------------------------------------------------------------------ KL


@torch.no_grad()
def exact_kl(policy, reference, prompt: list[int], eos: int, vocab: int, max_new_tokens: int):
    """KL(policy‖reference) and its per-token form, summed over every response (sequences ending at the first
    EOS or at max_new_tokens), each response's log-probability from an unpadded forward pass."""
    kl = per_token = total = 0.0
    for length in range(1, max_new_tokens + 1):
        responses = [
            tokens
            for tokens in itertools.product(range(vocab), repeat=length)
            if eos not in tokens[:-1] and (tokens[-1] == eos or length == max_new_tokens)
        ]
        sequences = torch.tensor([prompt + list(tokens) for tokens in responses])
        targets = sequences[:, len(prompt) :, None]

        def logp(model, sequences=sequences, targets=targets):
            logps = model(sequences).logits[:, len(prompt) - 1 : -1].log_softmax(-1)
            return logps.gather(-1, targets).squeeze(-1).sum(-1).double()

        log_ratio = logp(policy) - logp(reference)
        p = logp(policy).exp()
        kl += float(p @ log_ratio)
        per_token += float(p @ log_ratio) / length
        total += float(p.sum())
    assert total == pytest.approx(1.0, abs=1e-5)
    return kl, per_token


def test_monte_carlo_kl_agrees_with_exact_enumeration():
    tokenizer = tiny_tokenizer(["a", "b"])  # vocabulary of 5: <pad> <eos> <unk> a b
    reference, policy = causal_lm(tokenizer, 0), causal_lm(tokenizer, 1)
    prompts = [encode_prompt(tokenizer, "a b"), encode_prompt(tokenizer, "b")]
    eos, samples, max_new = tokenizer.eos_token_id, 2000, 3
    responses = generate(policy, prompts, samples, Decoding(max_new, do_sample=True), 512, 0, [eos], seed=0)
    rows = [prompt for prompt in prompts for _ in range(samples)]
    logp_policy = sequence_logps(policy, rows, responses, 256, 0)
    logp_reference = sequence_logps(reference, rows, responses, 256, 0)
    tokens = [len(response.ids) for response in responses]
    kl, per_token = stats.kl_estimate(logp_policy, logp_reference, tokens)
    exact = [exact_kl(policy, reference, prompt, eos, len(tokenizer), max_new) for prompt in prompts]
    ratio = np.subtract(logp_policy, logp_reference)
    assert kl > 0.1
    assert kl == pytest.approx(np.mean([e[0] for e in exact]), abs=4 * ratio.std() / math.sqrt(ratio.size))
    per_token_error = 4 * (ratio / tokens).std() / math.sqrt(ratio.size)
    assert per_token == pytest.approx(np.mean([e[1] for e in exact]), abs=per_token_error)


def test_exact_kl_along_samples_agrees_with_enumeration_within_three_standard_errors():
    tokenizer = tiny_tokenizer(["a", "b"])
    reference, policy = causal_lm(tokenizer, 0), causal_lm(tokenizer, 1)
    prompts = [encode_prompt(tokenizer, "a b"), encode_prompt(tokenizer, "b")]
    eos, samples, max_new = tokenizer.eos_token_id, 300, 3
    responses = generate(policy, prompts, samples, Decoding(max_new, do_sample=True), 600, 0, [eos], seed=3)
    rows = [prompt for prompt in prompts for _ in range(samples)]
    passes = teacher_forced_kl(policy, reference, rows, responses, 600, 0)
    tokens = [len(response.ids) for response in responses]
    groups = [index * samples + draw for index in range(2) for draw in range(samples)]  # every draw a unit
    found = stats.kl_metrics(
        [p.kl_exact for p in passes],
        [p.logp_policy for p in passes],
        [p.logp_sft for p in passes],
        tokens,
        groups,
    )
    exact = [exact_kl(policy, reference, prompt, eos, len(tokenizer), max_new) for prompt in prompts]
    assert found["kl_to_sft"] == pytest.approx(np.mean([e[0] for e in exact]), abs=3 * found["kl_to_sft_se"])
    assert found["kl_to_sft_mc"] == pytest.approx(
        np.mean([e[0] for e in exact]), abs=4 * found["kl_to_sft_mc_se"]
    )
    assert found["kl_to_sft_se"] < found["kl_to_sft_mc_se"]
    assert [p.logp_policy for p in passes] == pytest.approx(
        sequence_logps(policy, rows, responses, 7, 0), abs=1e-4
    )


def test_sequence_logps_in_padded_batches_match_unpadded_passes(tokenizer):
    model = causal_lm(tokenizer, 0)
    prompts = [encode_prompt(tokenizer, text) for text in ("a b :", "c :", "d d a b c :")]
    responses = generate(
        model, prompts, 2, Decoding(4, do_sample=True), 4, 0, [tokenizer.eos_token_id], seed=1
    )
    rows = [prompt for prompt in prompts for _ in range(2)]
    found = sequence_logps(model, rows, responses, 3, tokenizer.pad_token_id)
    with torch.no_grad():
        for prompt, response, value in zip(rows, responses, found, strict=True):
            logps = model(torch.tensor([prompt + list(response.ids)])).logits[0].log_softmax(-1)
            expected = sum(logps[len(prompt) - 1 + t, token].item() for t, token in enumerate(response.ids))
            assert value == pytest.approx(expected, abs=1e-4)


def test_generation_ignores_the_models_generation_config_and_restores_it(tokenizer):
    model = causal_lm(tokenizer, 0)
    prompts = [encode_prompt(tokenizer, "a b :"), encode_prompt(tokenizer, "c :")]
    decoding = Decoding(5, do_sample=True)
    plain = generate(model, prompts, 3, decoding, 4, 0, [tokenizer.eos_token_id], seed=0)
    model.generation_config.top_k = 1
    model.generation_config.repetition_penalty = 5.0
    model.train()
    assert generate(model, prompts, 3, decoding, 4, 0, [tokenizer.eos_token_id], seed=0) == plain
    assert model.generation_config.top_k == 1 and model.training
    greedy = generate(model, prompts, 3, Decoding(5, do_sample=False), 4, 0, [tokenizer.eos_token_id], seed=0)
    assert greedy[0] == greedy[1] == greedy[2] != greedy[3]


def test_prompts_are_tokenized_as_trl_tokenizes_them():
    from trl.data_utils import _tokenize  # what DPOTrainer uses to tokenize prompts

    tokenizer = tiny_tokenizer(WORDS, CHAT_TEMPLATE)
    conversation = [{"role": "user", "content": "a b :"}]
    assert encode_prompt(tokenizer, "a b :") == _tokenize(tokenizer, "a b :")["input_ids"]
    expected = _tokenize(tokenizer, conversation, add_generation_prompt=True)["input_ids"]
    assert encode_prompt(tokenizer, conversation) == expected
    assert tokenizer.decode(expected) == "user : a b : assistant :"
    with pytest.raises(UserError, match="no chat template"):
        encode_prompt(tiny_tokenizer(WORDS), conversation)


def test_plain_eval_prompts_of_a_policy_trained_on_conversations_are_templated(sweep_env, tmp_path):
    """Evaluation renders prompts as training did: a plain prompt of a conversational sweep is one user
    message through the chat template (TRL's own tokenization of that message is the oracle); a plain
    sweep's stays plain; conversational prompts for a plain-text policy are refused."""
    from trl.data_utils import _tokenize

    chat = tiny_tokenizer(WORDS, CHAT_TEMPLATE)
    recipe, quiet = make_recipe(sweep_env), (lambda line: None)
    for conversational in (True, False):
        ev = Evaluator(
            recipe, causal_lm(chat, 0), chat, tmp_path / str(conversational), "cpu", quiet,
            train_conversational=conversational,
        )  # fmt: skip
        for row, ids in zip(EVAL_ROWS, ev.prompt_ids, strict=True):
            message = [{"role": "user", "content": row["prompt"]}]
            shown = message if conversational else row["prompt"]
            assert ids == _tokenize(chat, shown, add_generation_prompt=conversational)["input_ids"]
    assert chat.decode(ev.prompt_ids[0]) == "a b :"
    assert templated(True, True) and not templated(False, False)
    with pytest.raises(UserError, match=r"data\.eval: the evaluation prompts are conversations"):
        templated(False, True)
    with pytest.raises(UserError, match=r"data\.train: variants half are conversations .* and train plain"):
        one_format({None: False, "half": True})


def test_stop_ids_include_the_generation_configs_eos(tokenizer):
    model = causal_lm(tokenizer, 0)
    model.generation_config.eos_token_id = [tokenizer.eos_token_id, 4]
    assert stop_ids(model, tokenizer) == [tokenizer.eos_token_id, 4]


class CountingJudge(Judge):
    """Scores len(prompt) + 10·len(response) and records every (prompt, response) it is asked for."""

    def __init__(self):
        super().__init__("rm", primary=True)
        self.asked = []

    def _score(self, prompts, responses):
        self.asked.append(list(zip(prompts, responses)))
        return [len(prompt) + 10 * len(response) for prompt, response in zip(prompts, responses)]


def test_the_score_memo_reuses_known_scores_and_judges_each_missing_response_once():
    memo, judge = ScoreMemo(["p0", "prompt1"]), CountingJudge()
    memo.remember("rm", [0, 1], ["x", "x"], [-1.0, -2.0])
    scores = memo.scores(judge, [0, 0, 1, 1, 0, 1], ["x", "yy", "x", "yy", "yy", "x"])
    assert scores.tolist() == [-1.0, 22.0, -2.0, 27.0, 22.0, -2.0]
    assert judge.asked == [[("p0", "yy"), ("prompt1", "yy")]]  # one call, each missing pair once
    fresh = CountingJudge()
    fresh.name = "len"  # nothing known for this judge: every distinct pair is judged, once
    assert memo.scores(fresh, [1, 1, 0], ["x", "x", "x"]).tolist() == [17.0, 17.0, 12.0]
    assert fresh.asked == [[("prompt1", "x"), ("p0", "x")]]


# ------------------------------------------------------------------------------------------ Evaluator


@pytest.fixture(scope="module")
def workspace(tmp_path_factory, tokenizer):
    root = tmp_path_factory.mktemp("evaluate")
    save_dir(root / "sft", causal_lm(tokenizer, 0), tokenizer)
    save_dir(root / "rm", tiny_reward_model(tokenizer, seed=5, initializer_range=0.3), tokenizer)
    (root / "eval.jsonl").write_text("".join(json.dumps(row) + "\n" for row in EVAL_ROWS))
    (root / "eval_judges.py").write_text(
        "def words(prompts, responses):\n    return [len(r.split()) for r in responses]\n"
    )
    return root


def make_recipe(root, **eval_settings) -> Recipe:
    return Recipe.model_validate(
        {
            "name": "t",
            "model": str(root / "sft"),
            "data": {
                "train": {"path": "train.jsonl"},
                "eval": {"path": str(root / "eval.jsonl"), "columns": {"reference": "chosen"}},
            },
            "judge": [
                {"reward_model": str(root / "rm"), "batch_size": 4},
                {"name": "len", "callable": "eval_judges:words"},
            ],
            "methods": {"dpo": None},
            "eval": {"max_new_tokens": 4, "batch_size": 3, "bootstrap": 200, **eval_settings},
        }
    )


@pytest.fixture
def sweep_env(workspace, monkeypatch):
    monkeypatch.syspath_prepend(str(workspace))
    return workspace


def evaluator(root, tokenizer, sweep_dir, logs=None, **eval_settings):
    log = logs.append if logs is not None else (lambda line: None)
    recipe = make_recipe(root, **eval_settings)
    return Evaluator(
        recipe, causal_lm(tokenizer, 0), tokenizer, sweep_dir, "cpu", log, train_conversational=False
    )


def test_evaluation_writes_every_metric_and_one_line_per_sample(sweep_env, tokenizer, tmp_path):
    settings = {"do_sample": True, "samples_per_prompt": 2}
    logs = []
    ev = evaluator(sweep_env, tokenizer, tmp_path / "sweep", logs, **settings)
    assert len(logs) == 1 and logs[0].startswith("SFT baseline: generated 10 responses (")
    metrics = ev.evaluate(causal_lm(tokenizer, 1), tmp_path / "trial")
    expected = [*JUDGE_METRICS, *OTHER_METRICS, *(f"len.{key}" for key in JUDGE_METRICS), "time_s"]
    assert sorted(metrics) == sorted(expected)
    assert set(metrics["time_s"]) == {"generate", "judge", "kl"}
    assert metrics["kl_to_sft"] > 0
    low, high = metrics["win_rate_vs_sft_ci"]
    assert 0 <= low <= metrics["win_rate_vs_sft"] <= high <= 1
    lines = read_jsonl(tmp_path / "trial" / "samples.jsonl")
    assert len(lines) == len(EVAL_ROWS) * 2
    assert [(line["prompt_index"], line["sample"]) for line in lines[:3]] == [(0, 0), (0, 1), (1, 0)]
    for line in lines:
        assert {
            "prompt",
            "reference",
            "response",
            "score",
            "sft_response",
            "sft_score",
            "reference_score",
            "len.score",
            "len.sft_score",
            "length",
            "sft_length",
            "words",
            "truncated",
        } <= set(line)
        assert [sample["response"] for sample in line["kl"]] == [line["response"]]
        assert line["len.score"] == line["words"] == len(line["response"].split())
    kl = [s["logp_policy"] - s["logp_sft"] for line in lines for s in line["kl"]]
    assert metrics["kl_to_sft_mc"] == pytest.approx(np.mean(kl))
    assert metrics["kl_to_sft"] == pytest.approx(
        np.mean([s["kl_exact"] for line in lines for s in line["kl"]])
    )
    assert metrics["judge_formats"] == {"rm": "raw", "len": "callable"}
    scores = np.array([line["score"] for line in lines]).reshape(-1, 2)
    sft_scores = np.array([line["sft_score"] for line in lines]).reshape(-1, 2)
    assert metrics["win_rate_vs_sft"] == pytest.approx(stats.win_rate(scores, sft_scores))
    assert metrics["judge_score_mean"] == pytest.approx(scores.mean())
    assert metrics["length_mean"] == pytest.approx(np.mean([line["length"] for line in lines]))


def test_the_sft_model_against_itself_ties(sweep_env, tokenizer, tmp_path):
    for settings in ({"do_sample": True, "samples_per_prompt": 2}, {"do_sample": False}):
        ev = evaluator(sweep_env, tokenizer, tmp_path / str(settings["do_sample"]), **settings)
        metrics = ev.evaluate(causal_lm(tokenizer, 0), tmp_path / "trial")
        for prefix in ("", "len."):
            assert metrics[prefix + "win_rate_vs_sft"] == 0.5
            assert metrics[prefix + "win_rate_vs_sft_ci"] == [0.5, 0.5]
            assert metrics[prefix + "lc_win_rate_vs_sft"] == 0.5
        assert metrics["kl_to_sft"] == 0.0
        baseline = ev.baseline.metrics
        assert metrics["length_mean"] == baseline["length_mean"]
        assert metrics["win_rate_vs_chosen"] == baseline["win_rate_vs_chosen"]


def test_greedy_evaluation_draws_separate_kl_samples(sweep_env, tokenizer, tmp_path):
    ev = evaluator(sweep_env, tokenizer, tmp_path / "sweep", do_sample=False, kl_samples=3)
    metrics = ev.evaluate(causal_lm(tokenizer, 1), tmp_path / "trial")
    lines = read_jsonl(tmp_path / "trial" / "samples.jsonl")
    assert len(lines) == len(EVAL_ROWS)
    assert all(len(line["kl"]) == 3 for line in lines)
    kl = [s["logp_policy"] - s["logp_sft"] for line in lines for s in line["kl"]]
    per_token = [(s["logp_policy"] - s["logp_sft"]) / s["tokens"] for line in lines for s in line["kl"]]
    assert metrics["kl_to_sft_mc"] == pytest.approx(np.mean(kl))
    assert metrics["kl_to_sft_per_token_mc"] == pytest.approx(np.mean(per_token))
    exact = [[s["kl_exact"] for s in line["kl"]] for line in lines]
    assert metrics["kl_to_sft"] == pytest.approx(np.mean(exact))
    assert metrics["kl_to_sft_se"] == pytest.approx(
        np.std(np.mean(exact, axis=1), ddof=1) / math.sqrt(len(lines))
    )
    assert metrics["truncated_fraction"] == np.mean([line["truncated"] for line in lines])


def test_baseline_is_cached_per_sweep_and_recomputed_when_settings_change(sweep_env, tokenizer, tmp_path):
    logs = []
    first = evaluator(sweep_env, tokenizer, tmp_path, logs)
    second = evaluator(sweep_env, tokenizer, tmp_path, logs)
    assert logs[1] == "SFT baseline: reused cache/sft_baseline.json"
    assert second.baseline == first.baseline
    cached = first.baseline.to_json()  # the typed record as cache/sft_baseline.json holds it
    assert {"key", "responses", "lengths", "scores", "reference_scores", "metrics"} <= set(cached)
    evaluator(sweep_env, tokenizer, tmp_path, logs, objective="len.win_rate_vs_sft", kl_samples=2)
    evaluator(sweep_env, tokenizer, tmp_path, logs, max_new_tokens=3)
    assert [line.split()[2] for line in logs] == ["generated", "reused", "reused", "generated"]


def test_workers_starting_together_compute_the_baseline_once(sweep_env, tokenizer, tmp_path):
    logs = []
    workers = [
        threading.Thread(target=evaluator, args=(sweep_env, tokenizer, tmp_path, logs)) for _ in range(2)
    ]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join()
    assert sorted(line.split()[2] for line in logs) == ["generated", "reused"]


def test_quick_evaluation_and_objective(sweep_env, tokenizer, tmp_path):
    ev = evaluator(sweep_env, tokenizer, tmp_path, objective="len.win_rate_vs_sft", quick_prompts=2)
    policy = causal_lm(tokenizer, 1)
    policy.train()
    value = ev.quick(policy)
    assert policy.training and not list(tmp_path.glob("**/samples.jsonl"))
    metrics = ev.evaluate(policy, tmp_path / "trial")
    lines = read_jsonl(tmp_path / "trial" / "samples.jsonl")[:2]
    assert value == stats.win_rate(
        [line["words"] for line in lines], [line["len.sft_score"] for line in lines]
    )
    assert ev.objective(metrics) == metrics["len.win_rate_vs_sft"]
    assert math.isnan(ev.objective({}))


def test_selection_and_test_parts_split_the_prompts_and_recompute_every_metric(
    sweep_env, tokenizer, tmp_path
):
    ev = evaluator(sweep_env, tokenizer, tmp_path / "sweep", do_sample=True, samples_per_prompt=2)
    metrics = ev.evaluate(causal_lm(tokenizer, 1), tmp_path / "trial")
    mask = stats.selection_mask(len(EVAL_ROWS), 0.5, 0)
    assert mask.sum() == 2 and list(mask) == list(stats.selection_mask(len(EVAL_ROWS), 0.5, 0))
    assert list(mask) != list(stats.selection_mask(len(EVAL_ROWS), 0.5, 1))  # the seed moves the split
    lines = read_jsonl(tmp_path / "trial" / "samples.jsonl")
    for part, chosen in (("selection", mask), ("test", ~mask)):
        picked = [line for line in lines if chosen[line["prompt_index"]]]
        scores = np.array([line["score"] for line in picked]).reshape(-1, 2)
        sft = np.array([line["sft_score"] for line in picked]).reshape(-1, 2)
        assert metrics[part]["win_rate_vs_sft"] == pytest.approx(stats.win_rate(scores, sft))
        assert metrics[part]["length_mean"] == pytest.approx(np.mean([line["length"] for line in picked]))
        exact = [s["kl_exact"] for line in picked for s in line["kl"]]
        assert metrics[part]["kl_to_sft"] == pytest.approx(np.mean(exact))
    assert selection_value(metrics, "win_rate_vs_sft", None) == metrics["selection"]["win_rate_vs_sft"]
    assert selection_value({}, "win_rate_vs_sft", 0.25) == 0.25


@pytest.mark.parametrize("objective", ["judge_score_mean", "kl_to_sft"])
def test_the_quick_evaluation_that_drives_pruning_sees_the_selection_part_only(
    sweep_env, tokenizer, tmp_path, objective
):
    """Every prompt the quick evaluation generates from is in the selection part (the first prompts are
    not), and with quick_prompts covering that part a greedy objective is the full evaluation's
    selection-part value: no test-part prompt enters a pruning decision."""
    ev = evaluator(sweep_env, tokenizer, tmp_path / "sweep", objective=objective, selection_fraction=0.4)
    picked = np.flatnonzero(ev.selection)
    assert 0 < len(picked) < len(EVAL_ROWS) and picked.tolist() != list(range(len(picked)))
    ev.settings = ev.settings.model_copy(update={"quick_prompts": len(picked)})
    generated, generate = [], ev._generate
    ev._generate = lambda model, prompts, *args: (
        generated.append(list(prompts)) or generate(model, prompts, *args)
    )
    policy = causal_lm(tokenizer, 1)
    quick = ev.quick(policy)
    assert generated and all(prompts == picked.tolist() for prompts in generated), generated
    full = ev.evaluate(policy, tmp_path / "trial")
    assert full["selection"][objective] != pytest.approx(full["test"][objective], abs=1e-6)
    if objective == "judge_score_mean":
        assert quick == pytest.approx(full["selection"][objective], abs=1e-9)


def test_every_objective_the_validator_accepts_is_in_a_real_metrics_json(sweep_env, tokenizer, tmp_path):
    """Each candidate objective (every catalog metric, bare and with the secondary judge's prefix) that a
    recipe file may name is a finite number in the metrics of a real evaluation, over all prompts and over
    the selection part that the study optimizes; those a recipe may not name are refused."""
    import yaml

    from sweep.spec.metrics import CATALOG
    from sweep.spec.validate import RecipeError, load_recipe

    metrics = evaluator(sweep_env, tokenizer, tmp_path / "sweep").evaluate(
        causal_lm(tokenizer, 1), tmp_path / "t"
    )
    data = make_recipe(sweep_env).model_dump(mode="json", exclude_defaults=True)
    data["data"]["train"]["path"] = str(sweep_env / "eval.jsonl")  # a file that exists; never read here
    accepted, refused = [], []
    for key in [*CATALOG, *(f"len.{name}" for name in CATALOG)]:
        path = tmp_path / "recipe.yaml"
        path.write_text(yaml.safe_dump({**data, "eval": {**data.get("eval", {}), "objective": key}}))
        try:
            load_recipe(path)
        except RecipeError as error:
            assert "eval.objective" in str(error), error
            refused.append(key)
            continue
        accepted.append(key)
        for values in (metrics, metrics["selection"]):
            assert isinstance(values[key], float) and math.isfinite(values[key]), key
    assert "len.win_rate_vs_sft" in accepted and "kl_to_sft" in accepted
    assert {"len.kl_to_sft", "len.length_mean", "len.truncated_fraction"} <= set(refused)
    assert sorted(accepted) == sorted(objective_keys(["len"], references=True))
