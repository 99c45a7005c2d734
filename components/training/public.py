"""Public data: found apart from the private source, read and checked like it, and trained on without DP.

The guard: the public folder may never be, contain or be inside the private source, and no
public file may have the same bytes as a private one; otherwise it is refused.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from privflow.data.coercion import coerce_batch
from privflow.data.features import EncodedData, encode_features
from privflow.data.records import RecordReader
from privflow.data.schema import DatasetSchema
from privflow.data.sources import SUFFIXES, disk_members, file_digest, list_source
from privflow.data.validation import validate_records
from privflow.errors import PrivacyError
from privflow.modeling.models import accuracy, build_model
from privflow.settings import IngestSettings, Settings
from privflow.training.epoch import run_epoch


def public_files(public: Path, private: Path) -> list[Path]:
    """The public folder's data files; refused if any of them is (or holds) private data."""
    public, private = public.resolve(), private.resolve()
    if public == private or public in private.parents or private in public.parents:
        raise PrivacyError(f"{public}: the public data folder overlaps the private source {private}; "
                           "public data must come from a separate place")
    files = sorted(p for p in public.iterdir() if p.is_file() and p.name.endswith(SUFFIXES)) if public.is_dir() else []
    private_digests = {file_digest(p) for p in list_source(private)}
    for path in files:
        if file_digest(path) in private_digests:
            raise PrivacyError(f"{path}: has the same bytes as a file of the private source {private}; "
                               "pretraining never reads private data: remove it from the public folder")
    return files


def encoded_rows(files: list[Path], schema: DatasetSchema, ingest: IngestSettings) -> EncodedData:
    """The records of plain (unsealed) files that pass the schema, encoded as `encrypt` does."""
    source = str(files[0].parent)
    outcome = validate_records(RecordReader.of(source, schema, ingest), disk_members(files), schema)
    parts = []
    for batch in RecordReader.of(source, schema, ingest).batches(disk_members(files)):
        typed, _ = coerce_batch(batch, schema)
        parts.append(encode_features(typed[~np.isin(batch.rows, outcome.rejected)], schema))
    return EncodedData(np.concatenate([p.features for p in parts]), np.concatenate([p.labels for p in parts]),
                       np.concatenate([p.units for p in parts]), parts[0].feature_names)


def read_public(files: list[Path], schema: DatasetSchema, settings: Settings) -> TensorDataset:
    data = encoded_rows(files, schema, settings.ingest)
    return TensorDataset(torch.from_numpy(data.features), torch.from_numpy(data.labels))


def pretrain(public: TensorDataset, settings: Settings, n_classes: int) -> tuple[nn.Module, float]:
    """Plain SGD on public data; returns the model and its accuracy on a held-back public tenth."""
    t, p = settings.train, settings.pretrain
    torch.manual_seed(t.init_seed)
    held_back = torch.arange(len(public)) % 10 == 0
    fit = TensorDataset(*(tensor[~held_back] for tensor in public.tensors))
    check = TensorDataset(*(tensor[held_back] for tensor in public.tensors))
    model = build_model(t.model, public.tensors[0].shape[1], n_classes, t.hidden_units, t.input_shape)
    optimizer = torch.optim.SGD(model.parameters(), lr=p.learning_rate, momentum=0.9)
    loader = DataLoader(fit, batch_size=t.batch_size, shuffle=True)
    for _ in range(p.epochs):
        run_epoch(model, loader, optimizer)
    return model, accuracy(model, *check.tensors[:2])
