import csv
import io

import pytest
from hypothesis import HealthCheck, example, given, settings, strategies as st

from privflow.data.coercion import coerce_batch
from privflow.data.records import RecordReader
from privflow.data.schema import DatasetSchema
from privflow.data.schema_file import load_schema
from privflow.data.validation import enforce_reject_rate, validate_snapshot as validate_members
from privflow.demo_data import DEFECTS, EXTRA_FIELD_ROW, demo_table
from privflow.errors import DatasetError, RejectRateExceeded, SchemaError
from privflow.settings import IngestSettings

SOURCE = "/data/export.csv"


def validate_snapshot(raw: bytes, source: str, schema, settings):
    """The outcome for one CSV file in memory."""
    return validate_members([("export.csv", io.BytesIO(raw))], source, schema, settings)


INGEST = IngestSettings(source=SOURCE)


def csv_bytes(header, rows, delimiter=",") -> bytes:
    buffer = io.StringIO()
    writer = csv.writer(buffer, delimiter=delimiter, lineterminator="\n")
    writer.writerow(header)
    writer.writerows(rows)
    return buffer.getvalue().encode()


def small_schema(**columns) -> DatasetSchema:
    base = {"person": {"type": "string", "unique": True}, "label": {"type": "string", "allowed": ["a", "b"]}}
    return DatasetSchema.model_validate(
        {"dataset": "t", "privacy_unit": "person", "target": "label", "columns": {**base, **columns}})


def check(schema, header, rows):
    outcome = validate_snapshot(csv_bytes(header, rows), SOURCE, schema, INGEST)
    return outcome


def test_demo_defects_are_quarantined_with_reasons(demo_schema):
    header, rows = demo_table()
    outcome = validate_snapshot(csv_bytes(header, rows), SOURCE, demo_schema, INGEST)
    failed = {(f.row, f.column) for f in outcome.failures}
    assert {(row, column) for row, column, _ in DEFECTS} <= failed
    assert (40, "patient_id") in failed  # both copies of a duplicated id
    assert outcome.unparseable_rows == {EXTRA_FIELD_ROW}
    summary = outcome.summary()
    assert summary["rows_in"] == len(rows) == 569
    assert summary["rows_valid"] + summary["rows_quarantined"] + summary["lines_unparseable"] == 569
    assert summary["rows_valid"] == 569 - 8


@pytest.mark.parametrize(
    "spec, value, expected_check",
    [
        ({"type": "int8"}, "300", "coerce_int8"),          # would wrap to 44
        ({"type": "int32"}, "x", "coerce_int32"),
        ({"type": "int64"}, "2.5", "coerce_int64"),         # would round
        ({"type": "bool"}, "maybe", "coerce_bool"),
        ({"type": "bool"}, "NaN", "coerce_bool"),
        ({"type": "float"}, "inf", "coerce_float"),
        ({"type": "string"}, "", "not_nullable"),           # None into a non-nullable string
        ({"type": "bool"}, "", "not_nullable"),
        ({"type": "float", "min": 0, "max": 1}, "1.5", "less_than_or_equal_to(1.0)"),
        ({"type": "string", "regex": "^[A-Z]+$"}, "abc", "str_matches('^[A-Z]+$')"),
    ],
)
def test_coercion_traps_are_caught_never_passed(spec, value, expected_check):
    schema = small_schema(field=spec)
    good = {"int8": "7", "int32": "7", "int64": "7", "bool": "true", "float": "0.5", "string": "OK"}[spec["type"]]
    outcome = check(schema, ["person", "label", "field"], [["p1", "a", good], ["p2", "b", value]])
    assert outcome.valid_rows == [1]
    assert [(f.row, f.column, f.check) for f in outcome.failures] == [(2, "field", expected_check)]


def test_typed_values_keep_their_types():
    schema = small_schema(n={"type": "int8"}, flag={"type": "bool", "nullable": True})
    raw = csv_bytes(["person", "label", "n", "flag"], [["p1", "a", "-128", "yes"], ["p2", "b", "127", ""]])
    (batch,) = RecordReader(SOURCE, schema).batches([("export.csv", io.BytesIO(raw))])
    typed, failures = coerce_batch(batch, schema)
    assert failures == [] and typed.index.tolist() == [1, 2]
    assert str(typed["n"].dtype) == "Int8" and typed["n"].tolist() == [-128, 127]
    assert typed["flag"].tolist()[0] is True and typed["flag"].isna().tolist() == [False, True]


def test_missing_and_unknown_columns_stop_with_names(demo_schema):
    header, rows = demo_table()
    position = header.index("mean_radius") + 1
    with pytest.raises(DatasetError, match=rf"/data/export.csv.*missing \['mean_radius'\]; 1 field\(s\) not "
                                           rf"declared, at position\(s\) {position} \(not shown") as caught:
        validate_snapshot(csv_bytes(["surname" if h == "mean_radius" else h for h in header], rows),
                          SOURCE, demo_schema, INGEST)
    assert "surname" not in str(caught.value)


def test_a_file_without_its_header_line_never_shows_the_first_row(demo_schema):
    header, rows = demo_table()
    raw = csv_bytes(rows[0], rows[1:])  # exported without the header: the first row takes its place
    with pytest.raises(DatasetError, match=r"is the header line missing\?") as caught:
        validate_snapshot(raw, SOURCE, demo_schema, INGEST)
    assert not any(value in str(caught.value) for value in rows[0] if len(value) > 2)


@pytest.mark.parametrize("raw, message", [
    (b"", "file is empty"),
    (b"\n\n  \n", "file is empty"),
    (b"person;label\np1;a\n", "is the delimiter really ','"),
    (b"person,label\np1,\xe9t\xe9\n", "line 2, byte 16 is not valid utf-8"),
])
def test_bad_files_name_the_file_and_the_fix(raw, message):
    with pytest.raises(DatasetError, match=message) as caught:
        validate_snapshot(raw, SOURCE, small_schema(), INGEST)
    assert SOURCE in str(caught.value)


def test_error_messages_carry_no_values():
    raw = b"person,label\nSECRET-NAME,a\n"
    with pytest.raises(DatasetError) as caught:
        validate_snapshot(raw.replace(b"label", b"lable"), SOURCE, small_schema(), INGEST)
    assert "SECRET-NAME" not in str(caught.value)


def test_reject_rate_above_limit_halts_with_summary():
    outcome = check(small_schema(), ["person", "label"], [["p1", "a"], ["p2", "zzz"], ["p3", "zzz"]])
    with pytest.raises(RejectRateExceeded, match=r"2 of 3 rows rejected.*label/isin"):
        enforce_reject_rate(outcome, 0.5, SOURCE)
    enforce_reject_rate(outcome, 0.7, SOURCE)


def test_an_export_with_no_records_or_none_valid_stops_at_validate_and_says_which():
    empty = check(small_schema(), ["person", "label"], [])
    with pytest.raises(DatasetError, match="no records, only the header line"):
        enforce_reject_rate(empty, 0.05, SOURCE)
    rejected = check(small_schema(), ["person", "label"], [["p1", "zzz"], ["p2", "zzz"]])
    with pytest.raises(RejectRateExceeded, match=r"none of its 2 records passed validation; `privflow quarantine`"):
        enforce_reject_rate(rejected, 1.0, SOURCE)  # a limit of 100 % lets every rejection through, not zero rows


def test_schema_file_errors_name_the_field(tmp_path):
    path = tmp_path / "s.yaml"
    path.write_text("dataset: d\nprivacy_unit: who\ntarget: y\ncolumns:\n  y: {type: string, allowed: [a]}\n")
    with pytest.raises(SchemaError, match="privacy_unit: 'who' is not a declared column"):
        load_schema(path)
    path.write_text("dataset: d\nprivacy_unit: y\ntarget: y\ncolumns:\n  y: {type: blob}\n")
    with pytest.raises(SchemaError, match=r"column 'y': type 'blob' is unknown; use one of string"):
        load_schema(path)


cells = st.one_of(st.text(max_size=30), st.sampled_from(["", "a", "b", "1", "300", '"', "\n", ",", "NaN"]),
                  st.text(min_size=1000, max_size=5000))


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(rows=st.lists(st.lists(cells, min_size=1, max_size=5), max_size=20), junk=st.binary(max_size=200))
@example(rows=[["", "", "", ""]], junk=b"")  # a unique column with only missing values
def test_conservation_on_arbitrary_input(rows, junk):
    """rows_in = valid + quarantined + unparseable, and only DatasetError may escape."""
    schema = small_schema(n={"type": "int8"}, flag={"type": "bool"})
    raw = csv_bytes(["person", "label", "n", "flag"], []) + junk + b"\n" + csv_bytes(["x"], rows)[2:]
    try:
        outcome = validate_snapshot(raw, SOURCE, schema, INGEST)
    except DatasetError:
        return
    summary = outcome.summary()
    assert summary["rows_in"] == summary["rows_valid"] + summary["rows_quarantined"] + summary["lines_unparseable"]
    assert len(set(outcome.valid_rows)) == len(outcome.valid_rows)


def stream_outcome(raw: bytes, schema, **reader):
    from privflow.data.validation import validate_records

    return validate_records(RecordReader(SOURCE, schema, **reader), [("export.csv", io.BytesIO(raw))], schema)


def test_rows_keep_their_numbers_across_many_parse_blocks():
    """Malformed records spread over many small blocks: every number matches the csv module's."""
    rows = [[f"p{i}", "a"] + (["extra"] if i % 97 == 0 else []) for i in range(1, 5001)]
    outcome = stream_outcome(csv_bytes(["person", "label"], rows), small_schema(), block_size=4096)
    assert outcome.rows_in == 5000
    assert outcome.unparseable_rows == {i for i in range(1, 5001) if i % 97 == 0}
    assert len(outcome.valid_rows) == 5000 - len(outcome.unparseable_rows)


def test_a_record_longer_than_the_parse_block_is_named():
    raw = csv_bytes(["person", "label"], [["p1", "a"], ["p2" + "x" * 10_000, "b"]])
    with pytest.raises(DatasetError, match=r"/data/export.csv: after row 1: a record longer than the parse block"):
        stream_outcome(raw, small_schema(), block_size=4096)


def test_a_wrong_byte_deep_in_a_large_file_is_located():
    rows = [[f"p{i}", "a"] for i in range(200_000)]  # about 2 MB: past the first read
    raw = csv_bytes(["person", "label"], rows) + b"p\xff,a\n"
    with pytest.raises(DatasetError, match=rf"line 200002, byte {len(raw) - 4} is not valid utf-8"):
        stream_outcome(raw, small_schema())


def test_other_encodings_are_transcoded_and_leading_blank_lines_skipped():
    raw = "\n\nperson;label\nJosé;a\nZoë;b\n".encode("latin-1")
    outcome = stream_outcome(raw, small_schema(), delimiter=";", encoding="latin-1")
    assert outcome.valid_rows == [1, 2] and outcome.failures == []
    (batch,) = RecordReader(SOURCE, small_schema(), delimiter=";", encoding="latin-1").batches(
        [("export.csv", io.BytesIO(raw))])
    assert batch.columns.column("person").to_pylist() == ["José", "Zoë"]


def test_a_consumer_that_stops_early_never_hangs_the_parse_thread():
    """Validation can stop at the first batch (an error downstream): the reader thread ends."""
    import threading

    from privflow.data.prefetch import read_ahead

    produced = []

    def items():
        for i in range(1000):
            produced.append(i)
            yield i

    before = threading.active_count()
    batches = read_ahead(items(), 2)
    assert next(batches) == 0
    batches.close()  # the consumer leaves with the queue full
    assert threading.active_count() == before and len(produced) < 10
    with pytest.raises(ZeroDivisionError):
        list(read_ahead((1 // x for x in (1, 0, 1)), 2))  # a producer error reaches the consumer


def test_a_declared_date_format_refuses_impossible_dates_arrow_would_roll_over():
    """Arrow's strptime reads 31.02.2026 as 3 March: the record must be quarantined, not shifted."""
    schema = small_schema(month={"type": "date", "format": "%d.%m.%Y"})
    values = ["28.02.2026", "31.02.2026", "1.2.2026", "29.02.2024", "29.02.2026", "32.01.2026"]
    rows = [[f"p{i}", "a", value] for i, value in enumerate(values)]
    outcome = check(schema, ["person", "label", "month"], rows)
    assert outcome.valid_rows == [1, 3, 4]
    assert [(f.row, f.column, f.check) for f in outcome.failures] == [
        (row, "month", "coerce_date") for row in (2, 5, 6)]
    (batch,) = RecordReader(SOURCE, schema).batches([("export.csv", io.BytesIO(csv_bytes(["person", "label", "month"],
                                                                                        rows)))])
    typed, _ = coerce_batch(batch, schema)
    assert [str(v.date()) for v in typed["month"].dropna()] == ["2026-02-28", "2026-02-01", "2024-02-29"]


@pytest.mark.parametrize("marks, values, valid, numbers", [
    # a German spreadsheet's export: 4.157,45; a mark out of place is a failure, never a guess
    ({"decimal": ",", "thousands": "."}, ["4.157,45", "12.345.678", "41.57,45", "4157,45", "4.1570", "-1.000,5"],
     [1, 2, 4, 6], [4157.45, 12345678.0, 4157.45, -1000.5]),
    ({"decimal": ".", "thousands": ","}, ["1,234.5", "12,34", "1234.5"], [1, 3], [1234.5, 1234.5]),
    ({"delimiter": ",", "thousands": ","}, ["1,234.5", "12,34"], [1], [1234.5]),  # quoted in a comma file
    ({"decimal": ",", "thousands": " "}, ["1 234,5", "12 34", "1\u00a0234,5", "12\u202f345"], [1, 3, 4],
     [1234.5, 1234.5, 12345.0]),
    ({"decimal": ","}, ["4.157,45", "4157,45"], [2], [4157.45]),  # no thousands declared: 4.157 may mean 4,157
])
def test_digit_group_marks_are_read_only_where_declared_and_only_well_placed(marks, values, valid, numbers):
    schema = small_schema(amount={"type": "float", "min": -1e9, "max": 1e9})
    ingest = IngestSettings(source=SOURCE, **{"delimiter": ";", **marks})
    raw = csv_bytes(["person", "label", "amount"], [[f"p{i}", "a", v] for i, v in enumerate(values)],
                    delimiter=ingest.delimiter)
    outcome = validate_snapshot(raw, SOURCE, schema, ingest)
    assert outcome.valid_rows == valid
    assert {(f.column, f.check) for f in outcome.failures} <= {("amount", "coerce_float")}
    (batch,) = RecordReader.of(SOURCE, schema, ingest).batches([("export.csv", io.BytesIO(raw))])
    typed, _ = coerce_batch(batch, schema)
    assert typed.loc[valid, "amount"].tolist() == numbers  # failing records' values are never used


def test_a_digit_group_mark_that_is_also_the_decimal_mark_is_refused():
    with pytest.raises(ValueError, match="ingest.thousands and ingest.decimal are both '.'"):
        IngestSettings(source=SOURCE, delimiter=";", decimal=".", thousands=".")
    assert IngestSettings(source=SOURCE, thousands=",").thousands == ","  # a comma file quotes "1,234.5"
