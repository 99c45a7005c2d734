"""Scale-out on an existing engine: datasets side by side on a local 2-worker Dask cluster
(prefect-dask's DaskTaskRunner), giving what the sequential run gives."""

from __future__ import annotations

import hashlib
import json
import os
import re

import pytest

from privflow.stagehost import THREAD_VARIABLES
from tests.workspace import demo_workspace

pytestmark = pytest.mark.slow

DATASETS = ("breast_cancer", "churn")
STABLE = ("pretrain/pretrain.json", "train/model.safetensors", "compress/model.int8.onnx.gz")


def outcome(workspace, dataset: str) -> dict:
    """What must not depend on how the run was scheduled: model bytes, counts, the privacy
    accounting and accuracy (training is reproducible here: a development noise seed)."""
    files = {name: hashlib.sha256((workspace.repo / "artifacts" / dataset / name).read_bytes()).hexdigest()
             for name in STABLE}
    validate = json.loads(workspace.metrics("validate", dataset).read_text())
    train = json.loads(workspace.metrics("train", dataset).read_text())
    return {"files": files, "rows": train["rows"], "accuracy": train["accuracy"],
            "validated": {k: validate[k] for k in ("rows_in", "rows_valid", "rows_quarantined")},
            "privacy": {k: train["privacy"][k] for k in ("noise_multiplier", "sample_rate", "steps", "epsilon_spent")}}


def test_two_datasets_side_by_side_on_two_dask_workers_match_the_sequential_run(tmp_path):
    sequential = demo_workspace(tmp_path / "sequential", churn=True)
    side_by_side = demo_workspace(tmp_path / "dask", churn=True)
    for workspace in (sequential, side_by_side):
        workspace.edit_params(train={"noise_seed": 5})
    # the side-by-side run is given no thread count: privflow shares the cores between its 2 workers
    # (the sequential run is given that share, so the models' bytes can be compared)
    shared = str(max(1, len(os.sched_getaffinity(0)) // 2))
    for name in THREAD_VARIABLES:
        side_by_side.env.pop(name, None)
        sequential.env[name] = shared
    sequential.run("privflow", "run", check=True)
    result = side_by_side.run("privflow", "run", "--workers", "2", check=True, columns=300)
    workers = dict(re.findall(r"dataset (\w+): stages ran in worker (\S+)", result.stdout + result.stderr))
    assert set(workers) == set(DATASETS) and len(set(workers.values())) == 2, result.stdout
    for dataset in DATASETS:
        assert outcome(side_by_side, dataset) == outcome(sequential, dataset), dataset
        assert (side_by_side.reports(dataset) / "report.html").exists()
        assert json.loads(side_by_side.metrics("train", dataset).read_text())["training"]["threads"] == int(shared)
    for workspace in (sequential, side_by_side):
        ledger = workspace.open_ledger()
        assert sorted(c.dataset for c in ledger.charges()) == sorted(DATASETS) and ledger.verify() == []
    assert side_by_side.out_of_date() == set()
