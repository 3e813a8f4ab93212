"""Preference pairs and evaluation prompts from local JSONL, JSON, CSV and Parquet files."""

import json

import pandas as pd
import pytest

from sweep.errors import UserError
from sweep.hf.data import EvalPrompt, is_conversational, load_eval_prompts, load_pair_rows
from sweep.spec.recipe import EvalColumns, EvalData, PairColumns, TrainData

PLAIN = [{"prompt": f"q{i}", "chosen": f"good {i}", "rejected": f"bad {i}"} for i in range(5)]
CONVERSATIONAL = [
    {
        "prompt": [{"role": "user", "content": f"q{i}"}],
        "chosen": [{"role": "assistant", "content": f"good {i}"}],
        "rejected": [{"role": "assistant", "content": f"bad {i}"}],
    }
    for i in range(3)
]


def write(path, rows):
    """Write rows in the format the file's suffix names."""
    if path.suffix == ".jsonl":
        path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    elif path.suffix == ".json":
        path.write_text(json.dumps(rows))
    elif path.suffix == ".csv":
        pd.DataFrame(rows).to_csv(path, index=False)
    else:
        pd.DataFrame(rows).to_parquet(path)
    return path


@pytest.mark.parametrize("suffix", [".jsonl", ".json", ".csv", ".parquet"])
def test_plain_pairs(tmp_path, suffix):
    path = write(tmp_path / f"pairs{suffix}", PLAIN)
    assert load_pair_rows(TrainData(path=str(path))) == PLAIN


@pytest.mark.parametrize("suffix", [".jsonl", ".json", ".parquet"])
def test_conversational_pairs(tmp_path, suffix):
    path = write(tmp_path / f"pairs{suffix}", CONVERSATIONAL)
    rows = load_pair_rows(TrainData(path=str(path)))
    assert rows == CONVERSATIONAL
    assert is_conversational(rows[0])
    assert not is_conversational(PLAIN[0])


def test_json_object_with_data_key(tmp_path):
    path = tmp_path / "pairs.json"
    path.write_text(json.dumps({"data": PLAIN[:2]}))
    assert load_pair_rows(TrainData(path=str(path))) == PLAIN[:2]


def test_column_mapping_and_max_samples(tmp_path):
    rows = [
        {"question": r["prompt"], "good": r["chosen"], "bad": r["rejected"], "id": i}
        for i, r in enumerate(PLAIN)
    ]
    path = write(tmp_path / "pairs.jsonl", rows)
    source = TrainData(
        path=str(path), columns=PairColumns(prompt="question", chosen="good", rejected="bad"), max_samples=2
    )
    assert load_pair_rows(source) == PLAIN[:2]


def test_missing_column_names_it_and_lists_the_columns(tmp_path):
    path = write(tmp_path / "pairs.csv", [{"prompt": "p", "chosen": "c", "worse": "r"}])
    with pytest.raises(UserError) as caught:
        load_pair_rows(TrainData(path=str(path)))
    assert (
        str(caught.value)
        == f"data.train.columns.rejected: no column 'rejected' in {path} (columns: prompt, chosen, worse)"
    )


def test_missing_column_in_a_later_row(tmp_path):
    path = write(tmp_path / "pairs.jsonl", [*PLAIN[:2], {"prompt": "p", "chosen": "c"}])
    with pytest.raises(
        UserError, match=r"^data\.train\.columns\.rejected: no column 'rejected' in .* row 2 "
    ):
        load_pair_rows(TrainData(path=str(path)))


def test_mixed_formats_in_a_row(tmp_path):
    row = {
        "prompt": "plain",
        "chosen": CONVERSATIONAL[0]["chosen"],
        "rejected": CONVERSATIONAL[0]["rejected"],
    }
    path = write(tmp_path / "pairs.jsonl", [row])
    with pytest.raises(UserError, match="all be strings or all be message lists"):
        load_pair_rows(TrainData(path=str(path)))


def test_mixed_formats_across_rows(tmp_path):
    path = write(tmp_path / "pairs.jsonl", [PLAIN[0], CONVERSATIONAL[0]])
    with pytest.raises(
        UserError, match=r"^data\.train: row 1: prompt, chosen and rejected must all be strings"
    ):
        load_pair_rows(TrainData(path=str(path)))


def test_values_must_be_text_or_messages(tmp_path):
    path = write(tmp_path / "pairs.jsonl", [{"prompt": "p", "chosen": 3, "rejected": "r"}])
    with pytest.raises(UserError, match=r"^data\.train: row 0: expected a string or a list of .* got int$"):
        load_pair_rows(TrainData(path=str(path)))


def test_empty_file(tmp_path):
    path = tmp_path / "pairs.jsonl"
    path.write_text("\n")
    with pytest.raises(UserError, match="has no rows"):
        load_pair_rows(TrainData(path=str(path)))


def test_unreadable_file(tmp_path):
    path = tmp_path / "pairs.jsonl"
    path.write_text('{"prompt": "p",\n')
    with pytest.raises(UserError, match=r"pairs\.jsonl: cannot read data: "):
        load_pair_rows(TrainData(path=str(path)))


def test_unsupported_suffix(tmp_path):
    path = tmp_path / "pairs.txt"
    path.write_text("hello")
    with pytest.raises(UserError, match=r"^data\.train: pairs\.txt: unsupported file type"):
        load_pair_rows(TrainData(path=str(path)))


@pytest.mark.parametrize("suffix", [".jsonl", ".json", ".csv", ".parquet"])
def test_eval_prompts_with_reference(tmp_path, suffix):
    path = write(tmp_path / f"eval{suffix}", PLAIN)
    source = EvalData(path=str(path), columns=EvalColumns(reference="chosen"), max_prompts=3)
    assert load_eval_prompts(source) == [EvalPrompt(f"q{i}", f"good {i}") for i in range(3)]


def test_eval_prompts_without_reference_and_default_cap(tmp_path):
    rows = [{"text": f"q{i}"} for i in range(300)]
    path = write(tmp_path / "eval.jsonl", rows)
    prompts = load_eval_prompts(EvalData(path=str(path), columns=EvalColumns(prompt="text")))
    assert len(prompts) == 256
    assert prompts[0] == EvalPrompt("q0", None)


def test_conversational_eval_prompts_take_the_last_reference_message(tmp_path):
    path = write(tmp_path / "eval.parquet", CONVERSATIONAL)
    source = EvalData(path=str(path), columns=EvalColumns(reference="chosen"))
    prompts = load_eval_prompts(source)
    assert prompts[1] == EvalPrompt([{"role": "user", "content": "q1"}], "good 1")


def test_eval_missing_reference_column(tmp_path):
    path = write(tmp_path / "eval.jsonl", [{"prompt": "q"}])
    source = EvalData(path=str(path), columns=EvalColumns(reference="answer"))
    with pytest.raises(
        UserError, match=r"^data\.eval\.columns\.reference: no column 'answer' in .* \(columns: prompt\)$"
    ):
        load_eval_prompts(source)
