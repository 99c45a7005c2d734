"""Sources: CSV, gzip-compressed CSV, Parquet, and folders of them, through the same code."""

from __future__ import annotations

import gzip
import hashlib

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from components.demo_data import demo_table
from components.errors import DatasetError
from components.settings import IngestSettings
from components.sources import SourceFile, pack, read_source, snapshot_id, unpack
from components.validate import validate_snapshot
from tests.test_validate import csv_bytes


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
    files = read_source(source)
    return validate_snapshot(files, str(source), schema, IngestSettings(source=source))[1]


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
    files = [SourceFile("a.csv", b"x,y\n1,2\n"), SourceFile("b.csv", b"x,y\n3,4\n")]
    assert snapshot_id(files[:1], False) == "sha256:" + hashlib.sha256(b"x,y\n1,2\n").hexdigest()
    assert pack(files, True) == pack(files, True)  # deterministic: no times, owners or order
    assert unpack(pack(files, True), ["a.csv", "b.csv"], True) == files
    renamed = [SourceFile("c.csv", files[0].data), files[1]]
    assert len({snapshot_id(files, True), snapshot_id(renamed, True), snapshot_id(files[::-1][:1], True)}) == 3


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
    with pytest.raises(DatasetError, match=r"export/part-2.csv: columns do not match .*missing \['mean_area'\]"):
        outcome_of(folder, demo_schema)


def test_unknown_file_kind_and_missing_source(tmp_path):
    (tmp_path / "data.xlsx").write_bytes(b"x")
    with pytest.raises(DatasetError, match="data.xlsx: unknown kind of file"):
        read_source(tmp_path / "data.xlsx")
    with pytest.raises(DatasetError, match="nope.csv: source not found"):
        read_source(tmp_path / "nope.csv")
