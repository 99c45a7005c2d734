"""privflow as a user gets it: the built wheel installed into a fresh venv outside the checkout,
a project made by `privflow init` in its own folder, a full run, a no-op `dvc repro`, and DVC
seeing every edit of the code a stage loads (and no other).

The fresh venv holds privflow from the wheel alone; its third-party dependencies are this
checkout's (a .pth line), so the test needs no network and takes seconds to set up. The
checkout's editable privflow is not visible there: `privflow.__file__` is checked.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest
import yaml

from privflow.codedeps import STAGES, stage_code
from tests.conftest import ROOT
from tests.workspace import out_of_date, stages_ran

pytestmark = pytest.mark.slow
TOUCHED = {".py": "\n# touched by the code-deps test\n", ".j2": "\n{# touched by the code-deps test #}\n"}


def _sh(command: list[str], cwd: Path, env: dict, check: bool = True) -> subprocess.CompletedProcess:
    if command[0] == "dvc":  # dvc's own console script is not in the test venv (its deps come by .pth)
        command = [str(Path(env["PATH"].split(os.pathsep)[0]) / "python"), "-m", *command]
    result = subprocess.run(command, cwd=cwd, env=env, capture_output=True, text=True, check=False)
    if check and result.returncode != 0:
        raise AssertionError(f"{command} failed ({result.returncode}):\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}")
    return result


@pytest.fixture(scope="module")
def installed(tmp_path_factory):
    """A fresh venv with the wheel built from this checkout, and an environment that uses it."""
    base = tmp_path_factory.mktemp("installed")
    source = base / "source"
    source.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(ROOT / name, source / name)
    for folder in ("components", "flows"):
        shutil.copytree(ROOT / folder, source / folder, ignore=shutil.ignore_patterns("__pycache__"))
    _sh([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation", "-w", str(base / "dist"),
         str(source)], base, os.environ.copy())
    (wheel,) = (base / "dist").glob("privflow-*.whl")
    venv = base / "venv"
    _sh([sys.executable, "-m", "venv", str(venv)], base, os.environ.copy())
    site = venv / "lib" / f"python{sys.version_info.major}.{sys.version_info.minor}" / "site-packages"
    (site / "_privflow_test_deps.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    env = {key: value for key, value in os.environ.items() if not key.startswith(("VIRTUAL_ENV", "PYTHON"))}
    env.update(PATH=f"{venv / 'bin'}{os.pathsep}{env['PATH']}", DVC_NO_ANALYTICS="1", DO_NOT_TRACK="1",
               PRIVFLOW_KEYRING=str(base / "keyring.json"), PRIVFLOW_LEDGER=str(base / "ledger.sqlite"))
    _sh([str(venv / "bin" / "python"), "-m", "pip", "install", "-q", "--no-deps", "--no-index", str(wheel)], base, env)
    located = _sh([str(venv / "bin" / "python"), "-c", "import privflow; print(privflow.__file__)"], base, env)
    assert Path(located.stdout.strip()).parent == site / "privflow", located.stdout
    return {"base": base, "site": site / "privflow", "env": env, "venv": venv}


@pytest.fixture(scope="module")
def project(installed):
    """`privflow init payroll`, then `privflow init --demo` inside it, one demo dataset kept, and a full run."""
    base, env = installed["base"], installed["env"]
    made = _sh(["privflow", "init", "payroll"], base, env)
    assert "wrote dvc.yaml" in made.stdout and "next:" in made.stdout
    project = base / "payroll"
    _sh(["privflow", "init", "--demo"], project, env)
    params = yaml.safe_load((project / "params.yaml").read_text())
    params["datasets"] = {"breast_cancer": {**params["datasets"]["breast_cancer"],
                                            "train": {"epochs": 3, "batch_size": 128, "learning_rate": 1.0}}}
    (project / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    trace = base / "loaded.jsonl"
    run = _sh(["privflow", "run"], project, {**env, "PRIVFLOW_TRACE_IMPORTS": str(trace)})
    loaded = [json.loads(line) for line in trace.read_text().splitlines()]
    return {"path": project, "run": run, "loaded": loaded, **installed}


def test_the_wheel_carries_templates_and_project_files(installed):
    files = {p.relative_to(installed["site"]).as_posix() for p in installed["site"].rglob("*") if p.is_file()}
    assert {"reporting/templates/report.html.j2", "reporting/templates/model_card.md.j2",
            "project_files/params.yaml", "project_files/schemas/example.yaml", "flows/cli/__init__.py"} <= files


def test_a_full_run_then_a_noop_dvc_repro(project):
    root, env = project["path"], project["env"]
    assert (root / "reports" / "breast_cancer" / "report.html").is_file()
    code = yaml.safe_load((root / "dvc.yaml").read_text())["vars"][0]["privflow_code"]
    assert Path(code) == project["site"]  # the venv is outside the project: an absolute path
    repro = _sh(["dvc", "repro"], root, env)
    assert stages_ran(repro.stdout) == {"fingerprint"}, repro.stdout  # DVC takes it every time
    assert "Stage 'ingest@breast_cancer' didn't change, skipping" in repro.stdout
    assert stale_stages(root, env) == set()
    assert "ingest@breast_cancer" in _sh(["dvc", "dag"], root, env).stdout
    status = _sh(["privflow", "status"], root, env).stdout
    assert "breast_cancer" in status and "none" in status
    assert "remaining" in _sh(["privflow", "budget", "show"], root, env).stdout


def test_every_file_a_stage_loaded_is_one_of_its_deps(project):
    """The ground truth: the privflow files each stage process had loaded when it finished."""
    site = project["site"]
    assert {entry["stage"] for entry in project["loaded"]} == set(STAGES)
    for entry in project["loaded"]:
        loaded = {Path(f).relative_to(site).as_posix() for f in entry["files"]}
        missed = loaded - set(stage_code(entry["stage"]))
        assert not missed, (entry["stage"], missed)


def stale_stages(root: Path, env: dict) -> set[str]:
    status = json.loads(_sh(["dvc", "status", "--json"], root, env).stdout or "{}")
    return {name.split("@")[0] for name in out_of_date(status)}


# One process, DVC's own `Repo.status()` (what `dvc status` prints) after each edit: a `dvc
# status` process per file cost ~1.5 s of start-up each, 100+ times (209 s of this test in CI).
STATUS_AFTER_EACH_EDIT = """
import json, sys
from pathlib import Path
from dvc.repo import Repo
stale = {}
for path, touch in json.load(sys.stdin):
    original = Path(path).read_bytes()
    Path(path).write_bytes(original + touch.encode())
    try:
        with Repo(".") as repo:
            stale[path] = sorted(name for name, said in repo.status().items() if said != ["always changed"])
    finally:
        Path(path).write_bytes(original)
print(json.dumps(stale))
"""


def test_dvc_sees_every_code_edit_in_exactly_the_stages_that_load_it(project):
    root, env, site = project["path"], project["env"], project["site"]
    edited = sorted(p for p in site.rglob("*") if p.suffix in TOUCHED and "__pycache__" not in p.parts)
    python = str(Path(env["PATH"].split(os.pathsep)[0]) / "python")
    result = subprocess.run([python, "-c", STATUS_AFTER_EACH_EDIT], cwd=root, env=env, capture_output=True, text=True,
                            input=json.dumps([[str(p), TOUCHED[p.suffix]] for p in edited]), check=False)
    assert result.returncode == 0, result.stderr[-3000:]
    missed, needless = [], []
    for path, names in json.loads(result.stdout).items():
        relative = Path(path).relative_to(site).as_posix()
        expected = {stage for stage in STAGES if relative in stage_code(stage)}
        stale = {name.split(":")[-1].split("@")[0] for name in names}
        missed += [(relative, stage) for stage in expected - stale]
        needless += [(relative, stage) for stage in stale - expected]
    assert len(edited) > 60 and not missed and not needless, (missed, needless)
    assert stale_stages(root, env) == set()


def test_the_plan_says_what_would_run_and_spend_and_runs_nothing(project):
    root, env = project["path"], project["env"]
    assert "every stage is up to date; nothing runs, nothing is spent" in _sh(["privflow", "run", "--plan"], root, env).stdout
    params = root / "params.yaml"
    original = params.read_text()
    edited = yaml.safe_load(original)
    edited["train"]["max_grad_norm"] = 1.5  # only train reads the `train` section
    params.write_text(yaml.safe_dump(edited, sort_keys=False))
    try:
        printed = " ".join(_sh(["privflow", "run", "--plan"], root, env).stdout.split())
        # the plan ran nothing; it took what train reads of the settings (the fingerprint stage's
        # output, which dvc.lock records once that stage runs), and train's dep says the change
        assert stale_stages(root, env) == {"fingerprint", "train", "explain"}  # explain builds train's model
    finally:
        params.write_text(original)
    # the key and its values, from the version of the settings train last ran with (kept in .privflow/)
    assert "plan: train@breast_cancer runs: its settings changed: train.max_grad_norm 1.0 -> 1.5; spends epsilon " \
        in printed, printed
    assert "plan: ingest" not in printed
    _, tail = printed.split("spends epsilon ", 1)
    epsilon, rest = tail.split(" of budget breast_cancer, ", 1)
    assert 0 < float(epsilon) <= 3.0 and 0 < float(rest.split(" left after")[0]) < 30.0
    assert "plan: explain@breast_cancer runs: its settings changed: train.max_grad_norm 1.0 -> 1.5" in printed
    grouped = "plan: evaluate, compress, report of breast_cancer may run: if the stages before them write new outputs"
    assert grouped in printed, printed


def test_an_upgrade_reruns_what_changed_and_says_train_will_spend_first(project):
    root, env, site = project["path"], project["env"], project["site"]
    loop = site / "training" / "loop.py"
    loop.write_text(loop.read_text() + "\n# privflow 0.1.1: a changed training loop\n")
    printed = " ".join(_sh(["privflow", "run"], root, env).stdout.split())
    warning = printed.index("train@breast_cancer will re-run because privflow's code changed (training/loop.py): "
                            "it will spend up to epsilon 3 of budget breast_cancer")
    assert warning < printed.index("train@breast_cancer: ran in"), printed
    assert "ingest@breast_cancer: up to date" in printed
    ran = re.search(r"(?<![@\w])breast_cancer: ran ([^;]+);", printed).group(1).split(", ")  # the summary line
    assert "train" in ran and "ingest" not in ran, printed


def test_plain_dvc_repro_sees_a_changed_source_through_its_fingerprint_alone(project):
    """No privflow process: DVC takes the fingerprint, finds it changed, and re-runs ingest;
    the source's bytes put back, the old snapshot comes back from DVC's run cache. dvc.lock
    names the fingerprint, never the source."""
    root, env = project["path"], project["env"]
    source = root / "data" / "source" / "breast_cancer.csv"
    original = source.read_bytes()
    source.rename(source.with_name("moved.csv"))  # gone: its fingerprint says why, and so does the plan
    try:
        planned = " ".join(_sh(["privflow", "run", "--plan"], root, env).stdout.split())
        assert "plan: ingest@breast_cancer runs: its source cannot be read (" in planned, planned
        assert "breast_cancer.csv: source not found" in planned
        # the run refuses before Prefect starts (no run log): its only dataset could not run
        result = _sh(["privflow", "run", "--yes"], root, env, check=False)
        said = " ".join((result.stdout + result.stderr).split())
        assert result.returncode == 2 and "privflow: not run: breast_cancer; fix the source named above" in said
        assert "breast_cancer.csv: source not found" in said and "log: " not in said, said
    finally:
        source.with_name("moved.csv").rename(source)
    assert "ingest" not in _sh(["privflow", "status"], root, env).stdout  # back: the same id, nothing to run
    lines = original.decode().splitlines(keepends=True)
    source.write_text("".join(lines[:-1]))  # the export lost its last record
    try:
        assert stale_stages(root, env) == set()  # plain DVC cannot know before the fingerprint is taken
        planned = " ".join(_sh(["privflow", "run", "--plan"], root, env).stdout.split())
        assert "plan: ingest@breast_cancer runs: the source changed" in planned, planned
        assert "plan: train@breast_cancer may run" in planned
        assert stale_stages(root, env) == {"fingerprint", "ingest"}  # privflow took it: now DVC's status says so
        assert "ingest" in _sh(["privflow", "status"], root, env).stdout
        repro = _sh(["dvc", "repro", "ingest@breast_cancer"], root, env)
        assert stages_ran(repro.stdout) == {"fingerprint", "ingest@breast_cancer"}, repro.stdout
        assert "validate" in stale_stages(root, env)
    finally:
        source.write_bytes(original)
    back = _sh(["dvc", "repro", "ingest@breast_cancer"], root, env)
    assert "Stage 'ingest@breast_cancer' is cached - skipping run, checking out outputs" in back.stdout, back.stdout
    assert stale_stages(root, env) == set()
    lock = (root / "dvc.lock").read_text()
    assert "data/source" not in "".join(line for line in lock.splitlines() if "path:" in line)
    assert hashlib.md5(original).hexdigest() not in lock
