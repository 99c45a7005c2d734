"""Every artifact a stage writes, named once: its folder, its file names, its vault identity.

Writers and readers import these names instead of each other (a reader used to import the
stage that writes, so stages stood on a staircase), and the dvc.yaml that `privflow init`
writes takes its paths from here too (privflow.project). Sealed files carry an
`ArtifactIdentity`: the vault refuses a file moved to another dataset, stage or snapshot.
"""

from __future__ import annotations

from privflow.crypto.vault import ArtifactIdentity

ARTIFACTS, METRICS, REPORTS = "artifacts", "metrics", "reports"
PUBLIC_DATA = "data/public"  # a dataset's public data (never charged): data/public/<dataset>

# ingest: the source's bytes, sealed, and the manifest that describes them (counts, hashes)
SNAPSHOT = "snapshot.sealed"
MANIFEST = "manifest.json"
# validate: the decisions only (valid row ids, quarantined cells and why), sealed
DECISIONS = "decisions.sealed"
# encrypt: the model-ready splits and the data owner's quarantine, sealed; a plaintext
# description of the dataset (feature names, classes, counts: no row values)
SPLITS = ("train", "test")
QUARANTINE = "quarantine.sealed"
DATASET = "dataset.json"
# pretrain: the description (public data used or not) and, when public data exists, weights
PRETRAIN_DESCRIPTION = "pretrain.json"
PRETRAINED = "pretrained.safetensors"
# train: the DP model (safe to release), its card, and the ledger's head after the charge
MODEL = "model.safetensors"
MODEL_CARD = "model.json"
LEDGER_ANCHOR = "ledger-anchor.sealed"
# compress: the int8 export, gzipped (magnitude pruning's zeros only shrink a compressed file)
EXPORT = "model.int8.onnx.gz"
SERVING_CARD = "serving.json"
MODEL_CARD_MD = "MODEL_CARD.md"
# report
REPORT_FILES = ("report.html", "report.md", "report.json")
REPORT_JSON = "report.json"
# metrics/<dataset>/<name>: what DVC shows with `dvc metrics show` / `dvc plots show`
VALIDATE_METRICS = "validate.json"
TRAIN_METRICS = "train.json"
TRAIN_CURVE = "train_curve.json"
COMPRESS_METRICS = "compress.json"
EXPLAIN_METRICS = "explain.json"
EVALUATE_METRICS = "evaluate.json"


def split_file(split: str) -> str:
    return f"{split}.sealed"


def anchor_identity(budget: str) -> ArtifactIdentity:
    """A ledger anchor is bound to its budget, not to a dataset's snapshot."""
    return ArtifactIdentity(budget, "train", "ledger-anchor", "ledger")


def snapshot_identity(dataset: str, snapshot_id: str) -> ArtifactIdentity:
    return ArtifactIdentity(dataset, "ingest", SNAPSHOT, snapshot_id)


def decisions_identity(dataset: str, snapshot_id: str) -> ArtifactIdentity:
    return ArtifactIdentity(dataset, "validate", DECISIONS, snapshot_id)


def quarantine_identity(dataset: str, snapshot_id: str) -> ArtifactIdentity:
    return ArtifactIdentity(dataset, "encrypt", QUARANTINE, snapshot_id)


def split_identity(dataset: str, snapshot_id: str, split: str) -> ArtifactIdentity:
    return ArtifactIdentity(dataset, "encrypt", split_file(split), snapshot_id)
