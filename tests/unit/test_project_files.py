"""This repository is a privflow project like any other: its dvc.yaml, params.yaml and schemas
are what `privflow init --demo` writes, and init never overwrites a user's file."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from privflow.codedeps import STAGES, stage_code
from privflow.errors import PrivflowError
from privflow.project import CODE_VAR, code_root, declared_code, refresh_dvc_yaml, render_dvc_yaml
from privflow.scaffold import init_project
from privflow.settings import load_settings
from tests.conftest import ROOT


def test_this_repository_dvc_yaml_is_the_one_init_writes():
    assert (ROOT / "dvc.yaml").read_text() == render_dvc_yaml(code_root(ROOT)), \
        "dvc.yaml is stale: `python -m privflow.project` (or `privflow run`) rewrites it"


def test_every_stage_depends_on_exactly_its_closure_and_runs_the_installed_module():
    root, declared = declared_code(ROOT / "dvc.yaml")
    assert root == "components"
    for stage in STAGES:
        assert declared[stage] == stage_code(stage)
        stage_yaml = yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"][stage]
        entry = stage_yaml.get("do", stage_yaml)  # `fingerprint` is one stage for every dataset, not a foreach
        assert entry["cmd"].startswith(f"python -m privflow.stages.{stage} ")


def test_a_template_is_a_dep_of_the_stage_that_renders_it_only():
    holders = {stage for stage in STAGES if "reporting/templates/report.html.j2" in stage_code(stage)}
    assert holders == {"report"}
    assert {stage for stage in STAGES if "reporting/templates/model_card.md.j2" in stage_code(stage)} == {"compress"}
    assert not any("training/" in path for path in stage_code("report"))


def test_this_repository_is_what_init_demo_writes(tmp_path):
    init_project(tmp_path / "fresh", demo=True)
    for name in ["params.yaml", "schemas/example.yaml",
                 *(f"schemas/{p.name}" for p in (ROOT / "schemas").glob("*.yaml"))]:
        assert (tmp_path / "fresh" / name).read_text() == (ROOT / name).read_text(), name


def test_init_makes_a_project_with_git_dvc_and_ignores(tmp_path):
    project = tmp_path / "payroll"
    done = init_project(project)
    assert (project / ".git").is_dir() and (project / ".dvc").is_dir()
    assert {"wrote params.yaml", "wrote dvc.yaml", "wrote schemas/example.yaml"} <= set(done)
    ignored = (project / ".gitignore").read_text().splitlines()
    assert {"/data/source/", "/artifacts/", ".privflow/"} <= set(ignored)
    assert ".privflow/" in (project / ".dvcignore").read_text().splitlines()
    with pytest.raises(PrivflowError, match="no dataset declared under `datasets:` yet"):
        load_settings(path=project / "params.yaml")
    assert init_project(project) == []  # a second init finds everything in place


def analytics_enabled(project: Path) -> bool:
    """DVC's own answer (the check its CLI makes after every command), for a user's shell
    without privflow's environment."""
    env = {k: v for k, v in os.environ.items() if k not in ("DVC_NO_ANALYTICS", "DVC_TEST")}
    answer = subprocess.run([sys.executable, "-c", "from dvc import analytics; print(analytics.is_enabled())"],
                            cwd=project, env=env, capture_output=True, text=True, check=True)
    return answer.stdout.strip() == "True"


def test_a_plain_dvc_command_in_an_init_project_sends_no_analytics(tmp_path):
    bare = tmp_path / "bare"
    bare.mkdir()
    subprocess.run(["git", "init", "-q"], cwd=bare, check=True)
    subprocess.run([sys.executable, "-m", "dvc", "init", "-q"], cwd=bare, check=True)
    assert analytics_enabled(bare)  # DVC's default, which init turns off
    assert "DVC usage analytics off in .dvc/config: a plain `dvc repro` sends nothing" in init_project(bare)
    assert not analytics_enabled(bare)
    project = tmp_path / "payroll"
    init_project(project)
    assert not analytics_enabled(project)
    (project / ".dvc" / "config").write_text("[core]\n    analytics = true\n")  # the team's own choice
    assert init_project(project) == [] and analytics_enabled(project)


def test_init_never_overwrites_a_users_file_and_names_it(tmp_path):
    project = tmp_path / "mine"
    project.mkdir()
    (project / "params.yaml").write_text("datasets: {mine: {source: a.csv, schema: s.yaml}}\n")
    (project / "dvc.yaml").write_text("stages: {}\n")
    with pytest.raises(PrivflowError, match=r"params\.yaml, .*dvc\.yaml: exists with other content"):
        init_project(project)
    assert (project / "params.yaml").read_text().startswith("datasets: {mine")
    assert not (project / "schemas").exists() and not (project / ".git").exists()  # nothing written


def test_demo_joins_a_project_without_datasets_but_not_one_with_its_own(tmp_path):
    project = tmp_path / "p"
    init_project(project)
    init_project(project, demo=True)
    assert "breast_cancer" in yaml.safe_load((project / "params.yaml").read_text())["datasets"]
    other = tmp_path / "q"
    init_project(other)
    params = other / "params.yaml"
    params.write_text(params.read_text().replace("datasets: {}", "datasets:\n  mine: {source: a.csv, schema: s.yaml}"))
    with pytest.raises(PrivflowError, match="--demo needs a params.yaml without datasets of its own"):
        init_project(other, demo=True)


def test_init_inside_a_larger_git_repository_makes_a_dvc_subproject(tmp_path):
    subprocess.run(["git", "init", "-q", str(tmp_path)], check=True)
    done = init_project(tmp_path / "ml" / "privacy")
    assert "DVC initialised (a subdirectory project of the git repository)" in done
    assert not (tmp_path / "ml" / "privacy" / ".git").exists()


def test_a_generated_dvc_yaml_whose_deps_went_stale_is_rewritten_a_users_never(tmp_path):
    project = tmp_path / "p"
    init_project(project)
    path = project / "dvc.yaml"
    stale = path.read_text().replace(f"      - ${{{CODE_VAR}}}/training/loop.py\n", "", 1)
    path.write_text(stale)
    assert refresh_dvc_yaml(project) == ["train"]
    assert path.read_text() == render_dvc_yaml(code_root(project))
    own = "stages: {}\n"
    path.write_text(own)
    assert refresh_dvc_yaml(project) == [] and path.read_text() == own


def test_code_root_is_relative_inside_the_project_absolute_outside(tmp_path):
    assert code_root(ROOT) == "components"
    assert Path(code_root(tmp_path)).is_absolute()


def test_each_file_vouched_to_change_no_output_is_the_version_vouched_for():
    """An entry of EQUIVALENT_CODE lets an upgrade skip the stages that import the file, train
    included. The next edit of that file must decide again: if it changes no output of a stage
    that succeeds, add the MD5 this entry names to its earlier ones and name the new one;
    otherwise delete the entry, so that the stages run."""
    import hashlib

    from privflow.upgrades import EQUIVALENT_CODE

    for path, (current, earlier) in EQUIVALENT_CODE.items():
        content = (ROOT / "components" / path).read_bytes()
        assert hashlib.md5(content).hexdigest() == current, f"components/{path} changed since its EQUIVALENT_CODE entry"
        assert current not in earlier and all(len(md5) == 32 and reason for md5, reason in earlier.items())
