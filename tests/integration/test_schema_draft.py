"""`privflow schema draft`: a draft the data owner completes; bounds are never read from the rows."""

from __future__ import annotations

import gzip
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from privflow.data.coercion import coerce_batch
from privflow.data.records import RecordReader
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


def spreadsheet_export(path: Path) -> Path:
    """A payroll export as a German spreadsheet writes it: semicolons, decimal commas, digits grouped
    by points (4.157,45), Windows-1252, CRLF, dates as day.month.year, one of them impossible (31 February)."""
    rows = [f"MA-{i:04d};{1 + i % 28:02d}.{1 + i % 12:02d}.2026;{(2200 + 13 * i) // 1000}.{(2200 + 13 * i) % 1000:03d},"
            f"{i % 100:02d};"
            f"{'Überstunden' if i % 3 else 'Elternzeit'};{'hoch' if i % 4 else 'niedrig'}" for i in range(120)]
    rows[9] = rows[9].replace(rows[9].split(";")[1], "31.02.2026")
    path.write_bytes(("Personalnummer;Monat;Gehalt;Bemerkung;Kündigungsrisiko\r\n" + "\r\n".join(rows) + "\r\n")
                     .encode("cp1252"))
    return path


def test_a_spreadsheet_export_is_read_as_written_and_the_entry_says_how(tmp_path):
    """With no options the draft guesses the delimiter, decimal mark and encoding, says so, and the
    entry it proposes for params.yaml carries them; the completed draft then validates the export
    read with that entry, quarantining the impossible date instead of rolling it into March."""
    from privflow.data.validation import validate_snapshot

    export = spreadsheet_export(tmp_path / "lohn.csv")
    out = tmp_path / "schemas" / "lohn.yaml"
    result = subprocess.run([PRIVFLOW, "schema", "draft", str(export), "--out", str(out)], capture_output=True,
                            text=True, cwd=tmp_path)
    printed = " ".join(result.stdout.split())
    assert result.returncode == 0, result.stdout + result.stderr
    assert "read as delimiter ';', decimal ',', encoding 'cp1252', thousands '.' (guessed from the file" in printed
    entry = yaml.safe_load(printed.split("then add `")[1].split("`")[0])["lohn"]
    assert entry["ingest"] == {"delimiter": ";", "decimal": ",", "encoding": "cp1252", "thousands": "."}
    text = out.read_text(encoding="utf-8")
    columns = read_yaml_text(tmp_path, text)["columns"]
    assert columns["Monat"] == {"type": "date", "format": "%d.%m.%Y"}
    assert "declare min: '01.01.2000', max: '31.12.2030'" in text and "1 value(s) are not dates in it" in text
    assert columns["Gehalt"]["type"] == "float" and columns["Bemerkung"]["type"] == "string"
    assert read_yaml_text(tmp_path, text)["target"] == "Kündigungsrisiko"  # a date is never a target candidate
    out.write_text(text.replace("{type: date, format: '%d.%m.%Y'}", "{type: date, format: '%d.%m.%Y', "
                                "min: '01.01.2020', max: '31.12.2030'}").replace(
        "{type: float}", "{type: float, min: 0, max: 20000}"), encoding="utf-8")
    ingest = IngestSettings(source=export, **entry["ingest"])
    with open(export, "rb") as handle:
        outcome = validate_snapshot([(export.name, handle)], str(export), load_schema(out), ingest)
    assert [(f.row, f.column, f.check) for f in outcome.failures] == [(10, "Monat", "coerce_date")]
    assert len(outcome.valid_rows) == 119
    (batch,) = RecordReader.of(str(export), load_schema(out), ingest).batches([(export.name, open(export, "rb"))])
    assert coerce_batch(batch, load_schema(out))[0]["Gehalt"].iloc[:2].tolist() == [2200.0, 2213.01]


def test_an_option_given_wrong_is_named_as_the_option(tmp_path):
    export = spreadsheet_export(tmp_path / "lohn.csv")
    result = subprocess.run([PRIVFLOW, "schema", "draft", str(export), "--out", str(tmp_path / "s.yaml"),
                             "--encoding", "utf-8"], capture_output=True, text=True, cwd=tmp_path)
    printed = " ".join(result.stdout.split())
    assert result.returncode == 2 and "is not valid utf-8" in printed and "pass --encoding" in printed, printed
    assert "params.yaml" not in printed and not (tmp_path / "s.yaml").exists()


@pytest.mark.parametrize("text, dialect", [
    ("a\tb\tc\n1\t2,5\tx\n2\t3,5\ty\n", {"delimiter": "\t", "decimal": ",", "encoding": "utf-8"}),
    ("a|b\n1|2.5\n2|3.5\n", {"delimiter": "|", "decimal": ".", "encoding": "utf-8"}),
    ('id,note,amount\n1,"a, b and c",2.5\n2,"d, e",3.5\n', {"delimiter": ",", "decimal": ".", "encoding": "utf-8"}),
    ("name;Größe\nJörg;1,80\n", {"delimiter": ";", "decimal": ",", "encoding": "utf-8"}),
    # grouped digits: the mark is named only when every number that holds it is grouped in threes
    ("a;b;c\n1.234,5;28.01.2026;3\n12.345.678,25;01.02.2026;4\n", {"delimiter": ";", "decimal": ",",
                                                                   "encoding": "utf-8", "thousands": "."}),
    ('a,b\n"1,234.5",x\n"12,345",y\n3.25,z\n', {"delimiter": ",", "decimal": ".", "encoding": "utf-8",
                                                 "thousands": ","}),
    ("a;b\n1 234,5;x\n7,5;y\n", {"delimiter": ";", "decimal": ",", "encoding": "utf-8", "thousands": " "}),
    ("a;b\n1\u202f234,5;x\n7,5;y\n", {"delimiter": ";", "decimal": ",", "encoding": "utf-8", "thousands": " "}),
    ("a;b\n4.157,45;x\n3.5;y\n2,5;z\n", {"delimiter": ";", "decimal": ",", "encoding": "utf-8"}),  # 3.5: no group
])
def test_the_dialect_is_guessed_from_the_first_lines(tmp_path, text, dialect):
    from privflow.data.csv_dialect import ingest_entry, sniff_dialect

    path = tmp_path / "export.csv"
    path.write_text(text, encoding="utf-8")
    assert sniff_dialect(path) == {"thousands": None, **dialect}
    assert (ingest_entry(dialect) == "") == (dialect == {"delimiter": ",", "decimal": ".", "encoding": "utf-8"})
    if dialect["delimiter"] == "\t":
        assert yaml.safe_load("{" + ingest_entry(dialect) + "}")["ingest"]["delimiter"] == "\t"


@pytest.mark.parametrize("dates, expected, ambiguous", [
    ([f"{d:02d}/{m:02d}/2025" for d, m in ((13, 1), (2, 2), (25, 3))] * 10, "%d/%m/%Y", False),
    ([f"{m:02d}/{d:02d}/2025" for d, m in ((13, 1), (2, 2), (25, 3))] * 10, "%m/%d/%Y", False),
    ([f"{d:02d}/{m:02d}/2025 08:30" for d, m in ((1, 1), (2, 2), (3, 3))] * 10, "%d/%m/%Y %H:%M", True),
])
def test_date_formats_are_found_and_an_ambiguous_day_month_order_is_said(tmp_path, dates, expected, ambiguous):
    path = tmp_path / "visits.csv"
    path.write_text("visit_id,seen_on,admitted\n" + "".join(f"V{i},{d},{i % 2}\n" for i, d in enumerate(dates)))
    text = draft_schema(path, IngestSettings(source=path), "visits")
    column = read_yaml_text(tmp_path, text)["columns"]["seen_on"]
    assert column == {"type": "datetime" if "%H" in expected else "date", "format": expected}
    assert ("(no day above 12): check which the export writes" in text) == ambiguous


def test_iso_dates_need_no_format_and_a_defect_among_them_is_counted(tmp_path):
    path = tmp_path / "visits.csv"
    dates = [f"2025-{1 + i % 12:02d}-{1 + i % 28:02d}" for i in range(60)]
    dates[4] = "2025-02-30"
    path.write_text("visit_id,seen_on,admitted\n" + "".join(f"V{i},{d},{i % 2}\n" for i, d in enumerate(dates)))
    text = draft_schema(path, IngestSettings(source=path), "visits")
    assert read_yaml_text(tmp_path, text)["columns"]["seen_on"] == {"type": "date"}
    assert "declare min: '2000-01-01', max: '2030-12-31'" in text and "1 value(s) are not dates" in text


@pytest.mark.parametrize("repeat", [False, True])
def test_an_id_is_unique_only_when_no_value_repeats_in_any_file_of_a_folder(tmp_path, repeat):
    """Each file is read in its own batches: a value of the first file met again in the second
    makes the column not unique (the draft keeps 8-byte hashes per value, not a set of them)."""
    folder = tmp_path / "exports"
    folder.mkdir()
    for part, ids in (("a", range(0, 50)), ("b", range(50, 100))):
        rows = [f"R{i:04d},{i % 2}" for i in ids] + (["R0007,1"] if repeat and part == "b" else [])
        (folder / f"{part}.csv").write_text("record_id,flag\n" + "\n".join(rows) + "\n")
    column = read_yaml_text(tmp_path, draft_schema(folder, IngestSettings(source=folder), "r"))["columns"]["record_id"]
    assert column == ({"type": "string"} if repeat else {"type": "string", "unique": True})


def test_an_export_of_only_its_header_line_is_refused_not_drafted(tmp_path):
    from privflow.errors import DatasetError

    path = tmp_path / "export.csv"
    path.write_text("id,age,label\n")
    with pytest.raises(DatasetError, match="no records, only the header line"):
        draft_schema(path, IngestSettings(source=path), "export")


def test_a_numeric_column_with_a_few_defects_is_drafted_numeric_and_the_defects_are_counted(tmp_path):
    """An age typed "abc" once in 60 records: drafted as a string, the column would silently stop
    being a model input; drafted int8, that one record is quarantined and the comment says so."""
    rows = [[f"P{i}", str(20 + i % 50), "abc" if i % 5 == 0 else str(i), "x1" if i == 3 else str(i % 2)]
            for i in range(60)]
    rows[7][1] = "abc"
    path = tmp_path / "people.csv"
    path.write_text(csv_text(["person_id", "age", "code", "outcome"], rows))
    text = draft_schema(path, IngestSettings(source=path), "people")
    columns = read_yaml_text(tmp_path, text)["columns"]
    assert columns["age"] == {"type": "int8"}
    assert "1 value(s) are not numbers: validation will quarantine those records" in text
    assert columns["code"]["type"] == "string"  # one in five is not a number: not a defect, a string column
    assert columns["outcome"] == {"type": "string", "allowed": ["0", "1", "x1"]}  # a target is drafted as read


def test_what_the_draft_proposes_validation_accepts_but_the_defects_it_counts(tmp_path):
    """The draft reads values with validation's own readers: a whole number written 2.0 is an
    int, 1e3 a float, nan or 1_000 no number (validation refuses both), yes/no a bool."""
    from privflow.data.validation import validate_snapshot

    rows = [[f"R{i}", f"{i % 90}.0", "1e3" if i % 7 == 0 else f"{i * 0.5}", "yes" if i % 2 else "no",
             f"2024-{1 + i % 12:02d}-{1 + i % 28:02d}", str(i % 2)] for i in range(100)]
    rows[3][2], rows[4][1] = "nan", "1_000"
    path = tmp_path / "export.csv"
    path.write_text(csv_text(["record_id", "count", "amount", "flag", "seen_on", "label"], rows))
    text = draft_schema(path, IngestSettings(source=path), "export")
    columns = read_yaml_text(tmp_path, text)["columns"]
    assert [columns[n]["type"] for n in ("count", "amount", "flag", "seen_on")] == ["int8", "float", "bool", "date"]
    assert text.count("1 value(s) are not numbers") == 2
    completed = tmp_path / "completed.yaml"
    completed.write_text(text.replace("{type: int8}", "{type: int8, min: 0, max: 100}").replace(
        "{type: float}", "{type: float, min: 0, max: 1000}").replace(
        "{type: date}", "{type: date, min: 2020-01-01, max: 2030-12-31}"))
    with open(path, "rb") as handle:
        outcome = validate_snapshot([(path.name, handle)], str(path), load_schema(completed), IngestSettings(source=path))
    assert sorted((f.row, f.column) for f in outcome.failures) == [(4, "amount"), (5, "count")]


def test_the_encoding_is_guessed_from_every_byte_not_the_first_lines(tmp_path):
    """An export whose first megabyte is plain ASCII and whose one accented name comes late."""
    from privflow.data.csv_dialect import SAMPLE_BYTES, sniff_dialect

    lines = [f"P{i:07d},{i % 90},{i % 2}" for i in range(SAMPLE_BYTES // 12)] + ["P9999999,40,Müller"]
    path = tmp_path / "export.csv"
    path.write_bytes(("id,age,name\n" + "\n".join(lines) + "\n").encode("cp1252"))
    assert path.stat().st_size > SAMPLE_BYTES and sniff_dialect(path)["encoding"] == "cp1252"
