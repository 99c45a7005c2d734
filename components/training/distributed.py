"""DPDDP: one DP-SGD run over several processes, launched with torchrun.

The same semantics as Opacus' DifferentiallyPrivateDistributedDataParallel with its
distributed optimizer: every process Poisson-samples its own share of the privacy units at
the plan's rate q (so the union is a Poisson sample of all units at q), clips per unit,
and the clipped sums are all-reduced; only rank 0 adds noise, so the sum carries exactly one
draw of N(0, (sigma C)^2). The accountant therefore sees the same (sigma, q, steps) as in one
process and gives the same epsilon. gloo on CPU, nccl on GPUs.

The parent (the train stage) has already planned and charged the run; the workers decrypt
the splits themselves and rank 0 hands back the weights and the curve through a private
temporary folder (weights after DP-SGD are the mechanism's output, not raw data).
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
import tempfile
from dataclasses import asdict
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from privflow.artifacts import open_vault, read_json
from privflow.catalog import DATASET
from privflow.errors import PrivflowError
from privflow.modeling.models import build_model, load_weights, weights_of
from privflow.privacy.accounting import DpSgdPlan
from privflow.settings import Settings, load_settings
from privflow.training.charge import privacy_unit_bound
from privflow.training.io import load_split, read_pretrained
from privflow.training.loop import TrainResult, World, resolve_device, train_private

RESULT, WEIGHTS = "result.json", "model.safetensors"


def train_distributed(settings: Settings, description: dict, data_dir: Path, pretrained_dir: Path,
                      plan: DpSgdPlan, run_id: str) -> TrainResult:
    t = settings.train
    with tempfile.TemporaryDirectory(prefix="privflow-ddp-") as folder:
        job = Path(folder)
        (job / "job.json").write_text(json.dumps({
            "dataset": settings.dataset.name, "data": str(data_dir.resolve()), "pretrained": str(pretrained_dir.resolve()),
            "plan": asdict(plan), "run_id": run_id, "cwd": os.getcwd()}))
        command = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={t.processes}",
                   "-m", "privflow.training.distributed", str(job)]
        completed = subprocess.run(command, check=False)
        if completed.returncode != 0:
            raise PrivflowError(f"DPDDP training over {t.processes} processes failed (torchrun exit "
                                f"{completed.returncode}); the run's charge stands, its checkpoint is kept")
        result = json.loads((job / RESULT).read_text())
        digests = {(job / f"rank{r}.sha256").read_text() for r in range(t.processes)}
        if len(digests) != 1:
            raise PrivflowError("DPDDP ranks ended with different weights: the all-reduce is broken")
        model = build_model(t.model, len(description["features"]), len(description["classes"]),
                            t.hidden_units, t.input_shape)
        load_weights(model, load_file(job / WEIGHTS))
    return TrainResult(model.eval(), result["curve"], result["epsilon"], result["steps"],
                       result["resumed_from_step"], result["dropped_rows"], result["history"])


def weights_digest(model: torch.nn.Module) -> str:
    digest = hashlib.sha256()
    for name, tensor in sorted(weights_of(model).items()):
        digest.update(name.encode() + tensor.numpy().tobytes())
    return digest.hexdigest()


def worker(job: Path) -> None:
    """One torchrun process: rank and world size come from torchrun's environment."""
    spec = json.loads((job / "job.json").read_text())
    os.chdir(spec["cwd"])
    settings = load_settings(spec["dataset"])
    device = resolve_device(settings.train.device)
    torch.distributed.init_process_group("nccl" if device.type == "cuda" else "gloo")
    world = World(torch.distributed.get_rank(), torch.distributed.get_world_size())
    if device.type == "cuda":
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", 0)))
    try:
        data = Path(spec["data"])
        description = read_json(data / DATASET)
        vault = open_vault()
        train, test = (load_split(vault, description, split, data) for split in ("train", "test"))
        from privflow.training.checkpoint import checkpoint_for

        pretraining, start = read_pretrained(Path(spec["pretrained"]))
        bound = privacy_unit_bound(description, settings)
        result = train_private(train, test, DpSgdPlan(**spec["plan"]), settings.train, len(description["classes"]),
                               start, secure=settings.privacy.secure_noise, rows_per_unit=bound,
                               checkpoint=checkpoint_for(settings, description, pretraining, bound),
                               run_id=spec["run_id"], world=world)
        (job / f"rank{world.rank}.sha256").write_text(weights_digest(result.model))
        if world.rank == 0:
            save_file(weights_of(result.model), job / WEIGHTS)
            (job / RESULT).write_text(json.dumps({
                "curve": result.curve, "epsilon": result.epsilon, "steps": result.steps, "history": result.history,
                "resumed_from_step": result.resumed_from_step, "dropped_rows": result.dropped_rows}))
    finally:
        torch.distributed.destroy_process_group()


if __name__ == "__main__":
    worker(Path(sys.argv[1]))
