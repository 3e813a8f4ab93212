"""Work shared by every trial of a sweep, cached under `cache/`: tokenized training data, reference log-probs.

The training sets as TRL tokenizes them, and the fixed reference model's log-probabilities of every training
example, which are handed to TRL as its precomputed reference columns, so no trial runs a reference forward
pass. Both are kept in memory for the worker's life and under the sweep's `cache/` for every other worker and
resumed sweeps, keyed by a hash of everything they depend on. Moving-reference (TR-*) methods keep their own.
"""

from __future__ import annotations

import hashlib
import io
import json
import tempfile
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import datasets
import torch

from sweep.io import atomic_dir, file_lock, json_digest, package_versions, write_bytes
from sweep.train import hooks
from sweep.train.hooks import dataset_fingerprint

CACHE_FORMAT = 1
REFERENCE_BATCH_FACTOR = 4
"""The reference pass uses batches this many times the training batch (no gradients, no optimizer state)."""


class SharedTraining:
    """Work shared by every trial of a sweep: tokenized training sets and fixed-reference log-probabilities.

    Each result is computed once per key under a file lock, kept in memory for the worker's life, and stored
    under `cache_dir` (`prepared/<key>/`, a saved `datasets.Dataset`; `reference/<key>.pt`, a dict of
    tensors) for every other worker and resumed sweeps. A key hashes the inputs the result depends on,
    the tokenizer's files and the library versions, so any change computes it anew.
    """

    def __init__(self, cache_dir: str | Path, tokenizer):
        self.cache_dir = Path(cache_dir)
        self.tokenizer_hash = _tokenizer_hash(tokenizer)
        self._prepared: dict[str, datasets.Dataset] = {}
        self._references: dict[str, dict[str, torch.Tensor]] = {}
        self._rows: dict[str, dict[str, dict]] = {}
        self._hashes: dict[str, str] = {}
        self._versions = package_versions("torch", "transformers", "trl", "datasets")

    def key(self, kind: str, **inputs: Any) -> str:
        """A short hash of what a cached result depends on."""
        payload = {"format": CACHE_FORMAT, "kind": kind, "tokenizer": self.tokenizer_hash, **inputs}
        payload["versions"] = self._versions
        return json_digest(payload)

    def content_hash(self, dataset: datasets.Dataset) -> str:
        """A hash of a dataset's rows in order (memoized by the dataset's fingerprint)."""
        fingerprint = dataset_fingerprint(dataset)
        if fingerprint not in self._hashes:
            digest = hashlib.sha256(json.dumps(dataset.column_names).encode())
            for batch in dataset.iter(batch_size=1024):
                digest.update(json.dumps(batch, sort_keys=True, default=str).encode())
            self._hashes[fingerprint] = digest.hexdigest()
        return self._hashes[fingerprint]

    def prepared(self, key: str, prepare: Callable[[], datasets.Dataset]) -> datasets.Dataset:
        """The training set TRL prepared for `key`: from memory, from the cache, or prepared and stored."""
        if key not in self._prepared and _world_size() > 1:
            self._prepared[key] = _prepared_together(self.cache_dir / "prepared" / key, prepare)
        if key not in self._prepared:
            folder = self.cache_dir / "prepared" / key
            _store_once(folder, prepare)
            self._prepared[key] = datasets.load_from_disk(str(folder))
        return self._prepared[key]

    def move_to(self, cache_dir: str | Path) -> None:
        """Use `cache_dir` from now on, storing there the tokenized sets held in memory (for other workers and
        resumed sweeps); reference log-probabilities are computed and stored as trials need them."""
        self.cache_dir = Path(cache_dir)
        for key, dataset in self._prepared.items():
            _store_once(self.cache_dir / "prepared" / key, lambda dataset=dataset: dataset)

    def reference(self, key: str, compute: Callable[[], dict[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
        """Reference log-probabilities for `key`: from memory, from the cache, or computed now and stored."""
        if key not in self._references:
            path = self.cache_dir / "reference" / f"{key}.pt"
            with file_lock(path.with_suffix(".lock")):
                if path.is_file():
                    values = torch.load(path, weights_only=True)
                else:
                    values = {name: tensor.detach().cpu() for name, tensor in compute().items()}
                    buffer = io.BytesIO()
                    torch.save(values, buffer)
                    write_bytes(path, buffer.getvalue())
            self._references[key] = values
        return self._references[key]

    def supply_reference(self, trainer, reference, identity: Any, paired: bool) -> float | None:
        """Give TRL the shared reference log-probabilities (of `reference`, known as `identity`) as
        precomputed columns, computing them when no worker has yet; return the seconds spent computing (None
        when they came from the cache, or when the trainer computes its own)."""
        data = hooks.data_key(trainer)
        if data is None or hooks.computes_own_reference(trainer):
            return None
        computed = []

        def compute() -> dict[str, torch.Tensor]:
            started = time.perf_counter()
            batch = REFERENCE_BATCH_FACTOR * trainer.args.per_device_train_batch_size
            values = hooks.reference_logps(trainer, reference, batch, paired=paired)
            computed.append(time.perf_counter() - started)
            return values

        key = self.key("reference", data=data, reference=identity, precision=hooks.precision_flags(trainer))
        values = self.reference(key, compute)
        hooks.use_precomputed_reference(trainer, reference_columns(values, hooks.ld_alpha(trainer)))
        return computed[0] if computed else None

    def rows(self, key: str) -> dict[str, dict]:
        """The memo of tokenized rows for one tokenizing setup (kept in memory only)."""
        return self._rows.setdefault(key, {})


def _world_size() -> int:
    """The processes of the torch.distributed group this process trains in (1 outside a launched trial)."""
    distributed = torch.distributed.is_available() and torch.distributed.is_initialized()
    return torch.distributed.get_world_size() if distributed else 1


def _prepared_together(folder: Path, prepare: Callable[[], datasets.Dataset]) -> datasets.Dataset:
    """A prepared training set in a process group: every rank prepares it (TRL's preparation holds barriers
    that every rank must reach) unless rank 0 finds it cached; rank 0 stores it; every rank reads it."""
    found = [folder.is_dir()]
    torch.distributed.broadcast_object_list(found, src=0)
    if not found[0]:
        dataset = prepare()
        if torch.distributed.get_rank() == 0:
            with file_lock(folder.with_suffix(".lock")):
                if not folder.is_dir():
                    _store(folder, dataset)
        torch.distributed.barrier()
    return datasets.load_from_disk(str(folder))


def _store_once(folder: Path, prepare: Callable[[], datasets.Dataset]) -> None:
    """Store `prepare()` as the cached training set `folder` unless a worker already has (under its lock)."""
    with file_lock(folder.with_suffix(".lock")):
        if not folder.is_dir():
            _store(folder, prepare())


def _store(folder: Path, dataset: datasets.Dataset) -> None:
    """Write a prepared training set into the cache as one atomic folder (the caller holds its lock)."""
    with atomic_dir(folder) as staging:
        dataset.save_to_disk(str(staging))


def _tokenizer_hash(tokenizer) -> str:
    """A hash of the tokenizer's saved files (vocabulary, merges, special tokens, chat template)."""
    digest = hashlib.sha256(type(tokenizer).__name__.encode())
    with tempfile.TemporaryDirectory() as folder:
        tokenizer.save_pretrained(folder)
        for path in sorted(Path(folder).iterdir()):
            digest.update(path.name.encode() + path.read_bytes())
    return digest.hexdigest()[:16]


def _model_stamp(path: str) -> list | None:
    """Name, size and modification time of a local model folder's files (None for a Hub id)."""
    folder = Path(path)
    if not folder.is_dir():
        return None
    return [(p.name, p.stat().st_size, p.stat().st_mtime_ns) for p in sorted(folder.iterdir()) if p.is_file()]


def reference_columns(values: Mapping[str, torch.Tensor], ld_alpha: float | None) -> dict[str, torch.Tensor]:
    """TRL's precomputed-reference columns from cached values (DPO's weigh the tail by `ld_alpha` if set)."""
    if "ref_logps" in values:
        return dict(values)
    return {
        f"ref_{side}_logps": values[f"{side}_total"]
        if ld_alpha is None
        else values[f"{side}_shared"] + ld_alpha * values[f"{side}_tail"]
        for side in ("chosen", "rejected")
    }
