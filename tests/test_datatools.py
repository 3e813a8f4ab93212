"""Preference-data tools: statistics checked by hand, perplexity filter against plain forward passes, CLI."""

import json
import math

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
from tiny import CHAT_TEMPLATE, save_dir, tiny_causal_lm, tiny_tokenizer
from typer.testing import CliRunner

from sweep.cli import app
from sweep.errors import UserError
from sweep.hf.data import read_rows
from sweep.hf.formats import pair_token_ids
from sweep.spec.recipe import Source, TrainData
from sweep.tools.datastats import length_stats
from sweep.tools.pplfilter import criterion, filter_file, pair_perplexities, select_pairs

WORDS = ["a", "b", "c", "d", "e", "f", "g", "h", "the", "cat", "dog", "sat", "on", "mat", "more", "be",
         "brief", ".", "user", "assistant", "system", ":"]  # fmt: skip


def messages(role: str, *contents: str) -> list[dict]:
    return [{"role": role, "content": content} for content in contents]


# Hand-computed: words chosen [4, 4, 1, 2, 0, 6], rejected [1, 1, 2, 2, 1, 0], prompt [2, 2, 2, 3, 1, 1];
# chosen - rejected [3, 3, -1, 0, -1, 6]; tokens split "mat." into two, so chosen tokens [5, 5, 1, 2, 0, 6].
PLAIN_STATS_ROWS = [
    {"prompt": "the cat", "chosen": " sat on the mat.", "rejected": " dog"},
    {"prompt": "the cat", "chosen": " sat on the mat.", "rejected": " dog"},
    {"prompt": "the cat", "chosen": " dog", "rejected": " sat on"},
    {"prompt": "a b c", "chosen": " d e", "rejected": " d e"},
    {"prompt": "a", "chosen": "   ", "rejected": " b"},
    {"prompt": "h", "chosen": " a b c d e f", "rejected": ""},
]

PLAIN_ROWS = [
    {"prompt": "the cat", "chosen": " sat on the mat", "rejected": " dog dog", "id": 0, "score": 0.25},
    {"prompt": "a b", "chosen": " c d e", "rejected": " f", "id": 1, "score": 0.5, "note": 'x\u2028y, "z"'},
    {"prompt": "the dog", "chosen": " sat", "rejected": " on the mat . more", "id": 2, "score": 1.0},
    {"prompt": "be brief", "chosen": " a", "rejected": " b b b b", "id": 3, "score": 2.5},
    {"prompt": "h g", "chosen": " f e d c b a", "rejected": " a", "id": 4, "score": -1.0},
    {"prompt": "cat", "chosen": " mat mat", "rejected": " sat on", "id": 5, "score": 0.0},
    {"prompt": "more", "chosen": " the cat sat", "rejected": " the dog sat", "id": 6, "score": 3.0},
    {"prompt": "e", "chosen": " brief .", "rejected": " be brief", "id": 7, "score": 4.5},
    {"prompt": "d d", "chosen": " g h", "rejected": " h g h g h", "id": 8, "score": 5.0},
    {"prompt": "f", "chosen": " on", "rejected": " a b c", "id": 9, "score": 6.0},
]

CONVERSATION_ROWS = [
    {
        "prompt": messages("user", row["prompt"]),
        "chosen": messages("assistant", row["chosen"].strip()),
        "rejected": messages("assistant", row["rejected"].strip()),
        "id": row["id"],
    }
    for row in PLAIN_ROWS
]


def write_rows(path, rows):
    if path.suffix == ".jsonl":
        path.write_text("".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows), encoding="utf-8")
    elif path.suffix == ".json":
        path.write_text(json.dumps({"data": rows, "meta": {"origin": "test"}}), encoding="utf-8")
    elif path.suffix == ".parquet":
        pq.write_table(pa.Table.from_pylist(rows), path)
    else:
        pd.DataFrame(rows).to_csv(path, index=False)
    return path


@pytest.fixture(scope="module")
def tokenizer():
    return tiny_tokenizer(WORDS, CHAT_TEMPLATE)


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory, tokenizer):
    torch.set_num_threads(1)
    return save_dir(tmp_path_factory.mktemp("model"), tiny_causal_lm(tokenizer, seed=3), tokenizer)


@pytest.fixture(scope="module")
def model(tokenizer):
    return tiny_causal_lm(tokenizer, seed=3)


def reference_perplexities(model, tokenizer, rows) -> list[tuple[float, float]]:
    """Per-token perplexities by one unpadded forward pass per (prompt, response), tokenized as TRL does."""
    result = []
    for row in rows:
        pair = []
        for field in ("chosen", "rejected"):
            if isinstance(row["prompt"], str):
                prompt = tokenizer(row["prompt"])["input_ids"]
                ids = tokenizer(row["prompt"] + row[field] + tokenizer.eos_token)["input_ids"]
            else:
                template = {"tokenize": True, "return_dict": True}
                prompt = tokenizer.apply_chat_template(row["prompt"], add_generation_prompt=True, **template)
                ids = tokenizer.apply_chat_template(row["prompt"] + row[field], **template)["input_ids"]
                prompt = prompt["input_ids"]
            assert ids[: len(prompt)] == prompt
            with torch.no_grad():
                logits = model(torch.tensor([ids])).logits[0, :-1].double()
            logps = logits.log_softmax(-1).gather(-1, torch.tensor(ids[1:])[:, None]).squeeze(-1)
            pair.append(math.exp(-logps[len(prompt) - 1 :].mean().item()))
        result.append(tuple(pair))
    return result


# --------------------------------------------------------------------------- statistics


def test_plain_length_statistics_by_hand(tokenizer):
    stats = length_stats(PLAIN_STATS_ROWS)
    words = stats["words"]
    assert stats["pairs"] == 6 and stats["format"] == "plain"
    assert words["chosen_longer_fraction"] == pytest.approx(3 / 6)
    assert words["tie_fraction"] == pytest.approx(1 / 6)
    assert words["rejected_longer_fraction"] == pytest.approx(2 / 6)
    assert words["difference_mean"] == pytest.approx(10 / 6)
    assert words["difference_median"] == pytest.approx(1.5)
    assert words["chosen"]["mean"] == pytest.approx(17 / 6)
    assert (words["chosen"]["min"], words["chosen"]["max"], words["chosen"]["median"]) == (0, 6, 3)
    assert words["rejected"]["mean"] == pytest.approx(7 / 6)
    assert words["prompt"]["mean"] == pytest.approx(11 / 6)
    assert stats["tokens"] is None
    assert (stats["duplicate_rows"], stats["unique_prompts"], stats["repeated_prompts"]) == (1, 4, 2)
    assert stats["identical_responses"] == 1
    assert (stats["empty_chosen"], stats["empty_rejected"]) == (1, 1)


def test_token_lengths_use_the_tokenizer(tokenizer):
    tokens = length_stats(PLAIN_STATS_ROWS, tokenizer)["tokens"]
    assert tokens["chosen"]["mean"] == pytest.approx(19 / 6)
    assert tokens["chosen"]["max"] == 6
    assert tokens["difference_mean"] == pytest.approx(12 / 6)
    assert tokens["difference_median"] == pytest.approx(2.0)
    assert tokens["chosen_longer_fraction"] == pytest.approx(3 / 6)


def test_conversational_responses_are_the_assistant_messages():
    rows = [
        {
            "prompt": messages("system", "be brief") + messages("user", "the cat"),
            "chosen": messages("assistant", "sat on")
            + messages("user", "more")
            + messages("assistant", "the mat"),
            "rejected": messages("assistant", "dog"),
        },
        {
            "prompt": messages("user", "a"),
            "chosen": messages("assistant", " "),
            "rejected": messages("assistant", "b c"),
        },
    ]
    stats = length_stats(rows)
    words = stats["words"]
    assert stats["format"] == "conversational"
    assert words["prompt"]["mean"] == pytest.approx(2.5)
    assert (words["chosen"]["max"], words["rejected"]["max"]) == (4, 2)
    assert (words["chosen_longer_fraction"], words["rejected_longer_fraction"]) == (0.5, 0.5)
    assert words["difference_mean"] == pytest.approx(0.5)
    assert (stats["empty_chosen"], stats["empty_rejected"], stats["duplicate_rows"]) == (1, 0, 0)


# --------------------------------------------------------------------------- perplexity and selection


def test_select_pairs_criteria_ties_and_missing_perplexities():
    pairs = [(3.0, 1.0), (2.0, 2.0), (math.nan, 1.0), (1.0, 1.5), (2.0, 4.0), (1.5, 1.0)]
    # pair scores (max): 3, 2, nan, 1.5, 4, 1.5; chosen/rejected: 3, 1, nan, 0.67, 0.5, 1.5
    assert select_pairs(pairs, keep=0.5) == [1, 3, 5]
    assert select_pairs(pairs, keep=0.3) == [3, 5]
    assert select_pairs(pairs, keep=0.1) == [3]
    assert select_pairs(pairs, keep=1.0) == [0, 1, 3, 4, 5]
    assert select_pairs(pairs, max_ppl=2.0) == [1, 3, 5]
    assert select_pairs(pairs, max_ratio=1.0) == [1, 3, 4]
    assert select_pairs(pairs, max_ratio=2.0) == [1, 3, 4, 5]
    assert select_pairs(pairs) == [1, 3, 5]


@pytest.mark.parametrize(
    "given, message",
    [
        ({"keep": 0.5, "max_ppl": 3.0}, "give one filtering criterion, not --keep and --max-ppl"),
        ({"keep": 0.0}, "--keep must be a fraction in (0, 1]"),
        ({"keep": 1.5}, "--keep must be a fraction in (0, 1]"),
        ({"max_ppl": -1.0}, "--max-ppl must be positive"),
        ({"max_ratio": 0.9}, "--max-ratio must be at least 1"),
    ],
)
def test_bad_criteria(given, message):
    with pytest.raises(UserError, match=message.replace("(", r"\(").replace("]", r"\]")):
        criterion(**given)


@pytest.mark.parametrize("rows", [PLAIN_ROWS, CONVERSATION_ROWS], ids=["plain", "conversational"])
def test_batched_perplexities_equal_a_plain_forward_pass(model, tokenizer, rows):
    expected = reference_perplexities(model, tokenizer, rows)
    measured = pair_perplexities(rows, model, tokenizer, batch_size=3, device="cpu")
    assert len(measured) == len(rows)
    for got, want in zip(measured, expected, strict=True):
        assert got == pytest.approx(want, rel=1e-4)
    assert len({round(max(pair), 6) for pair in expected}) == len(rows)


def test_plain_tokens_follow_trl(tokenizer):
    prompt, chosen, rejected = pair_token_ids(
        tokenizer, {"prompt": "a b", "chosen": " c<eos>", "rejected": ""}
    )
    assert prompt == tokenizer("a b")["input_ids"]
    assert chosen == tokenizer(" c")["input_ids"] + [tokenizer.eos_token_id]
    assert rejected == [tokenizer.eos_token_id]


def test_conversations_need_a_chat_template():
    plain_tokenizer = tiny_tokenizer(WORDS)
    with pytest.raises(UserError, match="no chat template"):
        pair_token_ids(plain_tokenizer, CONVERSATION_ROWS[0])


def expected_kept(model, tokenizer, rows, rule: dict) -> list[int]:
    """The kept indices computed directly from reference perplexities."""
    perplexities = reference_perplexities(model, tokenizer, rows)
    scores = [max(pair) for pair in perplexities]
    if "keep" in rule:
        count = math.ceil(rule["keep"] * len(rows))
        return sorted(sorted(range(len(rows)), key=lambda i: scores[i])[:count])
    if "max_ppl" in rule:
        return [i for i in range(len(rows)) if scores[i] <= rule["max_ppl"]]
    return [i for i, (chosen, rejected) in enumerate(perplexities) if chosen / rejected <= rule["max_ratio"]]


def thresholds(model, tokenizer, rows) -> dict:
    """A max_ppl and a max_ratio that each split the rows (midpoints between observed values)."""
    perplexities = reference_perplexities(model, tokenizer, rows)
    scores = sorted(max(pair) for pair in perplexities)
    ratios = sorted(chosen / rejected for chosen, rejected in perplexities)
    above_one = [ratio for ratio in ratios if ratio > 1]
    assert len(above_one) >= 2, ratios
    return {"max_ppl": (scores[3] + scores[4]) / 2, "max_ratio": (above_one[0] + above_one[1]) / 2}


@pytest.mark.parametrize("name", ["keep", "max_ppl", "max_ratio"])
def test_filter_keeps_what_a_direct_computation_keeps(model, tokenizer, model_dir, tmp_path, name):
    rule = {"keep": 0.4} if name == "keep" else {name: thresholds(model, tokenizer, PLAIN_ROWS)[name]}
    expected = expected_kept(model, tokenizer, PLAIN_ROWS, rule)
    assert 0 < len(expected) < len(PLAIN_ROWS)
    source = write_rows(tmp_path / "pairs.jsonl", PLAIN_ROWS)
    out = tmp_path / "out" / "kept.jsonl"
    summary = filter_file(TrainData(path=str(source)), str(model_dir), out, rule, batch_size=4, device="cpu")
    assert [row["id"] for row in read_rows(Source(path=str(out)), "out")] == expected
    assert (summary["pairs"], summary["kept"], summary["criterion"]) == (10, len(expected), rule)
    assert json.loads((tmp_path / "out" / "kept.jsonl.summary.json").read_text()) == summary
    png = (tmp_path / "out" / "kept.jsonl.ppl.png").read_bytes()
    assert png.startswith(b"\x89PNG")


def roundtrip_cases():
    for suffix in (".jsonl", ".json", ".parquet", ".csv"):
        yield pytest.param(PLAIN_ROWS, suffix, id=f"plain{suffix}")
    for suffix in (".jsonl", ".json", ".parquet"):
        yield pytest.param(CONVERSATION_ROWS, suffix, id=f"conversational{suffix}")


@pytest.mark.parametrize("rows, suffix", list(roundtrip_cases()))
def test_filter_round_trips_the_input_format(model, tokenizer, model_dir, tmp_path, rows, suffix):
    source = write_rows(tmp_path / f"pairs{suffix}", rows)
    out = tmp_path / f"kept{suffix}"
    filter_file(TrainData(path=str(source)), str(model_dir), out, {"keep": 0.5}, batch_size=8, device="cpu")
    kept = expected_kept(model, tokenizer, rows, {"keep": 0.5})
    original = read_rows(Source(path=str(source)), "in")
    assert read_rows(Source(path=str(out)), "out") == [original[i] for i in kept]
    if suffix in (".jsonl", ".csv"):
        lines = source.read_text().split("\n")[:-1]
        header = lines[:1] if suffix == ".csv" else []
        data_lines = lines[len(header) :]
        assert out.read_text().split("\n")[:-1] == header + [data_lines[i] for i in kept]
    elif suffix == ".parquet":
        assert pq.read_schema(out).equals(pq.read_schema(source))
    else:
        assert json.loads(out.read_text())["meta"] == {"origin": "test"}


def test_a_dataset_folder_is_written_as_jsonl(model, tokenizer, model_dir, tmp_path, monkeypatch):
    import datasets

    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", str(tmp_path / "hf"))
    folder = tmp_path / "dataset"
    folder.mkdir()
    write_rows(folder / "train.jsonl", PLAIN_ROWS)
    with pytest.raises(UserError, match=r"--out must end in \.jsonl"):
        filter_file(TrainData(path=str(folder)), str(model_dir), tmp_path / "kept.csv", {"keep": 0.5})
    out = tmp_path / "kept.jsonl"
    filter_file(TrainData(path=str(folder)), str(model_dir), out, {"keep": 0.5}, device="cpu")
    kept = expected_kept(model, tokenizer, PLAIN_ROWS, {"keep": 0.5})
    written = [json.loads(line) for line in out.read_text().splitlines()]
    assert [{key: row[key] for key in PLAIN_ROWS[i]} for row, i in zip(written, kept)] == [
        PLAIN_ROWS[i] for i in kept
    ]


# --------------------------------------------------------------------------- command line


def invoke(*args):
    result = CliRunner().invoke(app, [str(arg) for arg in args])
    assert isinstance(result.exception, SystemExit | None), result.exception
    assert "Traceback" not in result.output
    return result


def test_cli_stats_json_is_one_object(model_dir, tmp_path):
    source = write_rows(tmp_path / "pairs.jsonl", PLAIN_STATS_ROWS)
    result = invoke("data", "stats", source, "--model", model_dir, "--json")
    assert result.exit_code == 0, result.output
    stats = json.loads(result.stdout)
    assert stats["pairs"] == 6 and stats["model"] == str(model_dir)
    assert stats["words"]["chosen_longer_fraction"] == 0.5
    assert stats["tokens"]["difference_mean"] == pytest.approx(2.0)


def test_cli_stats_table_and_column_mapping(tmp_path):
    rows = [{"q": row["prompt"], "good": row["chosen"], "bad": row["rejected"]} for row in PLAIN_STATS_ROWS]
    source = write_rows(tmp_path / "pairs.jsonl", rows)
    result = invoke("data", "stats", source, "--prompt", "q", "--chosen", "good", "--rejected", "bad")
    assert result.exit_code == 0, result.output
    assert "6 pairs, plain" in result.stdout
    assert "chosen longer 50.0%, ties 16.7%, rejected longer 33.3%" in result.stdout
    assert "duplicate rows" in result.stdout


def test_cli_ppl_filter(model, tokenizer, model_dir, tmp_path):
    source = write_rows(tmp_path / "pairs.parquet", PLAIN_ROWS)
    out = tmp_path / "kept.parquet"
    result = invoke("data", "ppl-filter", source, "--model", model_dir, "--out", out, "--device", "cpu")
    assert result.exit_code == 0, result.output
    assert result.stdout.startswith(f"kept 5 of 10 pairs (50.0%): {out}")
    kept = expected_kept(model, tokenizer, PLAIN_ROWS, {"keep": 0.5})
    assert pq.read_table(out).column("id").to_pylist() == kept


@pytest.mark.parametrize(
    "options, message",
    [
        (
            ["--keep", "0.5", "--max-ratio", "2"],
            "error: give one filtering criterion, not --keep and --max-ratio",
        ),
        (["--keep", "2"], "error: --keep must be a fraction in (0, 1], got 2"),
        (["--max-ratio", "0.5"], "error: --max-ratio must be at least 1"),
        (["--out", "kept.csv"], "error: --out must end in .jsonl, the format of the input (pairs.jsonl)"),
        (["--out", "pairs.jsonl"], "is the input file"),
    ],
)
def test_cli_ppl_filter_bad_input_is_one_line(model_dir, tmp_path, monkeypatch, options, message):
    monkeypatch.chdir(tmp_path)
    write_rows(tmp_path / "pairs.jsonl", PLAIN_ROWS)
    out = [] if "--out" in options else ["--out", "kept.jsonl"]
    result = invoke("data", "ppl-filter", "pairs.jsonl", "--model", model_dir, *out, *options)
    assert result.exit_code == 2
    assert message in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "kept.jsonl").exists()


def test_cli_stats_missing_file_is_one_line(tmp_path):
    result = invoke("data", "stats", tmp_path / "missing.jsonl")
    assert result.exit_code == 2
    assert len(result.stderr.strip().splitlines()) == 1
