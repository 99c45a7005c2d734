"""The pipeline as DVC declares it: stage order from dvc.yaml, each stage run through DVC.

Running every stage through `Repo.reproduce` (never by calling the component directly)
means the flow and `dvc repro` cannot disagree: DVC decides what is stale, skips what is
not, and records every hash in dvc.lock.
"""

from __future__ import annotations

import logging
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
    dataset's ingest's changed dep, and the fingerprint stage itself is left out, unless what
    dvc.lock records of its output is not what was just taken (see record_fingerprints)."""
    from privflow.data.fingerprint import refresh_fingerprints

    settled = FINGERPRINT_STAGE in outputs and refresh_fingerprints(root, outputs[FINGERPRINT_STAGE][0])
    stale = {name.split(":")[-1]: entries for name, entries in repo.status().items()}
    if settled and FINGERPRINT_STAGE in stale:
        stale[FINGERPRINT_STAGE] = [entry for entry in stale[FINGERPRINT_STAGE] if entry != "always changed"]
    return {name: entries for name, entries in stale.items() if entries or name != FINGERPRINT_STAGE}


def record_fingerprints(root: Path) -> None:
    """Have dvc.lock record the fingerprints as the plan just took them, for a run that starts no
    flow: a run that found a source missing recorded that, and once it is back nothing else is
    stale (the failed ingest's snapshot was put back), so no stage would record it; `dvc
    status` would then call the fingerprints changed until some run ran their stage."""
    with open_repo(root, mend=False) as repo:
        repo.commit(f"{Path(repo.root_dir) / 'dvc.yaml'}:{FINGERPRINT_STAGE}", force=True)


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
    from privflow.flows.dvc_repairs import repair_lock, repair_rwlock

    for mended in ([repair_lock(repo), repair_rwlock(repo)] if mend else []):
        if mended:
            print(f"privflow: {mended}", file=sys.stderr)
    return repo


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


def _quiet_dvc(repo: Repo) -> None:
    """DVC prints its lines through its own handlers (dvc.logger.setup, at its import); they
    also reached the root logger, where Prefect's console handler printed each again (a
    scheduled or deployed run's output, every line twice). And after every stage DVC advised
    `git add dvc.lock` and `dvc config core.autostage true`: the run records dvc.lock itself."""
    logging.getLogger("dvc").propagate = False
    repo.scm_context.quiet = True


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
            _quiet_dvc(repo)
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
        restore_recorded_outputs(root, stage)
        raise failure(f"stage '{stage}' failed: {'; '.join(messages)}", stage) from None


def restore_recorded_outputs(root: Path, stage: str) -> None:
    """Put back what dvc.lock records of a failed stage's outputs: DVC deleted them as the stage
    started, so a refused train took the last good model with it (`privflow predict` and the
    report's links then found nothing until a run succeeded). A stage never run has nothing to
    put back; neither has one whose outputs were never cached (DVC leaves those as they are)."""
    from dvc.exceptions import DvcException

    with open_repo(root, mend=False, _wait_for_lock=True) as repo:
        try:
            repo.checkout(targets=[f"{Path(repo.root_dir) / 'dvc.yaml'}:{stage}"], force=True, allow_missing=True)
        except DvcException:  # e.g. the cache lost the files: the outputs stay deleted, as DVC left them
            pass
