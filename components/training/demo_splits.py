"""A demo dataset's train and test splits as the pipeline makes them, in memory: valid rows
encoded as `encrypt` encodes them, split by person with the project's seed. For benchmarks
and tests that score the demo data (public data: scoring it costs nobody privacy)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
from torch.utils.data import TensorDataset

from privflow.data.dataset import in_test_split
from privflow.data.schema_file import load_schema
from privflow.settings import Settings, load_settings
from privflow.training.public import encoded_rows


@dataclass(frozen=True)
class DemoSplits:
    settings: Settings
    train: TensorDataset
    test: TensorDataset
    n_classes: int


def demo_splits(name: str, source: Path, params: Path) -> DemoSplits:
    """`name`'s splits from its `source` file (as write_demo_data wrote it), with the settings
    `params` (a params.yaml; its schema path is relative to its folder) declares for it."""
    settings = load_settings(name, params)
    schema = load_schema(params.parent / settings.validate_.schema_file)
    data = encoded_rows([source], schema, settings.ingest.model_copy(update={"source": source}))
    test = torch.from_numpy(in_test_split(data.units, settings.encrypt.test_fraction, settings.encrypt.split_seed))
    features, labels = torch.from_numpy(data.features), torch.from_numpy(data.labels)
    return DemoSplits(settings, TensorDataset(features[~test], labels[~test]), TensorDataset(features[test], labels[test]),
                      len(schema.classes))
