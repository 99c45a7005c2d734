"""The pipeline as DVC declares it: stage order from dvc.yaml, each stage run through DVC.

Running every stage through `Repo.reproduce` (never by calling the component directly)
means the flow and `dvc repro` cannot disagree: DVC decides what is stale, skips what is
not, and records every hash in dvc.lock.
"""

from __future__ import annotations

import os
import re
import sys
from dataclasses import dataclass
from pathlib import Path

import networkx as nx
from dvc.exceptions import NotDvcRepoError, ReproductionError
from dvc.repo import Repo
from dvc.stage import PipelineStage

from privflow.errors import EXIT_TRANSIENT, PrivflowError
from privflow.flows import dvcfiles  # noqa: F401 (how DVC writes and reads its files here)
from privflow.lockfile import LOCK, looks_complete, restore_lock, write_atomically
from privflow.project import runs_every_time


class StageFailed(Exception):
    """A stage refused or failed; its own message (on stderr) says why. Not retried."""

    def __init__(self, message: str, stage: str = ""):
        super().__init__(message)
        self.stage = stage

    def __reduce__(self):  # keeps the stage across processes (Dask workers pickle exceptions)
        return type(self), (str(self), self.stage)


class TransientStageFailure(StageFailed):
    """A stage exited with EX_TEMPFAIL: the flow may retry it."""


class DatasetsFailed(StageFailed):
    """A stage of one or more datasets failed: each of those datasets stopped there, the others
    ran to their end. `failures`: the failed stages, each with its words; `ran`: every stage
    that finished, and whether it ran or was up to date."""

    def __init__(self, failures: list[StageFailed], ran: dict[str, bool]):
        super().__init__("; ".join(str(failure) for failure in failures), failures[0].stage)
        self.failures, self.ran = failures, ran

    def __reduce__(self):  # Dask workers pickle it (see StageFailed)
        return type(self), (self.failures, self.ran)


@dataclass(frozen=True)
class Dag:
    """dvc.yaml as DVC resolves it, read once: loading DVC's index costs about a second here,
    so a command reads it once and asks this, never DVC again per stage."""

    order: list[str]  # every stage after every stage it depends on
    outputs: dict[str, list[Path]]  # where each stage writes (the paths live in dvc.yaml only)
    readers: nx.DiGraph  # stage -> the stages that read its outputs
    stale: dict[str, list]  # DVC's status entries of each out-of-date stage (empty unless asked)

    def reports_dir(self, dataset: str) -> Path:
        """The folder of a dataset's report outputs."""
        return self.outputs[f"report@{dataset}"][0].parent


_READ: dict[Path, tuple[tuple, Dag]] = {}  # this process's last read of each project: what it was made of, the graph


def read_dag(root: Path, with_status: bool = False) -> Dag:
    """The project's stages, their order and outputs; with DVC's status when asked (one index load).
    Without status, a graph this process already read from the same dvc.yaml and params.yaml
    (its `foreach` runs over the datasets) is not loaded again: a run's flow asks for the order,
    then for each dataset's reports folder. The repository is still opened each time: opening it
    mends a dvc.lock that a killed run cut (a run that waited for that one must not trust it)."""
    made_of = tuple(_contents(root / name) for name in ("dvc.yaml", "params.yaml"))
    with open_repo(root) as repo:
        known = _READ.get(root.resolve())
        if not with_status and known and known[0] == made_of:
            return known[1]
        graph = _graph(root, repo)
        ordered = reversed(list(nx.lexicographical_topological_sort(graph, key=str)))
        order = [stage.name for stage in ordered if isinstance(stage, PipelineStage)]
        outputs = {stage.name: [Path(out.fs_path) for out in stage.outs]
                   for stage in repo.index.stages if isinstance(stage, PipelineStage)}
        readers = nx.DiGraph()
        readers.add_nodes_from(order)
        readers.add_edges_from((upstream.name, stage.name) for stage, upstream in graph.edges
                               if isinstance(stage, PipelineStage) and isinstance(upstream, PipelineStage))
        stale = _status(root, repo, outputs) if with_status else {}
    _READ[root.resolve()] = made_of, Dag(order, outputs, readers, {})
    return Dag(order, outputs, readers, stale) if with_status else _READ[root.resolve()][1]


def _graph(root: Path, repo: Repo) -> nx.DiGraph:
    """DVC's stage graph (edges point from a stage to the stages it depends on); a dataset named
    like the fingerprints' folder would write inside it, and is refused in words."""
    from dvc.exceptions import OverlappingOutputPathsError

    from privflow.data.fingerprint import FINGERPRINTS

    try:
        return repo.index.graph
    except OverlappingOutputPathsError as error:
        if f"@{FINGERPRINTS}" not in str(error):  # not a stage of a dataset called so (e.g. `ingest@fingerprints`)
            raise
        raise PrivflowError(f"{root / 'params.yaml'}: a dataset may not be called '{FINGERPRINTS}' "
                            f"(artifacts/{FINGERPRINTS}/ holds every dataset's fingerprint); rename it") from None


FINGERPRINT_STAGE = "fingerprint"  # the one stage that takes every dataset's fingerprint (privflow.data.fingerprint)


def _status(root: Path, repo: Repo, outputs: dict[str, list[Path]]) -> dict[str, list]:
    """DVC's status of each out-of-date stage, once the sources' fingerprints are up to date.
    DVC calls the fingerprint stage changed every time (it must, having no dep it may hash);
    with its output refreshed first, whether a source changed shows where it matters, as that
    dataset's ingest's changed dep, and the fingerprint stage itself is left out."""
    from privflow.data.fingerprint import refresh_fingerprints

    settled = FINGERPRINT_STAGE in outputs and refresh_fingerprints(root, outputs[FINGERPRINT_STAGE][0])
    stale = {name.split(":")[-1]: entries for name, entries in repo.status().items()}
    return {name: entries for name, entries in stale.items() if not (settled and name == FINGERPRINT_STAGE)}


def _recorded_outputs(repo: Repo, target: str) -> list:
    """What dvc.lock records of a stage's outputs now (their hashes; empty ones if never run)."""
    (stage,) = repo.stage.collect(target)
    return [out.hash_info for out in stage.outs]


def _contents(path: Path) -> bytes | None:
    return path.read_bytes() if path.exists() else None


def stage_order(root: Path) -> list[str]:
    """dvc.yaml's stages, each after every stage it depends on."""
    return read_dag(root).order


def open_repo(root: Path, mend: bool = True, **options) -> Repo:
    """The project's DVC repository, its dvc.lock mended if a killed run cut it (unless not
    `mend`); or a clear refusal outside one."""
    try:
        repo = Repo(str(root), **options)
    except NotDvcRepoError:
        raise PrivflowError(f"{root.resolve()}: not a privflow project (no DVC repository); "
                            "run privflow from the project's root, or make one with `privflow init`") from None
    for mended in ([repair_lock(repo), repair_rwlock(repo)] if mend else []):
        if mended:
            print(f"privflow: {mended}", file=sys.stderr)
    return repo


def lock_problem(repo: Repo) -> str | None:
    """Why the project's dvc.lock cannot be trusted as it stands, or None: DVC refuses it, or
    DVC would load it but did not finish writing it (privflow.lockfile.looks_complete). Those
    cuts are the dangerous ones: an empty lock reads as "nothing recorded", an out cut before
    its hash as "changed", and taking them at their word runs stages again (train spending
    anew)."""
    from dvc.dvcfile import Lockfile
    from dvc.exceptions import DvcException

    root = Path(repo.root_dir)
    lock = root / LOCK
    if not lock.exists():
        return None
    try:
        Lockfile(repo, str(lock), verify=False).load()
    except DvcException as error:
        return " ".join(str(error).split())
    if not looks_complete(lock.read_text(encoding="utf-8", errors="replace")):
        return "it ends part-way through what DVC was writing" if lock.stat().st_size else "it is empty"
    return None


def repair_lock(repo: Repo) -> str | None:
    """Put back the last complete dvc.lock if DVC cannot use this one; what was done, or None."""
    problem = lock_problem(repo)
    if not problem:
        return None
    mended = restore_lock(Path(repo.root_dir), problem)
    if mended is None:
        raise PrivflowError(
            f"{Path(repo.root_dir) / LOCK}: {problem}, and privflow holds no complete copy of it; put back the "
            f"committed one (`git checkout {LOCK}`), then run again: stages recorded since then run again")
    return mended


def repair_rwlock(repo: Repo) -> str | None:
    """DVC records which process reads or writes which path in .dvc/tmp/rwlock, rewriting it
    in place (`open(path, "w")`, then the JSON) as every stage starts and ends; a run killed
    in that instant leaves it cut, and DVC then refuses every stage ("Unable to read
    RWLock-file ... JSON structure is corrupted"). Its entries only matter while their
    processes live, and DVC already ignores those of dead ones; so a cut one is replaced by
    an empty one, under DVC's own guard for that file (the cut file kept for an audit)."""
    import json
    import shutil

    from dvc.lock import make_lock
    from dvc.rwlock import RWLOCK_FILE, RWLOCK_LOCK

    path = Path(repo.tmp_dir) / RWLOCK_FILE

    def readable() -> bool:
        try:
            json.loads(path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            return True
        except (ValueError, UnicodeDecodeError):
            return False
        return True

    if readable():
        return None
    with make_lock(str(path.with_name(RWLOCK_LOCK)), tmp_dir=repo.tmp_dir,
                   hardlink_lock=repo.config["core"].get("hardlink_lock", False)):
        if readable():  # another process mended it first
            return None
        kept = Path(repo.root_dir) / ".privflow" / "dvc-rwlock.cut"
        kept.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(path, kept)
        write_atomically(path, "{}")
    return (f"{path} was cut short (a run was killed while DVC recorded its path locks); replaced by an empty "
            f"one, as no killed process holds a lock. The cut file is kept as {kept}")


def stage_outputs(root: Path, stage: str) -> list[Path]:
    """Where dvc.yaml says one stage writes."""
    return read_dag(root).outputs[stage]


def dataset_of(stage: str) -> str:
    """`train@churn` -> `churn`: dvc.yaml runs every stage once per dataset, but one for all
    (`fingerprint` -> "")."""
    return stage.partition("@")[2]


def stages_for(order: list[str], datasets: list[str]) -> list[str]:
    """The stages a run of `datasets` goes through: theirs, and the ones shared by every dataset."""
    return [stage for stage in order if dataset_of(stage) in ("", *datasets)]


def reports_dir(root: Path, dataset: str) -> Path:
    """The folder of a dataset's report outputs, as dvc.yaml declares them."""
    return read_dag(root).reports_dir(dataset)


def _causes(error: BaseException | None) -> list[str]:
    messages = []
    while error is not None:
        messages.append(str(error))
        error = error.__cause__
    return messages


def _exit_status(messages: list[str]) -> int | None:
    # DVC keeps a failed command's exit status only in its message: "... exited with N".
    for message in messages:
        match = re.search(r"exited with (-?\d+)", message)
        if match:
            return int(match.group(1))
    return None


def reproduce_stage(root: Path, stage: str) -> bool:
    """Bring one stage up to date; True if it ran, False if DVC found it current."""
    bin_dir = str(Path(sys.executable).parent)  # stage commands call `python`: ours
    if not os.environ.get("PATH", "").startswith(bin_dir):
        os.environ["PATH"] = bin_dir + os.pathsep + os.environ.get("PATH", "")
    try:
        # wait for DVC's repository lock rather than fail: with datasets side by side, another
        # process may be recording its stage (DVC holds the lock only to check and record)
        # mend=False: the flow mended the project once as it read the stage order (stage_order),
        # and its own DVC writes cannot cut a file; checking again costs ~0.1 s a stage
        with open_repo(root, mend=False, _wait_for_lock=True) as repo:
            # a bare stage name resolves against the current directory, not against `root`
            target = f"{Path(repo.root_dir) / 'dvc.yaml'}:{stage}"
            recorded = _recorded_outputs(repo, target) if runs_every_time(stage) else None
            ran = repo.reproduce(targets=[target], single_item=True)
            # a stage DVC runs every time "ran" only when what dvc.lock records of it changed (a new fingerprint)
            return bool(ran) and (recorded is None or recorded != [out.hash_info for out in ran[0].outs])
    except ReproductionError as error:
        # DVC's messages name stages, commands and paths, never data.
        messages = _causes(error)
        status = _exit_status(messages)
        failure = TransientStageFailure if status == EXIT_TRANSIENT else StageFailed
        raise failure(f"stage '{stage}' failed: {'; '.join(messages)}", stage) from None
