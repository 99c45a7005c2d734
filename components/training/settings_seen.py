"""What `train` reads of a dataset's settings, as the file through which DVC sees them.

`train` is the stage that spends privacy budget, so nothing but a change in what it reads
may re-run it. It used to depend on the dataset's whole params.yaml entry (`datasets.<name>`)
with the `train` and `privacy` sections: editing any override in the entry (how much to
prune, what to explain, the report's title) or moving the export to another path re-ran
training on the same data and spent ε again. The stages before it re-run on such an edit
too, but write the same bytes (the vault's nonces are synthetic, the split keyed, pretraining
seeded), so DVC stops there. Now the `fingerprint` stage, which runs first on every
`dvc repro`, writes each dataset's effective settings less the sections train's code never
reads to `artifacts/fingerprints/train/<dataset>.json`, and train depends on that file.

A deny-list, not an allow-list: a section train starts to read is seen until it is listed
here, so a mistake costs a needless run, never a stale model (a test reads train's code for
the sections listed).
"""

from __future__ import annotations

from pathlib import Path

from privflow.errors import PrivflowError
from privflow.settings import load_settings

TRAIN_FOLDER = "train"  # inside the fingerprints' folder: artifacts/fingerprints/train/<dataset>.json
NOT_READ_BY_TRAIN = frozenset({"ingest", "compress", "explain", "report"})


def train_settings_file(fingerprints: Path, dataset: str) -> Path:
    return fingerprints / TRAIN_FOLDER / f"{dataset}.json"


def settings_seen_by_train(project: Path, dataset: str) -> dict:
    """The dataset's settings as train reads them (defaults filled in); settings that do not load
    are marked invalid, and train itself says why when it runs. Only what params.yaml says goes
    in, never how it was reached (a path to it), so every process writes the same bytes."""
    try:
        settings = load_settings(dataset, project / "params.yaml")
    except PrivflowError:
        return {"dataset": dataset, "invalid": True}
    return {"dataset": dataset, "settings": settings.model_dump(mode="json", by_alias=True,
                                                                exclude=set(NOT_READ_BY_TRAIN))}
