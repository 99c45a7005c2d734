"""Schemas: every mistake refused at load time with file, column and fix; every type a real
export carries coerced and encoded from declarations alone; one typed class mapping."""

from __future__ import annotations

import io
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from privflow.data.coercion import coerce_batch
from privflow.data.features import class_indices, encode_features
from privflow.data.records import RecordReader
from privflow.data.feature_names import feature_names
from privflow.data.schema import DatasetSchema
from privflow.data.schema_file import load_schema
from privflow.errors import SchemaError
from privflow.settings import IngestSettings
from tests.conftest import ROOT

GOOD = {"dataset": "d", "privacy_unit": "id", "target": "y",
        "columns": {"id": {"type": "string"}, "y": {"type": "int8", "allowed": [0, 1]},
                    "age": {"type": "int8", "min": 0, "max": 120}}}


def _write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "payroll.yaml"
    path.write_text(text)
    return path


def _schema_text(**columns) -> str:
    document = {**GOOD, "columns": {**GOOD["columns"], **columns}}
    return yaml.safe_dump(document, sort_keys=False)


MISTAKES = [
    # (schema text, the column or key it names, what it says to write)
    (_schema_text(income={"type": "float"}), "column 'income' (float)", "needs `min:` and `max:`"),
    (_schema_text(income={"type": "float", "min": 0}), "column 'income'", "needs `min:` and `max:`"),
    (_schema_text(visit={"type": "date"}), "column 'visit' (date)", "min: 2000-01-01"),
    (_schema_text(y={"type": "int8"}), "column 'y' (the target)", "needs `allowed:`"),
    (_schema_text(y={"type": "int8", "allowed": ["a", "b"]}), "column 'y' (int8)", "is not a number"),
    (_schema_text(y={"type": "int8", "allowed": [0, 300]}), "column 'y' (int8)", "does not fit int8"),
    (_schema_text(y={"type": "int8", "allowed": [0, 0.5]}), "column 'y' (int8)", "not a whole number"),
    (_schema_text(y={"type": "bool", "allowed": ["maybe", True]}), "column 'y' (bool)", "write true or false"),
    (_schema_text(y={"type": "string", "allowed": [1, 2]}), "column 'y' (string)", "quote it"),
    (_schema_text(y={"type": "int8", "allowed": [1]}), "column 'y' (the target)", "2 to"),
    (_schema_text(y={"type": "int8", "allowed": [1, 1]}), "column 'y' (int8)", "lists a value twice"),
    (_schema_text(y={"type": "date", "allowed": ["2024-01-01", "2024-01-02"]}), "column 'y' (the target)",
     "cannot be a class label"),
    (_schema_text(y={"type": "int8", "allowed": [0, 1], "nullable": True}), "column 'y' (the target)",
     "remove it"),
    (_schema_text(visit={"type": "date", "min": "2024-31-01", "max": "2025-01-01"}), "column 'visit' (date)",
     "write it as '2024-01-31'"),
    # a declared format: bounds are written in it, and the example is too
    (_schema_text(visit={"type": "date", "format": "%d.%m.%Y"}), "column 'visit' (date)",
     "min: '01.01.2000', max: '31.12.2030'"),
    (_schema_text(visit={"type": "date", "format": "%d.%m.%Y", "min": "2020-01-01", "max": "31.12.2030"}),
     "column 'visit' (date)", "write it as '31.01.2024', in the declared format '%d.%m.%Y'"),
    (_schema_text(seen={"type": "datetime", "format": "%m/%d/%Y %H:%M", "min": "x", "max": "12/31/2030 00:00"}),
     "column 'seen' (datetime)", "write it as '01/31/2024 08:00', in the declared format"),
    (_schema_text(code={"type": "string", "regex": "^[A-Z+$"}), "column 'code' (string)", "does not compile"),
    (_schema_text(age={"type": "int8", "min": 0, "max": 120, "regex": "^1"}), "column 'age' (int8)",
     "applies to string columns only"),
    (_schema_text(age={"type": "int8", "min": 0, "maximum": 120}), "column 'age'", "unknown key `maximum`"),
    (_schema_text(age={"type": "integer", "min": 0, "max": 120}), "column 'age'", "type 'integer' is unknown"),
    (_schema_text(age={"type": "int8", "min": 9, "max": 1}), "column 'age' (int8)", "min must be below max"),
    (_schema_text(age={"type": "int8", "min": 0, "max": 9, "fill": 3}), "column 'age' (int8)", "add `nullable: true`"),
    (_schema_text(flag={"type": "float", "min": 0, "max": 1, "true_values": ["J"]}), "column 'flag' (float)",
     "applies to bool columns only"),
    (_schema_text(flag={"type": "bool", "true_values": ["J"], "false_values": ["j"]}), "column 'flag' (bool)",
     "share ['j']"),
    (yaml.safe_dump({**GOOD, "privacy_unit": "person"}), "privacy_unit: 'person'", "declare it under `columns:`"),
    (yaml.safe_dump({**GOOD, "target": "outcome"}), "target: 'outcome'", "is not a declared column"),
    (yaml.safe_dump({**GOOD, "target": "id"}), "privacy_unit and target", "cannot be the label"),
    (yaml.safe_dump({**GOOD, "colums": {}}), "top level", "unknown key `colums`"),
    (yaml.safe_dump({**GOOD, "columns": {"id": {"type": "string"}, "y": GOOD["columns"]["y"]}}),
     "no model features", "add numeric columns"),
    ("- just a list\n", "expected a mapping", "copy schemas/churn.yaml"),
    (_schema_text(note={"type": "text"}), "column 'note' (text)", "needs `max_chars:`"),
    (_schema_text(note={"type": "text", "max_chars": 0}), "column 'note' (text)", "e.g. `max_chars: 2000`"),
    (_schema_text(note={"type": "text", "max_chars": 9, "allowed": ["a"]}), "column 'note' (text)",
     "does not apply to free text"),
    (_schema_text(code={"type": "string", "max_chars": 9}), "column 'code' (string)", "applies to text columns only"),
]


@pytest.mark.parametrize("text, names, fix", MISTAKES)
def test_every_schema_mistake_is_refused_at_load_with_file_column_and_fix(tmp_path, text, names, fix):
    path = _write(tmp_path, text)
    with pytest.raises(SchemaError) as caught:
        load_schema(path)
    message = str(caught.value)
    assert message.startswith(str(path)), message
    assert names in message and fix in message, message


def test_several_mistakes_are_all_named_at_once(tmp_path):
    path = _write(tmp_path, _schema_text(a={"type": "float"}, b={"type": "string", "regex": "("}))
    with pytest.raises(SchemaError) as caught:
        load_schema(path)
    assert "column 'b' (string): regex" in str(caught.value)
    assert str(caught.value).count(str(path)) >= 1


def test_yaml_1_2_keeps_yes_and_no_as_text_and_dates_as_written(tmp_path):
    schema = load_schema(_write(tmp_path, "dataset: d\nprivacy_unit: id\ntarget: y\ncolumns:\n"
                                          "  id: {type: string}\n  y: {type: string, allowed: [yes, no]}\n"
                                          "  when: {type: date, min: 2020-01-01, max: 2030-12-31}\n"))
    assert schema.classes == ["yes", "no"]
    assert schema.columns["when"].min == "2020-01-01"


def test_the_bundled_schemas_load(tmp_path):
    for path in (ROOT / "schemas").glob("*.yaml"):
        schema = load_schema(path)
        assert schema.feature_columns or schema.text_columns == ["feedback"]  # the text preset's demo


# --- one typed mapping of target values to class indices ---

@pytest.mark.parametrize("spec, values, expected, names", [
    ({"type": "int8", "allowed": [0, 1]}, ["1", "0", "1"], [1, 0, 1], ["0", "1"]),
    ({"type": "int16", "allowed": [10, 3, 7]}, ["7", "10", "3"], [2, 0, 1], ["10", "3", "7"]),
    ({"type": "bool", "allowed": [True, False]}, ["yes", "false", "1"], [0, 1, 0], ["true", "false"]),
    ({"type": "bool", "allowed": [False, True], "true_values": ["J"], "false_values": ["N"]}, ["J", "N"], [1, 0],
     ["false", "true"]),
    ({"type": "float", "allowed": [0.0, 0.5, 1.0]}, ["0.5", "1", "0"], [1, 2, 0], ["0", "0.5", "1"]),
    ({"type": "string", "allowed": ["yes", "no"]}, ["no", "yes"], [1, 0], ["yes", "no"]),
    ({"type": "int64", "allowed": list(range(20))}, ["19", "0", "7"], [19, 0, 7], [str(i) for i in range(20)]),
])
def test_target_values_map_to_classes_in_their_own_type(spec, values, expected, names):
    schema = DatasetSchema.model_validate({"dataset": "d", "privacy_unit": "id", "target": "y",
                                           "columns": {"id": {"type": "string"}, "y": spec,
                                                       "x": {"type": "float", "min": 0, "max": 1}}})
    typed = _typed(schema, ["id", "y", "x"], [[f"p{i}", v, "0.5"] for i, v in enumerate(values)])
    assert class_indices(typed["y"], schema.target_spec).tolist() == expected
    assert schema.classes == names
    assert encode_features(typed, schema).labels.tolist() == expected


def _typed(schema, header, rows, **reader):
    text = "\n".join(reader.get("delimiter", ",").join(r) for r in [header, *rows]) + "\n"
    (batch,) = RecordReader("export.csv", schema, **reader).batches([("export.csv", io.BytesIO(text.encode()))])
    typed, failures = coerce_batch(batch, schema)
    typed.attrs["failures"] = failures
    return typed


# --- the types real exports carry ---

def _schema(**columns) -> DatasetSchema:
    return DatasetSchema.model_validate({"dataset": "d", "privacy_unit": "id", "target": "y",
                                         "columns": {"id": {"type": "string"},
                                                     "y": {"type": "string", "allowed": ["a", "b"]}, **columns}})


def test_a_text_is_kept_as_written_and_a_blank_or_over_long_one_quarantined_with_the_reason():
    from privflow.data.validation import validate_records

    schema = _schema(age={"type": "int8", "min": 0, "max": 120}, note={"type": "text", "max_chars": 20})
    assert schema.text_columns == ["note"] and "note" not in schema.feature_columns
    assert "note" not in feature_names(schema)  # a text encoder reads it, not the tabular model
    rows = [["p1", "a", "30", "  héllo wörld 😀 "], ["p2", "b", "40", "   "], ["p3", "a", "50", "x" * 21],
            ["p4", "b", "60", "x" * 20]]
    typed = _typed(schema, ["id", "y", "age", "note"], rows)
    assert typed["note"].iloc[0] == "  héllo wörld 😀 "  # never trimmed or normalised
    text = "\n".join(",".join(r) for r in [["id", "y", "age", "note"], *rows]) + "\n"
    reader = RecordReader("export.csv", schema)
    outcome = validate_records(reader, [("export.csv", io.BytesIO(text.encode()))], schema)
    assert {(f.row, f.column, f.check) for f in outcome.failures} == {
        (2, "note", "not_nullable"), (3, "note", "longer_than_max_chars_20")}
    assert outcome.summary()["rows_valid"] + outcome.summary()["rows_quarantined"] == 4
    encoded = encode_features(typed, schema)
    assert list(encoded.texts["note"])[0] == "  héllo wörld 😀 " and encoded.features.shape == (4, 1)


def test_sealed_texts_come_back_byte_for_byte():
    import numpy as np
    from safetensors.numpy import load, save

    from privflow.data.texts import packed_texts, unpacked_texts

    texts = np.array(["naïve café 😀", "", "line\nbreak, \"quoted\"", "x" * 5000], dtype=object)
    assert unpacked_texts(load(save(packed_texts("note", texts))), "note") == list(texts)
    assert unpacked_texts(load(save(packed_texts("note", texts[:0]))), "note") == []


def test_dates_and_datetimes_are_checked_against_declared_bounds_and_scaled_by_them():
    schema = _schema(d={"type": "date", "min": "2020-01-01", "max": "2020-01-11"},
                     t={"type": "datetime", "min": "2020-01-01T00:00:00", "max": "2020-01-02T00:00:00"})
    rows = [["p1", "a", "2020-01-06", "2020-01-01T12:00:00"],
            ["p2", "b", "2020-01-01", "2020-01-01 06:00:00"],
            ["p3", "a", "2020-02-30", "2020-01-01T00:00:00+01:00"],  # no such day; a zone -> UTC
            ["p4", "a", "2020-01-06T10:00", "noon"]]
    typed = _typed(schema, ["id", "y", "d", "t"], rows)
    assert sorted((f.row, f.column) for f in typed.attrs["failures"]) == [(3, "d"), (4, "d"), (4, "t")]
    assert str(typed["t"].iloc[2]) == "2019-12-31 23:00:00"
    encoded = encode_features(typed.iloc[:2], schema).features
    assert encoded.tolist() == [[0.5, 0.5], [0.0, 0.25]]


def test_a_date_outside_its_bounds_is_quarantined_by_validation(tmp_path):
    from privflow.data.validation import validate_snapshot

    schema = _schema(d={"type": "date", "min": "2020-01-01", "max": "2020-12-31"})
    raw = b"id,y,d\np1,a,2020-05-01\np2,b,2021-01-01\n"
    outcome = validate_snapshot([("x.csv", io.BytesIO(raw))], "x.csv", schema, IngestSettings(source="x.csv"))
    assert [(f.row, f.column) for f in outcome.failures] == [(2, "d")]


def test_nullable_numbers_get_a_declared_fill_and_a_missing_indicator():
    schema = _schema(w={"type": "float", "min": 0, "max": 100, "nullable": True, "fill": 50},
                     n={"type": "int16", "min": 0, "max": 10, "nullable": True},
                     b={"type": "bool", "nullable": True})
    typed = _typed(schema, ["id", "y", "w", "n", "b"], [["p1", "a", "", "", ""], ["p2", "b", "25", "5", "yes"]])
    assert feature_names(schema) == ["w", "w:missing", "n", "n:missing", "b", "b:missing"]
    assert encode_features(typed, schema).features.tolist() == [[0.5, 1, 0, 1, 0, 1], [0.25, 0, 0.5, 0, 1, 0]]


def test_feature_names_are_known_before_any_row_is_read():
    from privflow.demo_data import churn_table

    schema = load_schema(ROOT / "schemas" / "churn.yaml")
    header, rows = churn_table(rows=20)
    typed = _typed(schema, header, rows)
    assert encode_features(typed, schema).feature_names == feature_names(schema)


def test_declared_bool_spellings_and_only_those():
    schema = _schema(f={"type": "bool", "true_values": ["J"], "false_values": ["N"]})
    typed = _typed(schema, ["id", "y", "f"], [["p1", "a", "J"], ["p2", "a", "n"], ["p3", "a", "yes"]])
    assert typed["f"].tolist()[:2] == [True, False]
    assert [(f.row, f.check) for f in typed.attrs["failures"]] == [(3, "coerce_bool")]


def test_decimal_commas_are_read_and_a_point_is_refused_never_guessed():
    schema = _schema(x={"type": "float", "min": 0, "max": 10000}, n={"type": "int32", "min": 0, "max": 10000})
    rows = [["p1", "a", "3,25", "7"], ["p2", "a", "1.234", "1"], ["p3", "a", "2", "1,5"]]
    typed = _typed(schema, ["id", "y", "x", "n"], rows, delimiter=";", decimal=",")
    assert typed["x"].iloc[0] == 3.25 and typed["x"].iloc[2] == 2.0 and typed["n"].iloc[0] == 7
    assert sorted((f.row, f.column) for f in typed.attrs["failures"]) == [(2, "x"), (3, "n")]


def test_decimal_comma_needs_another_delimiter(tmp_path):
    from privflow.errors import PrivflowError
    from privflow.settings import load_settings

    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    params["ingest"]["decimal"] = ","
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))
    with pytest.raises(PrivflowError, match="ingest.decimal and ingest.delimiter are both ','"):
        load_settings("breast_cancer", tmp_path / "params.yaml")


# --- no traceback reaches a user ---

def test_an_unexpected_failure_in_a_stage_prints_one_line_and_logs_frames_without_values(tmp_path):
    script = ("import sys; sys.argv = ['/x/components/stages/train.py', '--dataset', 'payroll']\n"
              "from privflow.errors import run_stage\n"
              "def main():\n    row = {'salary': 'SECRET-4711'}\n    raise KeyError(row['salary'])\n"
              "run_stage(main)\n")
    result = subprocess.run([sys.executable, "-c", script], cwd=tmp_path, capture_output=True, text=True,
                            env={"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin"})
    assert result.returncode == 70
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in result.stderr, result.stderr
    assert lines[0].startswith("privflow: stage train of dataset payroll failed: unexpected KeyError")
    (log,) = (tmp_path / ".privflow" / "logs").glob("train-payroll-*.traceback")
    assert str(log.relative_to(tmp_path)) in lines[0]
    written = log.read_text()
    assert "KeyError" in written and "line 5" in written
    assert "SECRET-4711" not in written + result.stderr + result.stdout
