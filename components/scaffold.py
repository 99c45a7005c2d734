"""`privflow init`: make a privflow project of an empty folder or of an existing repository.

It writes what a project needs and nothing it does not: dvc.yaml (the stages call the
installed package; privflow.project), a documented params.yaml, schemas/example.yaml, and
git-ignore entries for what must never reach git (sources, sealed artifacts, runtime
state). git and DVC are initialised when missing. A file that exists with other content is
never overwritten: init stops before writing anything and names it. `--demo` adds the demo
datasets (generated or taken from scikit-learn, nothing downloaded) to a project that has
no datasets of its own yet.
"""

from __future__ import annotations

import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

from privflow.errors import PrivflowError
from privflow.project import GENERATED, code_root, render_dvc_yaml

FILES = Path(__file__).resolve().parent / "project_files"
NO_DATASETS = "datasets: {}\n"
DEMO_SCHEMAS = ("breast_cancer.yaml", "churn.yaml", "digits.yaml", "activity.yaml", "feedback.yaml")
GITIGNORE = ("# privflow: runtime state, private sources and DVC outputs never go to git",
             ".privflow/", "/data/source/", "/artifacts/", "/reports/", "/metrics/", ".venv/")
# DVC need not walk runtime state; never .venv/: an installed privflow's code deps may live there
DVCIGNORE = ("# privflow: runtime state (Prefect's database, checkpoints, logs)", ".privflow/", "__pycache__/")


@dataclass(frozen=True)
class Planned:
    path: Path
    text: str
    replaceable: bool = False  # privflow's own generated file: rewritten when it differs


def _planned(project: Path, demo: bool) -> list[Planned]:
    params = (FILES / "params.yaml").read_text(encoding="utf-8")
    files = [Planned(project / "dvc.yaml", render_dvc_yaml(code_root(project)), replaceable=True),
             Planned(project / "schemas" / "example.yaml", (FILES / "schemas" / "example.yaml").read_text())]
    if demo:
        params = params.replace(NO_DATASETS, "datasets:\n" + (FILES / "demo_datasets.yaml").read_text(), 1)
        files += [Planned(project / "schemas" / name, (FILES / "schemas" / name).read_text()) for name in DEMO_SCHEMAS]
    return [Planned(project / "params.yaml", params), *files]


def _params_conflict(existing: str, wanted: str, demo: bool) -> bool:
    """A params.yaml from `privflow init` with no datasets yet may take the demo's; any other differing one is the user's."""
    if existing == wanted:
        return False
    return not (demo and existing.replace(NO_DATASETS, "", 1) == (FILES / "params.yaml").read_text().replace(
        NO_DATASETS, "", 1))


def _conflicts(plan: list[Planned], demo: bool) -> list[Path]:
    found = []
    for item in plan:
        if not item.path.exists():
            continue
        existing = item.path.read_text(encoding="utf-8")
        if item.path.name == "params.yaml":
            conflict = _params_conflict(existing, item.text, demo)
        else:
            conflict = existing != item.text and not (item.replaceable and existing.startswith(GENERATED))
        if conflict:
            found.append(item.path)
    return found


def _run(command: list[str], where: Path) -> None:
    result = subprocess.run(command, cwd=where, capture_output=True, text=True, check=False)
    if result.returncode != 0:
        raise PrivflowError(f"{where}: `{' '.join(command)}` failed: {result.stderr.strip()[-500:]}")


def _version_control(project: Path) -> list[str]:
    """git and DVC, when missing; DVC as a subdirectory project inside a larger git repository."""
    done = []
    top = subprocess.run(["git", "rev-parse", "--show-toplevel"], cwd=project, capture_output=True, text=True)
    if top.returncode != 0:
        _run(["git", "init", "-q"], project)
        done.append("git initialised")
    if not (project / ".dvc").is_dir():
        inside = top.returncode == 0 and Path(top.stdout.strip()).resolve() != project.resolve()
        _run([sys.executable, "-m", "dvc", "init", "-q", *(["--subdir"] if inside else [])], project)
        done.append("DVC initialised" + (" (a subdirectory project of the git repository)" if inside else ""))
    return done


def _offline_dvc(project: Path) -> list[str]:
    """DVC's usage analytics off in the project's .dvc/config, which git carries to every clone:
    a plain `dvc repro` then stays as offline as privflow's own runs (which set
    DVC_NO_ANALYTICS); DVC's default would post each command's name to its servers from a
    machine that holds sensitive data. A value the team set itself is kept."""
    from dvc.config import Config  # only init loads DVC in-process

    config = Config(dvc_dir=str(project / ".dvc"))
    if "analytics" in config.load_one("repo").get("core", {}):
        return []
    with config.edit("repo") as repo_config:
        repo_config.setdefault("core", {})["analytics"] = "false"
    return ["DVC usage analytics off in .dvc/config: a plain `dvc repro` sends nothing"]


def _ignore(project: Path) -> list[str]:
    """Entries appended to .gitignore and .dvcignore when missing (the user's lines stay)."""
    done = []
    for name, entries in ((".gitignore", GITIGNORE), (".dvcignore", DVCIGNORE)):
        path = project / name
        lines = path.read_text(encoding="utf-8").splitlines() if path.exists() else []
        missing = [line for line in entries if line not in lines]
        if [m for m in missing if not m.startswith("#")]:
            with open(path, "a", encoding="utf-8") as handle:
                handle.write(("\n" if lines and lines[-1] else "") + "\n".join(missing) + "\n")
            done.append(f"{name}: added {', '.join(m for m in missing if not m.startswith('#'))}")
    return done


def _demo_data(project: Path) -> list[str]:
    from privflow.demo_data import write_demo_data

    written = write_demo_data(project / "data" / "source")
    # public data is versioned like code: DVC tracks it (`dvc exp run --temp` copies find it)
    _run([sys.executable, "-m", "dvc", "add", "-q", "data/public/churn"], project)
    return [f"demo data: {len(written)} files under data/ (public data tracked by DVC: data/public/churn.dvc)"]


def init_project(project: Path, demo: bool = False) -> list[str]:
    """Make `project` a privflow project; returns what was done, line by line."""
    project.mkdir(parents=True, exist_ok=True)
    plan = _planned(project, demo)
    conflicts = _conflicts(plan, demo)
    if conflicts:
        raise PrivflowError(
            f"{', '.join(str(p) for p in conflicts)}: exists with other content; privflow init never "
            "overwrites a file: move it aside (or merge it by hand) and run init again"
            + ("; --demo needs a params.yaml without datasets of its own" if demo else ""))
    done = _version_control(project) + _offline_dvc(project)
    for item in plan:
        if not item.path.exists() or item.path.read_text(encoding="utf-8") != item.text:
            item.path.parent.mkdir(parents=True, exist_ok=True)
            item.path.write_text(item.text, encoding="utf-8")
            done.append(f"wrote {item.path.relative_to(project)}")
    done += _ignore(project)
    if demo:
        done += _demo_data(project)
    return done
