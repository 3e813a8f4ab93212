"""Preference data and evaluation prompts from local files or Hub datasets, validated row by row.

Rows come out in TRL's standard formats: plain (`prompt`, `chosen`, `rejected` strings) or
conversational (lists of `{role, content}` messages). Data in TRL's implicit-prompt format (no prompt
column: `chosen` and `rejected` hold the whole conversation) get their shared beginning as the prompt.
Local JSONL/JSON/CSV/Parquet files are read directly (no Hub cache, safe for many workers); anything
else is a Hub dataset id.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sweep.errors import UserError
from sweep.io import first_line
from sweep.spec.recipe import DATA_SUFFIXES, EvalData, PairColumns, Source, TrainData


@dataclass(frozen=True)
class EvalPrompt:
    """One evaluation prompt, with the dataset's reference (chosen) response when it has one."""

    prompt: str | list[dict]
    reference: str | None = None


def _read_jsonl(path: Path) -> tuple[list[dict], list[str]]:
    """Rows of a JSON-lines file and the 1-based line each came from; a broken line is named."""
    rows, places = [], []
    with path.open(encoding="utf-8") as handle:
        for number, line in enumerate(handle, 1):
            if not line.strip():
                continue
            try:
                rows.append(json.loads(line))
            except ValueError as error:
                colno = getattr(error, "colno", None)
                detail = f"{error.msg} (column {colno})" if colno else first_line(error)
                raise ValueError(f"line {number}: invalid JSON: {detail}") from None
            places.append(f"{path.name} line {number}")
    return rows, places


def _read_local(path: Path) -> tuple[list[dict], list[str]]:
    """Rows of a local data file and where each came from (1-based line, or row for tables)."""
    kind = DATA_SUFFIXES.get(path.suffix.lower())
    try:
        if path.suffix.lower() == ".jsonl":
            return _read_jsonl(path)
        if kind == "json":
            data = json.loads(path.read_text(encoding="utf-8"))
            rows = data if isinstance(data, list) else data.get("data", data.get("rows", []))
        elif kind == "parquet":
            import pyarrow.parquet as pq

            rows = pq.read_table(path).to_pylist()
        else:
            import pandas as pd

            rows = pd.read_csv(path, keep_default_na=False).to_dict(orient="records")
            return rows, [f"{path.name} line {index + 2}" for index in range(len(rows))]
    except (OSError, ValueError) as error:
        raise UserError(f"{path}: cannot read data: {first_line(error)}") from None
    if not isinstance(rows, list) or not all(isinstance(row, Mapping) for row in rows):
        raise UserError(f"{path}: cannot read data: expected a list of objects (one per row)")
    return rows, [f"{path.name} row {index + 1}" for index in range(len(rows))]


def read_rows(source: Source, where: str) -> list[dict]:
    """All rows of a data source, as dicts."""
    return _read_placed(source, where)[0]


def _read_placed(source: Source, where: str) -> tuple[list[dict], list[str]]:
    """All rows of a data source and where each came from (file and 1-based line or row)."""
    location = source.path
    path = Path(location).expanduser()
    if path.is_file():
        if path.suffix.lower() not in DATA_SUFFIXES:
            raise UserError(f"{where}: {path.name}: unsupported file type (use {', '.join(DATA_SUFFIXES)})")
        try:
            return _read_local(path)
        except UserError as error:
            raise UserError(f"{where}.path: {error}") from None
    import datasets

    try:
        table = datasets.load_dataset(location, source.subset, split=source.split, revision=source.revision)
    except Exception as error:  # datasets raises many types for a missing id, split or network
        raise UserError(f"{where}: cannot load dataset {location!r}: {first_line(error)}") from None
    rows = table.to_list()
    return rows, [f"{location} row {index + 1}" for index in range(len(rows))]


def _column(rows: list[dict], name: str, where: str, origin: str, places: list[str]) -> None:
    for index, row in enumerate(rows):
        if name not in row:
            at = f" row {index}" if index else ""
            columns = ", ".join(map(str, row))
            place = f"{places[index]}; " if index else ""
            raise UserError(f"{where}: no column {name!r} in {origin}{at} ({place}columns: {columns})")


def _is_messages(value: Any) -> bool:
    return isinstance(value, list) and all(
        isinstance(m, Mapping) and "role" in m and "content" in m for m in value
    )


def _check_value(value: Any, where: str, index: int, column: str, place: str) -> None:
    if not (isinstance(value, str) or _is_messages(value)):
        raise UserError(
            f"{where}: row {index}: expected a string or a list of {{role, content}} messages in column "
            f"{column!r} at {place}, got {type(value).__name__}"
        )


def load_pair_rows(source: TrainData, where: str = "data.train") -> list[dict]:
    """Preference rows with keys prompt/chosen/rejected, validated, capped at max_samples.

    Errors name the recipe field, the file and the 1-based line (JSONL, CSV) or row; `row N` in a
    message is the 0-based index of the row among the rows read.
    """
    rows, places = _read_placed(source, where)
    rows, places = rows[: source.max_samples], places[: source.max_samples]
    if not rows:
        raise UserError(f"{where}: {source.path} has no rows")
    columns = source.columns
    if all(columns.prompt not in row for row in rows):
        rows = _explicit_prompts(rows, columns, where, source.path, places)
        columns = PairColumns()
    for key in ("prompt", "chosen", "rejected"):
        _column(rows, getattr(columns, key), f"{where}.columns.{key}", source.path, places)
    pairs = []
    for index, row in enumerate(rows):
        pair = {key: row[getattr(columns, key)] for key in ("prompt", "chosen", "rejected")}
        for key, value in pair.items():
            _check_value(value, where, index, getattr(columns, key), places[index])
        pairs.append(pair)
    plain = isinstance(pairs[0]["prompt"], str)
    for index, pair in enumerate(pairs):
        if any(isinstance(value, str) != plain for value in pair.values()):
            raise UserError(
                f"{where}: row {index}: prompt, chosen and rejected must all be strings or all be "
                f"message lists, in every row ({places[index]})"
            )
    return pairs


def _explicit_prompts(
    rows: list[dict], columns: PairColumns, where: str, origin: str, places: list[str]
) -> list[dict]:
    """Rows of TRL's implicit-prompt format split as TRL splits them: the shared beginning is the prompt."""
    from trl import extract_prompt

    for key in ("chosen", "rejected"):
        _column(rows, getattr(columns, key), f"{where}.columns.{key}", origin, places)
    return [
        extract_prompt({"chosen": row[columns.chosen], "rejected": row[columns.rejected]}) for row in rows
    ]


def load_pairs(source: TrainData, where: str = "data.train"):
    """Preference pairs as a `datasets.Dataset` with columns prompt, chosen, rejected."""
    import datasets

    return datasets.Dataset.from_list(load_pair_rows(source, where))


def load_eval_prompts(source: EvalData, where: str = "data.eval") -> list[EvalPrompt]:
    """The evaluation prompts (capped at max_prompts), with reference responses when configured."""
    rows, places = _read_placed(source, where)
    rows, places = rows[: source.max_prompts], places[: source.max_prompts]
    if not rows:
        raise UserError(f"{where}: {source.path} has no rows")
    columns = source.columns
    _column(rows, columns.prompt, f"{where}.columns.prompt", source.path, places)
    if columns.reference:
        _column(rows, columns.reference, f"{where}.columns.reference", source.path, places)
    prompts = []
    for index, row in enumerate(rows):
        prompt = row[columns.prompt]
        _check_value(prompt, where, index, columns.prompt, places[index])
        reference = row[columns.reference] if columns.reference else None
        if _is_messages(reference):
            reference = reference[-1]["content"]
        if reference is not None and not isinstance(reference, str):
            _check_value(reference, where, index, columns.reference, places[index])
        prompts.append(EvalPrompt(prompt, reference))
    return prompts


def is_conversational(pair: Mapping[str, Any]) -> bool:
    """Whether a row uses message lists rather than plain strings."""
    return not isinstance(pair.get("prompt", pair.get("chosen")), str)
