"""Stage `pretrain`: train on data declared public, spending no privacy budget.

A dataset may declare public data (`pretrain:` in its params.yaml entry: where the data came
from, and how the private fine-tuning uses the result). Its files sit in the dataset's public
folder, `data/public/<dataset>/`, apart from the private source, and are checked against the
same schema. Training on them is ordinary (non-private) SGD: the data is public, so nothing
is charged. `train` then starts from these weights and fine-tunes under DP-SGD, all layers or
only the last (Tramèr & Boneh 2021; De et al. 2022: public pretraining is where most of
DP's accuracy gap closes).

The guard: the public folder may never be, contain or be inside the private source, and no
public file may have the same bytes as a private one; otherwise the stage refuses.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from safetensors.torch import save_file
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from privflow.artifacts import stage_paths, write_json
from privflow.data.features import EncodedData, encode_features
from privflow.errors import PrivacyError, run_stage
from privflow.modeling.models import accuracy, build_model, weights_of
from privflow.data.coercion import coerce_batch
from privflow.data.records import RecordReader
from privflow.data.schema import DatasetSchema, load_schema
from privflow.settings import IngestSettings, Settings, load_settings
from privflow.data.sources import SUFFIXES, disk_members, file_digest, list_source, snapshot_id
from privflow.stages.train import PRETRAIN_DESCRIPTION, PRETRAINED, run_epoch
from privflow.stages.validate import validate_records

DESCRIPTION = PRETRAIN_DESCRIPTION


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
    return model, accuracy(model, *check.tensors)


def main() -> None:
    args = stage_paths(__doc__, "public", "out")
    settings = load_settings(args.dataset)
    args.out.mkdir(parents=True, exist_ok=True)
    if settings.pretrain is None:
        write_json(args.out / DESCRIPTION, {"pretrained": False, "reason": "no public data declared"})
        print(f"pretrain: {args.dataset} declares no public data; training starts from random weights")
        return
    files = public_files(args.public, settings.ingest.source)
    if not files:
        raise PrivacyError(f"{args.public}: {args.dataset} declares public data (pretrain: in params.yaml) but "
                           f"the folder holds no {', '.join(SUFFIXES)} files; put the public data there")
    schema = load_schema(settings.validate_.schema_file)
    public = read_public(files, schema, settings)
    model, held_back_accuracy = pretrain(public, settings, len(schema.classes))
    save_file(weights_of(model), args.out / PRETRAINED)
    write_json(args.out / DESCRIPTION, {
        "pretrained": True, "origin": settings.pretrain.origin, "files": [p.name for p in files],
        "snapshot_id": snapshot_id(files, True), "rows": len(public), "epochs": settings.pretrain.epochs,
        "fine_tune": settings.pretrain.fine_tune, "public_held_back_accuracy": held_back_accuracy,
        "privacy_spent": 0.0})
    print(f"pretrain: {len(public)} public rows ({settings.pretrain.origin}), held-back accuracy "
          f"{held_back_accuracy:.3f}; no privacy budget spent")


if __name__ == "__main__":
    run_stage(main)
