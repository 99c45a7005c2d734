"""`privflow schema draft`: a draft the data owner completes; bounds are never read from the rows."""

from __future__ import annotations

import gzip
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from privflow.data.schema_draft import draft_schema
from privflow.data.schema_file import load_schema, read_yaml
from privflow.demo_data import churn_table, csv_text
from privflow.errors import SchemaError
from privflow.settings import IngestSettings

PRIVFLOW = Path(sys.executable).parent / "privflow"


@pytest.fixture
def export(tmp_path) -> Path:
    header, rows = churn_table(rows=400)
    path = tmp_path / "exports" / "customers.csv.gz"
    path.parent.mkdir()
    path.write_bytes(gzip.compress(csv_text(header, rows).encode()))
    return path


def test_draft_reads_types_ids_and_categories_but_leaves_bounds_to_the_owner(export, tmp_path):
    text = draft_schema(export, IngestSettings(source=export), "customers")
    draft = read_yaml_text(tmp_path, text)
    columns = draft["columns"]
    assert draft["privacy_unit"] == "customer_id" and draft["target"] == "churned"
    assert columns["plan"] == {"type": "string", "allowed": ["basic", "plus", "pro"]}
    assert columns["age"]["type"].startswith("int") and columns["discount_rate"]["type"] == "float"
    assert "nullable" not in columns["churned"]  # a row without a label is quarantined, not trained on
    assert "1 record(s) have no value: validation will quarantine them" in text
    assert not any("min" in spec or "max" in spec for spec in columns.values())
    assert "bounds measured on the rows would leak" in text
    assert "declare min: ..., max: ... from domain knowledge" in text


def test_the_draft_is_refused_until_the_owner_declares_bounds(export, tmp_path):
    path = tmp_path / "draft.yaml"
    path.write_text(draft_schema(export, IngestSettings(source=export), "customers"))
    with pytest.raises(SchemaError, match=r"column 'tenure_months' \((float|int\d+)\): a model feature needs `min:`"):
        load_schema(path)


def test_cli_writes_the_draft_and_never_overwrites(export, tmp_path):
    out = tmp_path / "schemas" / "customers.yaml"
    first = subprocess.run([PRIVFLOW, "schema", "draft", str(export), "--out", str(out)], capture_output=True,
                           text=True, cwd=tmp_path)
    assert first.returncode == 0, first.stderr
    assert "declare min/max" in " ".join(first.stdout.split()) and out.exists()
    before = out.read_bytes()
    second = subprocess.run([PRIVFLOW, "schema", "draft", str(export), "--out", str(out)], capture_output=True,
                            text=True, cwd=tmp_path)
    assert second.returncode == 2 and "never overwrites" in second.stdout and out.read_bytes() == before


def test_semicolons_and_decimal_commas(tmp_path):
    path = tmp_path / "export.csv"
    path.write_text("id;amount;code\nA1;3,5;x\nA2;4,25;y\nA3;1;x\n")
    text = draft_schema(path, IngestSettings(source=path, delimiter=";", decimal=","), "export")
    columns = read_yaml_text(tmp_path, text)["columns"]
    assert columns["amount"]["type"] == "float" and columns["id"]["type"] == "string"


def read_yaml_text(tmp_path: Path, text: str) -> dict:
    path = tmp_path / "read.yaml"
    path.write_text(text)
    assert yaml.safe_load(text)  # plain YAML for any tool, too
    return read_yaml(path)


def test_only_ids_are_drafted_unique_and_the_other_target_candidates_are_named(tmp_path):
    """Distinct salaries or dates are chance, not a rule: drafted `unique`, a later export
    with two equal salaries would be quarantined. Where several columns could be the target,
    the draft names the others beside its pick."""
    path = tmp_path / "payroll.csv"
    rows = [f"E{i:05d},{i % 2 == 0},{20 + i % 40},{30000 + 17.5 * i},2020-01-{1 + i % 28:02d},{'ny'[i % 2]}"
            for i in range(60)]
    path.write_text("employee_id,left,age,salary,hired_on,remote\n" + "\n".join(rows) + "\n")
    text = draft_schema(path, IngestSettings(source=path), "payroll")
    columns = read_yaml_text(tmp_path, text)["columns"]
    assert columns["employee_id"] == {"type": "string", "unique": True}
    assert "unique" not in columns["salary"] and columns["salary"]["type"] == "float"
    assert "(others: left)" in text and read_yaml_text(tmp_path, text)["target"] == "remote"


def test_free_text_is_drafted_as_text_and_a_person_id_that_repeats_as_the_unit(tmp_path):
    """Support tickets: several a customer, each with a ticket id. DP should protect the customer
    (user-level DP), not one ticket; the ticket's body is what the text preset reads; an optional
    note, missing from most records, stays a string column (a text column quarantines blanks)."""
    import random

    rng = random.Random(3)
    words = "the app crashed again refund please my login page failed thanks for the quick help".split()
    rows = [[f"T{i:05d}", f"C{i % 40:03d}", " ".join(rng.choices(words, k=rng.randint(4, 15))),
             f"called {i} times about it" if i % 5 == 0 else "", str(i % 3 == 0).lower()] for i in range(200)]
    rows[7][2] = "x" * 2500  # longer than the drafted max_chars
    path = tmp_path / "tickets.csv"
    path.write_text(csv_text(["ticket_id", "customer_id", "body", "agent_note", "escalated"], rows))
    text = draft_schema(path, IngestSettings(source=path), "tickets")
    draft = read_yaml_text(tmp_path, text)
    columns = draft["columns"]
    assert draft["privacy_unit"] == "customer_id" and "set privacy.max_rows_per_unit" in text
    assert "ticket_id never repeats, but as the unit it would protect one record, not a person" in text
    assert columns["body"] == {"type": "text", "max_chars": 2000}
    assert "1 record(s) are longer than 2000" in text
    assert columns["agent_note"] == {"type": "string", "nullable": True}
    assert columns["ticket_id"] == {"type": "string", "unique": True} and "an id (every value distinct)" in text
    schema_path = tmp_path / "tickets.yaml"
    schema_path.write_text(text)
    assert load_schema(schema_path).text_columns == ["body"]  # the draft loads as it is: nothing to bound
