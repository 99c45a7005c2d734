"""Sources: CSV, gzip-compressed CSV, Parquet, and folders of them, through the same code."""

from __future__ import annotations

import gzip
import hashlib
import io
import tarfile

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from privflow.data.sources import disk_members, list_source, pack_stream, snapshot_id, snapshot_members
from privflow.data.validation import validate_snapshot
from privflow.demo_data import demo_table
from privflow.errors import DatasetError
from privflow.settings import IngestSettings
from tests.unit.test_validate import csv_bytes


@pytest.fixture
def table():
    header, rows = demo_table()
    return header, [r for r in rows if len(r) == len(header)]  # 568 rows, 7 of them invalid


def typed_frame(header, rows) -> pd.DataFrame:
    frame = pd.DataFrame(rows, columns=header)
    for column in header[2:]:
        frame[column] = pd.to_numeric(frame[column], errors="coerce")  # "n/a" becomes a null
    return frame


def write_parquet(path, header, rows):
    pq.write_table(pa.Table.from_pandas(typed_frame(header, rows), preserve_index=False), path)


def outcome_of(source, schema):
    return validate_snapshot(disk_members(list_source(source)), str(source), schema, IngestSettings(source=source))


def test_every_kind_of_source_gives_the_same_decisions(tmp_path, table, demo_schema):
    header, rows = table
    (tmp_path / "one.csv").write_bytes(csv_bytes(header, rows))
    (tmp_path / "one.csv.gz").write_bytes(gzip.compress(csv_bytes(header, rows)))
    write_parquet(tmp_path / "one.parquet", header, rows)
    folder = tmp_path / "export"
    folder.mkdir()
    (folder / "part-1.csv.gz").write_bytes(gzip.compress(csv_bytes(header, rows[:300])))
    write_parquet(folder / "part-2.parquet", header, rows[300:])
    reference = outcome_of(tmp_path / "one.csv", demo_schema)
    assert reference.summary()["rows_in"] == 568 and len(reference.valid_rows) == 561
    for source in (tmp_path / "one.csv.gz", tmp_path / "one.parquet", folder):
        outcome = outcome_of(source, demo_schema)
        assert outcome.valid_rows == reference.valid_rows  # rows numbered across files, in name order
        failed = {(f.row, f.column) for f in outcome.failures}
        assert failed == {(f.row, f.column) for f in reference.failures}


def test_parquet_nulls_are_missing_values_not_coercion_failures(tmp_path, table, demo_schema):
    header, rows = table
    write_parquet(tmp_path / "one.parquet", header, rows)  # row 3's "n/a" radius is a null here
    outcome = outcome_of(tmp_path / "one.parquet", demo_schema)
    assert [f.check for f in outcome.failures if f.row == 3] == ["not_nullable"]


def test_snapshot_ids_and_packing(tmp_path):
    folder = tmp_path / "export"
    folder.mkdir()
    contents = {"a.csv": b"x,y\n1,2\n", "b.csv": b"x,y\n3,4\n" * 1000}
    for name, data in contents.items():
        (folder / name).write_bytes(data)
    paths = list_source(folder)
    assert snapshot_id(paths[:1], False) == "sha256:" + hashlib.sha256(contents["a.csv"]).hexdigest()
    folder_id = snapshot_id(paths, True)
    packed = b"".join(pack_stream(paths, True, folder_id))
    assert packed == b"".join(pack_stream(paths, True, folder_id))  # deterministic: no times or owners
    with tarfile.open(fileobj=io.BytesIO(packed)) as archive:  # a standard tar, as tarfile writes it
        assert archive.getnames() == ["a.csv", "b.csv"] and len(packed) % tarfile.RECORDSIZE == 0
    unpacked = {name: stream.read() for name, stream in snapshot_members(io.BytesIO(packed), list(contents), True)}
    assert unpacked == contents
    (folder / "a.csv").rename(folder / "c.csv")
    assert len({folder_id, snapshot_id(list_source(folder), True), snapshot_id(paths[1:], True)}) == 3


def test_a_source_that_changes_while_sealed_is_refused(tmp_path):
    source = tmp_path / "export.csv"
    source.write_bytes(b"x,y\n1,2\n")
    taken = snapshot_id([source], False)
    source.write_bytes(b"x,y\n1,3\n")
    with pytest.raises(DatasetError, match="export.csv: the source changed while it was being ingested"):
        b"".join(pack_stream([source], False, taken))


@pytest.mark.parametrize("make, message", [
    (lambda d: (d / "notes.txt").write_text("x"), r"files of unknown kind \['notes.txt'\]"),
    (lambda d: None, "folder holds no .csv, .csv.gz, .parquet files"),
    (lambda d: (d / "a.csv.gz").write_bytes(gzip.compress(b"patient_id\n1\n")[:-6]), r"a.csv.gz: not a complete gzip"),
    (lambda d: (d / "a.parquet").write_bytes(b"PAR1 not really"), r"a.parquet: not a readable Parquet file"),
])
def test_bad_folders_and_files_are_named(tmp_path, demo_schema, make, message):
    folder = tmp_path / "export"
    folder.mkdir()
    make(folder)
    with pytest.raises(DatasetError, match=message):
        outcome_of(folder, demo_schema)


def test_a_folder_file_with_other_columns_is_named(tmp_path, table, demo_schema):
    header, rows = table
    folder = tmp_path / "export"
    folder.mkdir()
    (folder / "part-1.csv").write_bytes(csv_bytes(header, rows[:10]))
    (folder / "part-2.csv").write_bytes(csv_bytes([h.replace("mean_area", "area") for h in header], rows[10:]))
    with pytest.raises(DatasetError, match=r"export/part-2.csv: the first line does not name the schema's columns: missing \['mean_area'\]"):
        outcome_of(folder, demo_schema)


def test_unknown_file_kind_and_missing_source(tmp_path):
    (tmp_path / "data.xlsx").write_bytes(b"x")
    with pytest.raises(DatasetError, match="data.xlsx: unknown kind of file"):
        list_source(tmp_path / "data.xlsx")
    with pytest.raises(DatasetError, match="nope.csv: source not found"):
        list_source(tmp_path / "nope.csv")
