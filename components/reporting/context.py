"""One report context from the plaintext side files (counts, hashes, key ids, metrics) and the ledger."""

from __future__ import annotations

import argparse
from dataclasses import asdict
from datetime import UTC, datetime
from importlib.metadata import version
from pathlib import Path

import yaml

from privflow.artifacts import git_commit, read_json, sha256_file
from privflow.privacy.ledger import Charge, LedgerAnchor, PrivacyLedger, budget_of
from privflow.reporting.statements import privacy_statement


PACKAGES = ("torch", "opacus", "cryptography", "blake3", "pandera", "dvc", "prefect")


def dvc_outputs(lock: Path, dataset: str | None = None) -> list[dict]:
    """Every output DVC has recorded so far for the dataset, with the hash it tracks (ciphertext
    for sealed data)."""
    if not lock.exists():
        return []
    stages = yaml.safe_load(lock.read_text(encoding="utf-8")).get("stages", {})
    return [{"stage": name, "path": out["path"], "md5": out.get("md5", "?")}
            for name, stage in stages.items() for out in stage.get("outs", [])
            if dataset is None or name.endswith(f"@{dataset}")]


def budget_section(dataset: str, charges: list[Charge], cap: float, problems: list[str]) -> dict:
    budget = budget_of(dataset, cap, charges)
    return {"cap": cap, "spent": budget.spent, "spent_sum": budget.spent_sum, "remaining": budget.remaining,
            "delta_total": budget.delta_total, "charges": [asdict(c) for c in charges], "problems": problems}


def model_inputs(dataset: dict, text: dict | None) -> dict:
    """Which columns the model reads, and which it could have but does not: the text preset reads
    its one text column and none of the tabular features; the tabular presets read the features
    and no text column. A team that expected both learns it from the report, not by surprise."""
    features = list(dict.fromkeys(name.partition("=")[0] for name in dataset.get("features", [])))  # one-hot: a=x
    texts = dataset.get("text_columns", [])
    if text:
        return {"read": [text["column"]], "not_read": [*features, *(c for c in texts if c != text["column"])],
                "why": "the text preset reads one text column"}
    return {"read": features, "not_read": texts, "why": "a text column is read by the text preset only"}


def build_context(args: argparse.Namespace, title: str, ledger: PrivacyLedger, cap: float) -> dict:
    training, dataset = read_json(args.training), read_json(args.dataset_description)
    name = training["budget"].get("name", dataset["dataset"])
    anchor = training.get("ledger_anchor")
    anchors = [(str(args.training), LedgerAnchor(**anchor))] if anchor else []
    budget = budget_section(name, ledger.charges(name), cap, ledger.verify(anchors))
    return {
        "title": title, "generated_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "run_id": training["run_id"], "manifest": read_json(args.manifest),
        "validation": read_json(args.validation), "dataset": dataset, "training": training,
        "curve": read_json(args.curve), "evaluation": read_json(args.evaluation),
        "compression": read_json(args.compression), "budget": budget,
        "privacy_statement": privacy_statement(training),
        "explanation": read_json(args.explanation), "pretraining": read_json(args.pretraining),
        "audit": training.get("audit"), "text": training.get("text"),
        "inputs": model_inputs(dataset, training.get("text")),
        "lineage": {"model_sha256": sha256_file(args.model), "git_commit": git_commit(),
                    "dvc_outputs": dvc_outputs(Path("dvc.lock"), dataset["dataset"]),
                    "packages": {name: version(name) for name in PACKAGES}},
    }
