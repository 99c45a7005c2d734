"""How an export writes its CSV, guessed from its first bytes for `privflow schema draft`.

A team's first export is often a spreadsheet's: semicolons between fields, decimal commas,
digits grouped by points, Windows-1252 text. Read with the defaults (comma, point, UTF-8) it
stops on the first accented byte, or worse reads as one column whose name is the whole header
line. The draft therefore guesses the settings ingest needs, says what it guessed, and the owner
copies them under the dataset's `ingest:` in params.yaml. The pipeline itself never guesses:
it reads with the declared settings and refuses what does not fit them.

The guesses: the encoding is UTF-8 when every file decodes as UTF-8, else Windows-1252 (what
Excel writes on Western European Windows; a superset of Latin-1's printable characters),
else Latin-1, which decodes any byte. The delimiter is the one of `,;\\t|` that the standard
library's csv.Sniffer finds splitting every sampled line alike. The decimal mark is a comma
when a field delimiter other than a comma is used and more sampled numbers are written 3,14
than 3.14. A digit-group mark (`ingest.thousands`) is named when sampled numbers are grouped
with it, 4.157,45 or 1,234.5 or 1 234,5 or 1'234.5, and none is written the other way.
"""

from __future__ import annotations

import codecs
import csv
import gzip
import io
import json
import re
from pathlib import Path

from privflow.data.sources import list_source

SAMPLE_BYTES = 1 << 20   # enough lines to see the pattern; the rows are read in full later
DEFAULTS = {"delimiter": ",", "decimal": ".", "encoding": "utf-8", "thousands": None}
_DELIMITERS = ",;\t|"
# a decimal part after a comma or a point, digits grouped or not before it: 3,14 4.157,45 1,234.5
_COMMA_NUMBER = re.compile(r"[+-]?(\d+|\d{1,3}([. ']\d{3})+),\d+")
_POINT_NUMBER = re.compile(r"[+-]?(\d+|\d{1,3}([, ']\d{3})+)\.\d+")
_DATE = re.compile(r"\d{1,4}[./-]\d{1,2}[./-]\d{1,4}")  # 28.01.2026 is no grouped number


def sniff_dialect(source: Path, encoding: str | None = None) -> dict[str, str | None]:
    """{delimiter, decimal, encoding, thousands}: the marks from the first file's first lines, the
    encoding (unless given) from every byte of every CSV file (one accented name deep in an export
    is enough to stop a run); the defaults for Parquet."""
    files = [path for path in list_source(source) if path.name.endswith((".csv", ".csv.gz"))]
    if not files:
        return dict(DEFAULTS)
    with _open(files[0]) as handle:
        sample = handle.read(SAMPLE_BYTES)
    encoding = encoding or next((name for name in ("utf-8", "cp1252") if all(_decodes(path, name) for path in files)),
                                "latin-1")
    try:  # incremental: the sample may end inside a character
        text = codecs.getincrementaldecoder(encoding)(errors="replace").decode(sample, final=False)
    except LookupError:  # an unknown --encoding: IngestSettings names it
        text = sample.decode("latin-1")
    lines = text.splitlines()[:-1] if len(sample) == SAMPLE_BYTES else text.splitlines()  # the last may be cut
    delimiter = _delimiter(lines)
    fields = [field.strip().replace("\u00a0", " ").replace("\u202f", " ")  # no-break spaces group as spaces
              for row in csv.reader(io.StringIO("\n".join(lines[1:200])), delimiter=delimiter) for field in row]
    decimal = _decimal(fields, delimiter)
    return {"delimiter": delimiter, "decimal": decimal, "encoding": encoding,
            "thousands": _thousands(fields, decimal)}


def _open(path: Path):
    return gzip.open(path, "rb") if path.name.endswith(".gz") else open(path, "rb")


def _decodes(path: Path, encoding: str) -> bool:
    """Whether every byte of the file decodes, read in blocks (a multi-GB export is never held)."""
    decoder = codecs.getincrementaldecoder(encoding)()
    try:
        with _open(path) as handle:
            while block := handle.read(SAMPLE_BYTES * 16):
                decoder.decode(block)
            decoder.decode(b"", final=True)
    except UnicodeDecodeError:
        return False
    return True


def _delimiter(lines: list[str]) -> str:
    sample = "\n".join(line for line in lines[:200] if line.strip())
    try:
        return csv.Sniffer().sniff(sample, delimiters=_DELIMITERS).delimiter
    except csv.Error:  # one column, or no consistent pattern: the default, and the reader says what it finds
        return DEFAULTS["delimiter"]


def _decimal(fields: list[str], delimiter: str) -> str:
    if delimiter == ",":
        return "."
    commas = sum(_COMMA_NUMBER.fullmatch(field) is not None for field in fields)
    points = sum(_POINT_NUMBER.fullmatch(field) is not None for field in fields)
    return "," if commas > points else "."


def _thousands(fields: list[str], decimal: str) -> str | None:
    """The mark that groups digits in threes in some sampled number, where none uses it otherwise."""
    point = re.escape(decimal)
    for mark in (m for m in ".,' " if m != decimal):  # the delimiter may be one: a quoted "1,234.5"
        grouped = re.compile(rf"[+-]?\d{{1,3}}({re.escape(mark)}\d{{3}})+({point}\d+)?")
        numbers = [f for f in fields if re.fullmatch(rf"[+-]?[\d{re.escape(mark)}]+({point}\d+)?", f)
                   and not _DATE.fullmatch(f)]
        marked = [f for f in numbers if mark in f]
        if marked and all(grouped.fullmatch(f) for f in marked):
            return mark
    return None


def ingest_entry(dialect: dict[str, str | None]) -> str:
    """The dataset's `ingest:` override in params.yaml's flow style, or "" when it reads as the defaults."""
    changed = {key: value for key, value in dialect.items() if value != DEFAULTS[key]}
    if not changed:
        return ""
    # JSON strings are YAML's double-quoted ones: a tab is written "\t", which YAML reads as a tab
    return "ingest: {" + ", ".join(f"{key}: {json.dumps(value)}" for key, value in dialect.items()
                                   if value is not None) + "}"
