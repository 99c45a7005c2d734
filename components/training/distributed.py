"""DPDDP: one DP-SGD run over several processes, on one host or several, launched with torchrun.

The same semantics as Opacus' DifferentiallyPrivateDistributedDataParallel with its
distributed optimizer: every process Poisson-samples its own share of the privacy units at
the plan's rate q (so the union is a Poisson sample of all units at q), clips per unit,
and the clipped sums are all-reduced; only one process (the leader) adds noise, so the sum
carries exactly one draw of N(0, (sigma C)^2). The accountant therefore sees the same
(sigma, q, steps) as in one process and gives the same epsilon. gloo on CPU, nccl on GPUs.

One host: `train.processes` processes, `torchrun --standalone`. Several hosts
(`train.nodes` > 1): the train stage's host launches its processes into torchrun's c10d
rendezvous at `train.rendezvous`, and every other host joins it with `privflow join`, from
its own checkout holding the same sealed splits (`dvc pull`) and a keyring that opens them.
The train stage has already planned and charged the run: the leader (the process that holds
the job) broadcasts the plan to every process, and a process whose settings or snapshot
differ from the leader's refuses before it reads a row. Rank 0's weights digest is compared
with every rank's through the process group, so no shared file system is assumed. The
leader hands the weights and the curve back through a private temporary folder (weights
after DP-SGD are the mechanism's output, not raw data).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import signal
import subprocess
import sys
import tempfile
from dataclasses import asdict
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from privflow.artifacts import open_vault, read_json
from privflow.catalog import ARTIFACTS, DATASET
from privflow.errors import PrivflowError
from privflow.modeling.models import load_weights, weights_of
from privflow.privacy.accounting import DpSgdPlan
from privflow.settings import Settings, TrainSettings, load_settings
from privflow.stageserver import die_with_parent
from privflow.training.charge import privacy_unit_bound
from privflow.training.io import load_split, read_pretrained
from privflow.training.loop import TrainResult, World, resolve_device, train_private

RESULT, WEIGHTS, ERROR = "result.json", "model.safetensors", "error.txt"


def torchrun(t: TrainSettings, dataset: str) -> list[str]:
    """torchrun for this host's processes: alone, or as one node of the c10d rendezvous."""
    command = [sys.executable, "-m", "torch.distributed.run", f"--nproc-per-node={t.processes}"]
    if t.nodes == 1:
        return [*command, "--standalone"]
    return [*command, f"--nnodes={t.nodes}", "--rdzv-backend=c10d", f"--rdzv-endpoint={t.rendezvous}",
            f"--rdzv-id=privflow-{dataset}"]


def settings_digest(settings: Settings) -> str:
    """What every process must agree on: the training and privacy settings."""
    return hashlib.sha256((settings.train.model_dump_json() + settings.privacy.model_dump_json()).encode()).hexdigest()


def train_distributed(settings: Settings, description: dict, data_dir: Path, pretrained_dir: Path,
                      plan: DpSgdPlan, run_id: str, model: torch.nn.Module) -> TrainResult:
    """Run the charged plan over torchrun's processes; `model` (as built for this run) gets the
    trained weights."""
    t = settings.train
    with tempfile.TemporaryDirectory(prefix="privflow-ddp-") as folder:
        job = Path(folder)
        (job / "job.json").write_text(json.dumps({
            "dataset": settings.dataset.name, "snapshot_id": description["snapshot_id"],
            "settings": settings_digest(settings), "data": str(data_dir.resolve()),
            "pretrained": str(pretrained_dir.resolve()), "plan": asdict(plan), "run_id": run_id, "cwd": os.getcwd()}))
        command = [*torchrun(t, settings.dataset.name), "-m", "privflow.training.distributed", "--job", str(job)]
        # torchrun ends its processes on SIGTERM; sent when this stage dies, even by SIGKILL, so a
        # killed run leaves no training behind to race the re-run that resumes it
        completed = subprocess.run(command, check=False, preexec_fn=lambda: die_with_parent(signal.SIGTERM))
        where = f"{t.nodes} nodes of {t.processes} processes" if t.nodes > 1 else f"{t.processes} processes"
        if completed.returncode != 0:
            why = (job / ERROR).read_text() if (job / ERROR).exists() else f"torchrun exit {completed.returncode}"
            raise PrivflowError(f"DPDDP training over {where} failed ({why}); the run's charge stands, its "
                                "checkpoint is kept")
        result = json.loads((job / RESULT).read_text())
        if len(set(result["digests"])) != 1:
            raise PrivflowError("DPDDP ranks ended with different weights: the all-reduce is broken")
        load_weights(model, load_file(job / WEIGHTS))
    return TrainResult(model.eval(), result["curve"], result["epsilon"], result["steps"],
                       result["resumed_from_step"], result["dropped_rows"], result["history"])


def join(dataset: str) -> int:
    """This host's processes join the multi-node run the train stage of `dataset` launches."""
    t = load_settings(dataset).train
    if t.nodes == 1:
        raise PrivflowError(f"dataset {dataset}: train.nodes is 1, so there is no multi-node run to join; set "
                            "train.nodes and train.rendezvous on every node (the same params.yaml)")
    return subprocess.run([*torchrun(t, dataset), "-m", "privflow.training.distributed", "--join", dataset],
                          check=False).returncode


def weights_digest(model: torch.nn.Module) -> str:
    digest = hashlib.sha256()
    for name, tensor in sorted(weights_of(model).items()):
        digest.update(name.encode() + tensor.numpy().tobytes())
    return digest.hexdigest()


def _agree_on_job(job: Path | None, world_size: int) -> tuple[dict, int]:
    """The job, as the lowest rank holding it broadcasts it, and that rank (the leader). The
    job's holders are the processes of the train stage's node; they must all be one node's."""
    holders: list = [None] * world_size
    node = os.environ.get("GROUP_RANK", "0")  # torchrun's rank of this process's node
    torch.distributed.all_gather_object(holders, node if job is not None else None)
    nodes = {held for held in holders if held is not None}
    if len(nodes) != 1:
        raise PrivflowError(f"{len(nodes)} nodes hold a training job, one must: run the train stage on one node and "
                            "`privflow join` on the others")
    leader = min(rank for rank, held in enumerate(holders) if held is not None)
    spec = [json.loads((job / "job.json").read_text()) if job is not None else None]
    torch.distributed.broadcast_object_list(spec, src=leader)
    return spec[0], leader


def _inputs(settings: Settings, description: dict, data: Path, pretrained: Path):
    """(model or None, train, test, public start) for this process, decrypted here."""
    t, vault = settings.train, open_vault()
    if t.model == "text":
        from privflow.training.text_finetune import load_text_training

        text = load_text_training(t, vault, description, data)
        return text.top, text.train, text.test, None
    train, test = (load_split(vault, description, split, data) for split in ("train", "test"))
    return None, train, test, read_pretrained(pretrained)[1]


def worker(job: Path | None, joined: str | None) -> None:
    """One torchrun process: rank and world size come from torchrun's environment."""
    if job is not None:
        own = json.loads((job / "job.json").read_text())
        os.chdir(own["cwd"])
    settings = load_settings(own["dataset"] if job is not None else joined)
    device = resolve_device(settings.train.device)
    torch.distributed.init_process_group("nccl" if device.type == "cuda" else "gloo")
    rank, size = torch.distributed.get_rank(), torch.distributed.get_world_size()
    if device.type == "cuda":
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", 0)))
    try:
        _train_here(job, settings, rank, size)
    except PrivflowError as error:
        if job is not None:
            (job / ERROR).write_text(str(error))
        raise
    finally:
        torch.distributed.destroy_process_group()


def _train_here(job: Path | None, settings: Settings, rank: int, size: int) -> None:
    """This process's share: agree on the job, check it, decrypt, train, hand back (the leader)."""
    spec, leader = _agree_on_job(job, size)
    data, pretrained = ((Path(spec["data"]), Path(spec["pretrained"])) if job is not None else
                        (Path(ARTIFACTS) / spec["dataset"] / "encrypt", Path(ARTIFACTS) / spec["dataset"] / "pretrain"))
    description = read_json(data / DATASET) if (data / DATASET).is_file() else None
    _all_agree(_mismatch(spec, settings, description, data), size)
    try:  # a key this node lacks, a split it cannot open: every process stops, none waits forever
        model, train, test, start = _inputs(settings, description, data, pretrained)
        problem = None
    except PrivflowError as error:
        problem = f"{os.uname().nodename} ({os.getcwd()}): {error}"
    _all_agree(problem, size)
    bound = privacy_unit_bound(description, settings)
    from privflow.training.checkpoint import checkpoint_for

    own = checkpoint_for(settings, description, read_pretrained(pretrained)[0], bound) if rank == leader else None
    checkpoint = LeadersCheckpoint(own, leader)
    result = train_private(train, test, DpSgdPlan(**spec["plan"]), settings.train, len(description["classes"]),
                           start, secure=settings.privacy.secure_noise,
                           noise_precision=settings.privacy.secure_noise_precision, rows_per_unit=bound, checkpoint=checkpoint,
                           run_id=spec["run_id"], world=World(rank, size, leader), model=model)
    digests: list = [None] * size
    torch.distributed.all_gather_object(digests, weights_digest(result.model))
    if rank == leader:
        save_file(weights_of(result.model), job / WEIGHTS)
        (job / RESULT).write_text(json.dumps({
            "curve": result.curve, "epsilon": result.epsilon, "steps": result.steps, "history": result.history,
            "resumed_from_step": result.resumed_from_step, "dropped_rows": result.dropped_rows,
            "digests": digests}))


class LeadersCheckpoint:
    """The run's checkpoint, on the train stage's disk only: the leader reads it there and hands
    what it read to every process through the process group, so a killed run resumes on every
    node under its one charge with no shared file system; only the leader writes it (the
    loop's rule)."""

    def __init__(self, own, leader: int):
        self.own, self.leader = own, leader

    def read(self):
        state = [self.own.read() if self.own is not None else None]
        torch.distributed.broadcast_object_list(state, src=self.leader)
        return state[0]

    def write(self, state) -> None:
        self.own.write(state)


def _mismatch(spec: dict, settings: Settings, description: dict | None, data: Path) -> str | None:
    """Why this process would train another model than the leader's, if it would."""
    host = os.uname().nodename
    if description is None:
        return (f"{host} ({os.getcwd()}): no sealed splits at {data}; `git pull` and `dvc pull` the encrypt stage's "
                "outputs there")
    if settings.dataset.name != spec["dataset"] or settings_digest(settings) != spec["settings"]:
        return (f"{host} ({os.getcwd()}): its train and privacy settings differ from those of the node running the "
                f"train stage of {spec['dataset']}; use the same params.yaml on every node")
    if description["snapshot_id"] != spec["snapshot_id"]:
        return (f"{host} ({os.getcwd()}): its sealed splits are of snapshot {description['snapshot_id'][:19]}, the "
                f"run trains on {spec['snapshot_id'][:19]}; `git pull` and `dvc pull` the encrypt stage's outputs there")
    return None


def _all_agree(problem: str | None, world_size: int) -> None:
    """Every process goes on, or every one refuses naming each process's problem."""
    problems: list = [None] * world_size
    torch.distributed.all_gather_object(problems, problem)
    found = sorted({p for p in problems if p})
    if found:
        raise PrivflowError("DPDDP refused: " + "; ".join(found))


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description="one DPDDP process (started by torchrun)")
    parser.add_argument("--job", type=Path, help="the train stage's job folder (the leader's host)")
    parser.add_argument("--join", metavar="DATASET", help="join the run of this dataset from another host")
    arguments = parser.parse_args()
    worker(arguments.job, arguments.join)
