"""Build a throw-away privflow project (git + DVC) from this checkout, as a user's clone would be."""

from __future__ import annotations

import atexit
import functools
import gzip
import json
import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from privflow.crypto.keys import Keyring
from privflow.demo_data import churn_table, csv_text, demo_table, public_churn_table
from privflow.stagehost import HOST_ENV
from privflow.stageserver import start_host, stop_host
from tests.conftest import ROOT
from tests.repos import init_repo

PROJECT_FILES = ("components", "flows", "schemas", "dvc.yaml", "params.yaml", ".gitignore")
BIN = Path(sys.executable).parent


DATASET = "breast_cancer"  # the dataset every workspace has; make_workspace(churn=True) adds "churn"


@dataclass
class Workspace:
    base: Path
    repo: Path
    source: Path
    env: dict = field(default_factory=dict)

    def out_of_date(self) -> set[str]:
        """What `dvc status` finds out of date (privflow.flows.stages does the same in process)."""
        return out_of_date(json.loads(self.run("dvc", "status", "--json", check=True).stdout or "{}"))

    def artifacts(self, stage: str, dataset: str = DATASET) -> Path:
        return self.repo / "artifacts" / dataset / stage

    def metrics(self, name: str, dataset: str = DATASET) -> Path:
        return self.repo / "metrics" / dataset / f"{name}.json"

    def reports(self, dataset: str = DATASET) -> Path:
        return self.repo / "reports" / dataset

    def stage_command(self, stage: str, dataset: str = DATASET) -> str:
        """A stage's command as DVC runs it for one dataset (dvc.yaml's foreach resolved)."""
        template = yaml.safe_load((self.repo / "dvc.yaml").read_text())["stages"][stage]["do"]["cmd"]
        return template.replace("${key}", dataset)

    def checkpoint(self, dataset: str = DATASET) -> Path:
        return self.repo / ".privflow" / "checkpoints" / dataset / "train.sealed"

    def kill_train_at_first_checkpoint(self, dataset: str = DATASET) -> None:
        """Run the train stage's command and SIGKILL it as soon as its first checkpoint is written."""
        process = subprocess.Popen(shlex.split(self.stage_command("train", dataset)), cwd=self.repo, env=self.env,
                                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 300
        while not self.checkpoint(dataset).exists() and process.poll() is None and time.monotonic() < deadline:
            time.sleep(0.05)
        process.send_signal(signal.SIGKILL)
        assert process.wait() == -signal.SIGKILL, "training ended before its first checkpoint could be killed"

    def run(self, *args: str, check: bool = False, columns: int | None = None,
            hosted: bool = False) -> subprocess.CompletedProcess:
        """`hosted`: the stage commands run in this test process's shared stage host, even in a
        workspace made without one."""
        env = {**self.env, "COLUMNS": str(columns)} if columns else self.env  # rich tables: no wrapping
        env = {**env, HOST_ENV: shared_stage_host()} if hosted else env
        result = subprocess.run(args, cwd=self.repo, env=env, capture_output=True, text=True, timeout=900)
        with open(self.base / "logs" / "commands.log", "a") as log:
            log.write(f"$ {' '.join(args)}\n{result.stdout}\n{result.stderr}\n")
        if check and result.returncode != 0:
            raise AssertionError(f"{args} exited {result.returncode}:\n{result.stdout}\n{result.stderr}")
        return result

    @property
    def ledger(self) -> Path:
        return self.base / "home" / ".local" / "share" / "privflow" / "ledger.sqlite"

    def open_ledger(self):
        """The project's ledger, its entries authenticated under the project's keyring."""
        from privflow.privacy.ledger import PrivacyLedger, ledger_key

        return PrivacyLedger(self.ledger, key=ledger_key(Keyring.open(self.base / "keys" / "keyring.json",
                                                                        create=False)))

    def edit_params(self, **sections: dict) -> None:
        path = self.repo / "params.yaml"
        params = yaml.safe_load(path.read_text())
        for section, values in sections.items():
            params[section].update(values)
        path.write_text(yaml.safe_dump(params, sort_keys=False))

    def edit_dataset(self, dataset: str = DATASET, **values) -> None:
        """Change one entry of params.yaml's `datasets:` (its source, schema or overrides)."""
        path = self.repo / "params.yaml"
        params = yaml.safe_load(path.read_text())
        params["datasets"][dataset].update(values)
        path.write_text(yaml.safe_dump(params, sort_keys=False))


_SHARED_HOST: list[str] = []


def shared_stage_host() -> str:
    """One stage host per test process for the workspaces' commands, `dvc repro` included (as
    `privflow run` starts one per run): its imports are paid once per worker, not by every
    stage of every test. The plain path, each stage importing its own libraries, is what the
    kill-recovery tests run (hosted=False); a run starting its own host, the installed project."""
    if not _SHARED_HOST:
        name, host = start_host()
        atexit.register(stop_host, host)
        _SHARED_HOST.append(name)
    return _SHARED_HOST[0]


@functools.cache
def churn_exports() -> tuple[bytes, bytes]:
    """The small churn export and its public sample, gzipped (generated once per test process:
    a second of CPU each time otherwise); the same bytes every time, as the generators are seeded."""
    return (gzip.compress(csv_text(*churn_table(rows=2000)).encode(), mtime=0),
            gzip.compress(csv_text(*public_churn_table(rows=4000)).encode(), mtime=0))


def make_workspace(base: Path, header: list[str], rows: list[list[str]], schema: dict | None = None,
                   *, churn: bool = False, hosted: bool = True) -> Workspace:
    """A project whose `breast_cancer` dataset is (header, rows) under `schema` (default: the
    demo's); with `churn`, a small generated churn export sits beside it, as in the demo.
    `hosted`: its stage commands run in this test process's shared stage host."""
    repo, source = base / "repo", base / "hospital" / "export.csv"
    repo.mkdir(parents=True)
    for name in PROJECT_FILES:
        target = ROOT / name
        if target.is_dir():
            shutil.copytree(target, repo / name, ignore=shutil.ignore_patterns("__pycache__"))
        else:
            shutil.copy(target, repo / name)
    source.parent.mkdir()
    source.write_text("\n".join(",".join(r) for r in [header, *rows]) + "\n")
    if schema is not None:
        (repo / "schemas" / "test.yaml").write_text(yaml.safe_dump(schema))
    for folder in ("logs", "tmp", "keys", "home", "dvc-site"):
        (base / folder).mkdir()
    # Prefect's home is left to the embedded default (.privflow/prefect in the repo), as in `make run`.
    inherited = {k: v for k, v in os.environ.items() if not k.startswith(("PREFECT_", "PRIVFLOW_"))}
    workspace = Workspace(base, repo, source, env={
        **inherited, "PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}",
        "PRIVFLOW_KEYRING": str(base / "keys" / "keyring.json"),
        "HOME": str(base / "home"),  # the default ledger, ~/.local/share/privflow/, lands here
        # caches hold nothing of a project (Prefect's migrated empty database, fonts): shared, as on a machine
        "XDG_CACHE_HOME": os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache"),
        "TMPDIR": str(base / "tmp"),
        "DVC_SITE_CACHE_DIR": str(base / "dvc-site"),
        "PREFECT_SERVER_ANALYTICS_ENABLED": "false", "DO_NOT_TRACK": "1", "DVC_NO_ANALYTICS": "1",
        **({HOST_ENV: shared_stage_host()} if hosted else {}),
    })
    Keyring.open(base / "keys" / "keyring.json")  # as `privflow keys init` (or the first `privflow run`) does
    datasets = {DATASET: {"source": str(source),
                          "schema": "schemas/test.yaml" if schema else "schemas/breast_cancer.yaml"}}
    if churn:
        churn_source = base / "bank" / "churn.csv.gz"
        churn_source.parent.mkdir()
        churn_source.write_bytes(churn_exports()[0])
        datasets["churn"] = {"source": str(churn_source), "schema": "schemas/churn.yaml",
                             "train": {"epochs": 3, "batch_size": 256, "learning_rate": 0.3}}
    public = repo / "data" / "public"
    (public / DATASET).mkdir(parents=True)
    shutil.copy(ROOT / "data" / "public" / DATASET / "README.md", public / DATASET / "README.md")
    if churn:  # its public data: another bank's sample, as `make run` writes it (smaller here)
        (public / "churn").mkdir()
        (public / "churn" / "churn_public.csv.gz").write_bytes(churn_exports()[1])
    params = yaml.safe_load((repo / "params.yaml").read_text())
    if churn:
        datasets["churn"]["pretrain"] = params["datasets"]["churn"]["pretrain"]
    (repo / "params.yaml").write_text(yaml.safe_dump({**params, "datasets": datasets}, sort_keys=False))
    workspace.edit_params(train={"epochs": 5})
    init_repo(repo)  # as `git init && dvc init` leave it
    workspace.run("git", "config", "user.email", "test@example.org", check=True)
    workspace.run("git", "config", "user.name", "test", check=True)
    if churn:  # public data is DVC-tracked, as `make run` does: `dvc exp run --temp` copies need it
        workspace.run("dvc", "add", "-q", "data/public/churn", check=True)
    workspace.run("git", "add", "-A", check=True)
    workspace.run("git", "commit", "-qm", "project", check=True)
    return workspace


def demo_workspace(base: Path, *, churn: bool = False, hosted: bool = True) -> Workspace:
    """A project on the demo's well-formed breast-cancer rows (the stray-delimiter row left out)."""
    header, rows = demo_table()
    return make_workspace(base, header, [r for r in rows if len(r) == len(header)], churn=churn, hosted=hosted)


def files_containing(roots: list[Path], needles: list[bytes]) -> dict[str, list[str]]:
    """Every file under roots whose bytes contain any needle: {path: [needles found]}."""
    hits: dict[str, list[str]] = {}
    for root in roots:
        for path in [root] if root.is_file() else root.rglob("*"):
            if path.is_file() and not path.is_symlink():
                data = path.read_bytes()
                found = [n.decode() for n in needles if n in data]
                if found:
                    hits[str(path)] = found
    return hits


def out_of_date(status: dict) -> set[str]:
    """The stages in DVC's status (`dvc status --json`, Repo.status()) that are out of date,
    apart from the fingerprint stage: DVC calls it "always changed" every time (it has no dep it
    may hash; privflow.data.fingerprint), and must say nothing else while the sources are as
    they were."""
    always = {name.split(":")[-1] for name, entries in status.items() if entries == ["always changed"]}
    assert always <= {"fingerprint"}, always
    return {name.split(":")[-1] for name in status} - always


def stages_ran(dvc_output: str) -> set[str]:
    """The stages whose commands DVC ran, from what `dvc repro` printed."""
    return set(re.findall(r"Running stage '([^']+)'", dvc_output))
