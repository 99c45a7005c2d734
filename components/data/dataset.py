"""The model-ready dataset, sealed: scaled features, labels and units in a person-level split,
and the data owner's quarantine.

Features are scaled by the bounds the schema declares, never by statistics of the private
rows (a mean or a min would itself leak and is not covered by the DP guarantee). The
train/test split is by person and by a hash of the person's id with a seed, so a person
never sits on both sides and stays on the same side when new snapshots add rows.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
from safetensors.numpy import save as save_tensors

from privflow.catalog import QUARANTINE, SPLITS, quarantine_identity, split_file, split_identity
from privflow.crypto.vault import Vault
from privflow.data.coercion import coerce_batch
from privflow.data.features import NO_LABEL, EncodedData, encode_features
from privflow.data.records import FileSpan, RecordReader
from privflow.data.schema import DatasetSchema
from privflow.data.texts import packed_texts
from privflow.data.snapshot import SnapshotManifest, read_manifest
from privflow.data.sources import Member
from privflow.data.validation import ValidationOutcome
from privflow.errors import DatasetError
from privflow.settings import Settings


def in_test_split(units: np.ndarray, fraction: float, seed: int) -> np.ndarray:
    """Deterministic per-person assignment: hash(seed, id) below `fraction` -> test."""
    def score(unit: str) -> float:
        digest = hashlib.sha256(f"{seed}:{unit}".encode()).digest()
        return int.from_bytes(digest[:8], "big") / 2**64
    return np.array([score(u) < fraction for u in units], dtype=bool)


def read_quarantine(vault: Vault, snapshot_dir: Path, data_dir: Path) -> tuple[str, list[FileSpan], list[dict]]:
    """For the data owner: the source, its files' row spans, and each quarantined record with
    its reasons and values."""
    manifest = read_manifest(snapshot_dir)
    identity = quarantine_identity(manifest.dataset, manifest.snapshot_id)
    document = json.loads(vault.open(data_dir / QUARANTINE, identity))
    return manifest.source, [FileSpan(*s) for s in document["files"]], document["records"]


@dataclass
class _Collected:
    """What encrypt keeps while streaming: encoded valid rows, and the quarantined records."""

    features: list[np.ndarray] = field(default_factory=list)
    labels: list[np.ndarray] = field(default_factory=list)
    units: list[np.ndarray] = field(default_factory=list)
    names: list[str] = field(default_factory=list)
    texts: dict[str, list[np.ndarray]] = field(default_factory=dict)
    quarantined: dict[int, dict] = field(default_factory=dict)  # row -> values (sensitive)

    def add(self, data: EncodedData) -> None:
        self.features.append(data.features)
        self.labels.append(data.labels)
        self.units.append(data.units)
        self.names = data.feature_names
        for name, texts in data.texts.items():
            self.texts.setdefault(name, []).append(texts)

    def encoded(self, schema: DatasetSchema) -> EncodedData:
        if not self.labels:
            return EncodedData(np.empty((0, 0), np.float32), np.empty(0, np.int64), np.empty(0, str), [])
        return EncodedData(np.concatenate(self.features), np.concatenate(self.labels),
                           np.concatenate(self.units), self.names,
                           {name: np.concatenate(parts) for name, parts in self.texts.items()})


def collect_rows(reader: RecordReader, members: Iterable[Member], schema: DatasetSchema,
                 outcome: ValidationOutcome) -> _Collected:
    """Encode the valid records and keep the rejected ones' values, a batch at a time."""
    collected = _Collected()
    for batch in reader.batches(members):
        rejected = np.isin(batch.rows, outcome.rejected)
        for position in np.flatnonzero(rejected):
            collected.quarantined[int(batch.rows[position])] = batch.columns.slice(position, 1).to_pylist()[0]
        if (~rejected).any():
            typed, _ = coerce_batch(batch, schema)
            collected.add(encode_features(typed[~rejected], schema))
    return collected


def quarantine_document(collected: _Collected, reader: RecordReader, outcome: ValidationOutcome) -> bytes:
    """The failing records with their reasons, for the data owner only (sealed).

    A quarantined record keeps its values by column; an unparseable one its raw text.
    """
    reasons: dict[int, list[list[str]]] = {}
    for failure in outcome.failures:
        reasons.setdefault(failure.row, []).append([failure.column, failure.check])
    records = [
        {"row": row, "failures": why, "values": collected.quarantined.get(row),
         "text": reader.unparseable.get(row)}
        for row, why in sorted(reasons.items())
    ]
    return json.dumps({"files": [[s.label, s.first_row, s.rows] for s in outcome.spans],
                       "records": records}).encode()


def seal_dataset(members: Iterable[Member], manifest: SnapshotManifest, schema: DatasetSchema,
                 outcome: ValidationOutcome, settings: Settings, vault: Vault, out_dir: Path) -> dict:
    """Encode the valid rows, split them by person, seal train/test/quarantine to out_dir."""
    source, dataset, snapshot_id = manifest.source, manifest.dataset, manifest.snapshot_id
    reader = RecordReader.of(source, schema, settings.ingest)
    collected = collect_rows(reader, members, schema, outcome)
    if reader.rows_in != outcome.rows_in:
        raise DatasetError(f"{source}: snapshot has {reader.rows_in} rows but the validation "
                           f"decisions cover {outcome.rows_in}; re-run `validate`")
    data = collected.encoded(schema)
    if (data.labels == NO_LABEL).any():  # validation's `allowed` check quarantines these: a bug if reached
        raise DatasetError(f"{source}: {int((data.labels == NO_LABEL).sum())} valid row(s) have no class index; "
                           "re-run `validate`, and report this if it persists")
    if len(data.labels) == 0:
        raise DatasetError(f"{source}: no valid rows to train on; see metrics/{dataset}/validate.json")
    test_mask = in_test_split(data.units, settings.encrypt.test_fraction, settings.encrypt.split_seed)
    sealed = {}
    for split, mask in zip(SPLITS, (~test_mask, test_mask)):
        # a unit's index within the split, never its id: lets training bound and clip per person
        units, _ = pd.factorize(data.units[mask])
        payload = save_tensors({"features": data.features[mask], "labels": data.labels[mask],
                                "units": units.astype(np.int64),
                                **{key: array for name, texts in data.texts.items()
                                   for key, array in packed_texts(name, texts[mask]).items()}})
        artifact = vault.seal(payload, split_identity(dataset, snapshot_id, split), out_dir / split_file(split))
        sealed[split] = {"rows": int(mask.sum()), "units": int(units.max(initial=-1) + 1), "key_id": artifact.key_id}
    quarantine = vault.seal(quarantine_document(collected, reader, outcome),
                            quarantine_identity(dataset, snapshot_id), out_dir / QUARANTINE)
    _, rows_per_unit = np.unique(data.units, return_counts=True)
    return {
        "dataset": dataset, "snapshot_id": snapshot_id, "features": data.feature_names,
        "text_columns": schema.text_columns,
        "classes": schema.classes, "privacy_unit": schema.privacy_unit,
        # whether a person has several rows, never how many the busiest has: that is one
        # person's own figure, and this description is plaintext that DVC caches and pushes
        "several_rows_per_unit": bool(rows_per_unit.max() > 1), "units": len(rows_per_unit),
        "splits": sealed, "quarantine": {"key_id": quarantine.key_id},
    }
