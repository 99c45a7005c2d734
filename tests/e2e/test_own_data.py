"""A new user's own data through `privflow run`, with params.yaml and schema files only.

Five datasets a data owner brings, each with a target type the demo does not have: an int8
0/1 survey outcome (the case that used to die with `IndexError: Target -1`), a bool written
Y/N in a semicolon file with decimal commas, yes/no strings written unquoted in YAML, a
float-coded grade and ten classes. Each must train, compress and predict in its own terms.
"""

from __future__ import annotations

import csv
import io
import json

import numpy as np
import pytest
import yaml

from tests.workspace import demo_workspace

pytestmark = pytest.mark.slow

ROWS = 600


def _rows(rng: np.random.Generator, n_features: int, labels: list[str]):
    """Features in [0, 10] whose first coordinates decide the class (a learnable signal)."""
    features = rng.uniform(0, 10, size=(ROWS, n_features))
    score = features[:, 0] + 0.5 * features[:, 1]
    classes = np.minimum((score / 15 * len(labels)).astype(int), len(labels) - 1)
    return features, [labels[c] for c in classes]


def _numeric_table(rng, name: str, unit: str, target: str, target_spec: str, labels: list[str], n_features: int):
    """A person id, a target and `n_features` float features in [0, 10] declared with bounds."""
    features, values = _rows(rng, n_features, labels)
    header = [unit, target, *[f"x{i}" for i in range(n_features)]]
    rows = [[f"{unit[0].upper()}-{i:05d}", label, *(f"{v:.3f}" for v in row)]
            for i, (row, label) in enumerate(zip(features, values))]
    schema = (f"dataset: {name}\nprivacy_unit: {unit}\ntarget: {target}\ncolumns:\n"
              f"  {unit}: {{type: string, unique: true}}\n  {target}: {target_spec}\n"
              + "".join(f"  x{i}: {{type: float, min: 0, max: 10}}\n" for i in range(n_features)))
    return header, rows, ",", schema, {}


def survey(rng):
    """The issue's survey table: string person id, eight numeric features, int8 0/1 target."""
    return _numeric_table(rng, "survey", "respondent", "smoker", "{type: int8, allowed: [0, 1]}", ["0", "1"], 8)


def screening(rng):
    """bool target written Y/N; `;` delimiter, decimal commas, a date, a nullable number with a fill."""
    features, labels = _rows(rng, 3, ["N", "Y"])
    header = ["patient", "positive", "marker", "dose", "visit", "weight"]
    rows = []
    for i, (row, label) in enumerate(zip(features, labels)):
        weight = "" if i % 7 == 0 else f"{60 + row[2] * 4:.1f}".replace(".", ",")
        rows.append([f"P{i}", label, f"{row[0]:.2f}".replace(".", ","), f"{row[1]:.2f}".replace(".", ","),
                     f"2024-{1 + i % 12:02d}-{1 + i % 28:02d}", weight])
    schema = ("dataset: screening\nprivacy_unit: patient\ntarget: positive\ncolumns:\n"
              "  patient: {type: string}\n"
              "  positive: {type: bool, true_values: [Y], false_values: [N], allowed: [false, true]}\n"
              "  marker: {type: float, min: 0, max: 10}\n  dose: {type: float, min: 0, max: 10}\n"
              "  visit: {type: date, min: 2020-01-01, max: 2030-12-31}\n"
              "  weight: {type: float, min: 30, max: 200, nullable: true, fill: 70}\n")
    return header, rows, ";", schema, {"ingest": {"delimiter": ";", "decimal": ","}}


def tickets(rng):
    """yes/no strings, unquoted in the schema (YAML 1.1 would read them as booleans)."""
    features, labels = _rows(rng, 2, ["no", "yes"])
    header = ["customer", "escalated", "wait_hours", "replies", "channel", "vip"]
    rows = [[f"C-{i}", label, f"{row[0]:.2f}", f"{int(row[1])}", ["mail", "phone", "chat"][i % 3],
             ["yes", "no"][i % 2]] for i, (row, label) in enumerate(zip(features, labels))]
    schema = ("dataset: tickets\nprivacy_unit: customer\ntarget: escalated\ncolumns:\n"
              "  customer: {type: string}\n  escalated: {type: string, allowed: [yes, no]}\n"
              "  wait_hours: {type: float, min: 0, max: 10}\n  replies: {type: int16, min: 0, max: 10}\n"
              "  channel: {type: string, allowed: [mail, phone, chat]}\n  vip: {type: bool}\n")
    return header, rows, ",", schema, {}


def grades(rng):
    """A float-coded target: 0, 0.5 and 1.0, written as the export writes them."""
    features, labels = _rows(rng, 2, ["0", "0.5", "1.0"])
    header = ["student", "grade", "hours", "attempts"]
    rows = [[f"S{i}", label, f"{row[0]:.2f}", f"{row[1]:.2f}"] for i, (row, label) in enumerate(zip(features, labels))]
    schema = ("dataset: grades\nprivacy_unit: student\ntarget: grade\ncolumns:\n"
              "  student: {type: string}\n  grade: {type: float, allowed: [0.0, 0.5, 1.0]}\n"
              "  hours: {type: float, min: 0, max: 10}\n  attempts: {type: float, min: 0, max: 10}\n")
    return header, rows, ",", schema, {}


def ten_classes(rng):
    """Ten classes, an int16 code 1..10."""
    return _numeric_table(rng, "ten", "case_id", "category", "{type: int16, allowed: [1, 2, 3, 4, 5, 6, 7, 8, 9, 10]}",
                          [str(c) for c in range(1, 11)], 4)


DATASETS = {"survey": survey, "screening": screening, "tickets": tickets, "grades": grades, "ten": ten_classes}
CLASSES = {"survey": ["0", "1"], "screening": ["false", "true"], "tickets": ["yes", "no"],
           "grades": ["0", "0.5", "1"], "ten": [str(c) for c in range(1, 11)]}


def _csv(header, rows, delimiter) -> str:
    buffer = io.StringIO()
    csv.writer(buffer, delimiter=delimiter, lineterminator="\n").writerows([header, *rows])
    return buffer.getvalue()


@pytest.fixture(scope="module")
def own_data_run(tmp_path_factory):
    workspace = demo_workspace(tmp_path_factory.mktemp("own-data"))
    rng = np.random.default_rng(7)
    params = yaml.safe_load((workspace.repo / "params.yaml").read_text())
    params["datasets"] = {}
    for name, make in DATASETS.items():
        header, rows, delimiter, schema, overrides = make(rng)
        source = workspace.base / "exports" / f"{name}.csv"
        source.parent.mkdir(exist_ok=True)
        source.write_text(_csv(header, rows, delimiter))
        (workspace.repo / "schemas" / f"{name}.yaml").write_text(schema)
        params["datasets"][name] = {"source": str(source), "schema": f"schemas/{name}.yaml", **overrides,
                                    "train": {"epochs": 8, "batch_size": 128, "learning_rate": 1.0,
                                              "noise_seed": 3}}
    (workspace.repo / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    workspace.run("git", "add", "-A", check=True)
    workspace.run("git", "commit", "-qm", "own datasets", check=True)
    result = workspace.run("privflow", "run")
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return workspace


@pytest.mark.parametrize("name", list(DATASETS))
def test_each_target_type_trains_through_privflow_run(own_data_run, name):
    workspace = own_data_run
    description = json.loads((workspace.artifacts("encrypt", name) / "dataset.json").read_text())
    assert description["classes"] == CLASSES[name]
    training = json.loads(workspace.metrics("train", name).read_text())
    chance = 1 / len(CLASSES[name])
    assert training["accuracy"]["private"] > chance + 0.1, training["accuracy"]  # it learnt the planted signal
    card = json.loads((workspace.artifacts("compress", name) / "serving.json").read_text())
    assert card["classes"] == CLASSES[name]
    report = json.loads((workspace.reports(name) / "report.json").read_text())
    assert report["run_id"] == training["run_id"]
    failures = json.loads(workspace.metrics("validate", name).read_text())["failures_by_check"]
    said = (workspace.reports(name) / "report.html").read_text().split('id="validation"')[1].split("</section>")[0]
    assert ("<table>" in said) == bool(failures) and ("No record failed a check" in said) == (not failures), said


@pytest.mark.parametrize("name", ["survey", "screening", "grades"])
def test_predict_names_classes_as_the_schema_declares_them(own_data_run, name):
    workspace = own_data_run
    source = workspace.base / "exports" / f"{name}.csv"
    result = workspace.run("privflow", "predict", str(source), "--dataset", name, check=True)
    lines = list(csv.reader(io.StringIO(result.stdout)))
    assert lines[0][:2] == ["row", "prediction"] and lines[0][2:] == [f"p_{c}" for c in CLASSES[name]]
    predicted = {line[1] for line in lines[1:]}
    assert len(lines) - 1 == ROWS and predicted <= set(CLASSES[name]) and len(predicted) >= 2


def test_weight_missing_values_get_an_indicator(own_data_run):
    description = json.loads((own_data_run.artifacts("encrypt", "screening") / "dataset.json").read_text())
    assert description["features"] == ["marker", "dose", "visit", "weight", "weight:missing"]
