"""Bytes to checked text: a wrong encoding named by its line and byte, a truncated gzip said so, and
the header line read (blank lines and a BOM consumed) and checked against the schema.

What the first line holds may be a data row (a file exported without its header line), so
names from the file are never repeated in a message: only their positions and count.
"""

from __future__ import annotations

import codecs
import csv
import io
import zlib
from collections.abc import Iterable
from gzip import GzipFile

from privflow.data.schema import DatasetSchema
from privflow.data.sources import PIECE
from privflow.errors import DatasetError

PEEK = 1 << 16


def file_label(source: str, name: str) -> str:
    """How messages name a file: the source itself, or the file inside a source folder."""
    return source if source.endswith(name) else f"{source}/{name}"


class CheckedText(io.RawIOBase):
    """UTF-8 bytes of a stream in `encoding`; a wrong byte is reported with its line and offset.

    Also turns a truncated or corrupt gzip stream into a clear error.
    """

    def __init__(self, raw: Iterable[bytes] | io.RawIOBase, label: str, encoding: str, gzipped: bool):
        try:
            self._utf8 = codecs.lookup(encoding).name == "utf-8"
            self._decoder = codecs.getincrementaldecoder(encoding)("strict")
        except LookupError:
            raise DatasetError(f"{label}: unknown encoding '{encoding}' in ingest.encoding") from None
        self._raw = GzipFile(fileobj=raw, mode="rb") if gzipped else raw
        self._label, self._encoding, self._gzipped = label, encoding, gzipped
        self._offset = self._lines = 0
        self._out = memoryview(b"")

    def readable(self) -> bool:
        return True

    def _next_piece(self) -> bytes:
        try:
            return self._raw.read(PIECE)
        except (OSError, EOFError, zlib.error):
            if not self._gzipped:
                raise
            raise DatasetError(f"{self._label}: not a complete gzip file; re-export or re-compress it") from None

    def _decode(self, piece: bytes) -> bytes:
        pending = self._decoder.getstate()[0]
        try:
            text = self._decoder.decode(piece, final=not piece)
        except UnicodeDecodeError as error:
            position = self._offset - len(pending) + error.start
            line = self._lines + piece[: max(0, error.start - len(pending))].count(b"\n") + 1
            raise DatasetError(
                f"{self._label}: line {line}, byte {position} is not valid {self._encoding}; set "
                "ingest.encoding in params.yaml to the file's encoding (e.g. latin-1, cp1252)") from None
        self._offset += len(piece)
        self._lines += piece.count(b"\n")
        return piece if self._utf8 else text.encode()

    def readinto(self, buffer) -> int:
        while not self._out:
            piece = self._next_piece()
            self._out = memoryview(self._decode(piece))
            if not piece:
                break
        count = min(len(buffer), len(self._out))
        buffer[:count] = self._out[:count]
        self._out = self._out[count:]
        return count


def read_header(text: io.BufferedReader, label: str, delimiter: str) -> list[str]:
    """The header record (names as written); leading blank lines and a BOM are consumed."""
    peek = text.peek(PEEK)[:PEEK]
    if not peek.strip().removeprefix(b"\xef\xbb\xbf").strip():
        raise DatasetError(f"{label}: file is empty; expected a header line and data rows")
    blank = len(peek) - len(peek.removeprefix(b"\xef\xbb\xbf").lstrip(b" \t\r\n"))
    blank = peek.rfind(b"\n", 0, blank) + 1  # keep the header line's own leading spaces
    text.read(blank)
    peek = text.peek(PEEK)[:PEEK]
    head = peek.removeprefix(b"\xef\xbb\xbf").decode("utf-8", errors="replace")
    if len(peek) == PEEK and "\n" not in head:
        raise DatasetError(f"{label}: no end of the header line in the first {PEEK} bytes; "
                           "is this a CSV file?")
    try:
        return next(csv.reader(io.StringIO(head, newline=""), delimiter=delimiter, strict=True))
    except (csv.Error, StopIteration):
        raise DatasetError(f"{label}: header line cannot be parsed as CSV") from None


def _positions(header: list[str], wanted) -> str:
    return ", ".join(str(i + 1) for i, name in enumerate(header) if wanted(name))


def check_header(header: list[str], schema: DatasetSchema, label: str, delimiter: str,
                  extras: tuple[str, ...] = ()) -> None:
    """The first line must name the declared columns. What it holds instead may be a data
    row (a file exported without its header line), so names from the file are never
    repeated in a message: only their positions and count. Declared names are the schema's."""
    declared = set(schema.columns)
    missing = [c for c in schema.columns if c not in header]
    unknown = [c for c in header if c not in declared]
    duplicated = sorted({c for c in header if header.count(c) > 1})
    if duplicated and not (unknown and schema.strict):
        raise DatasetError(f"{label}: header repeats column name(s) {[d for d in duplicated if d in declared]}"
                           f" at fields {_positions(header, lambda n: n in duplicated)}; rename them")
    if len(header) == 1 and len(declared) > 1:
        raise DatasetError(
            f"{label}: header has a single column, the schema declares {len(declared)}; "
            f"is the delimiter really {delimiter!r}? set ingest.delimiter in params.yaml"
        )
    if missing or (unknown and schema.strict):
        own = [name for name in header if name not in extras]  # the file's own first line
        headerless = " (is the header line missing? privflow needs one)" if not set(own) & declared else ""
        listed = f"{missing[:8]}" + (f" and {len(missing) - 8} more" if len(missing) > 8 else "")
        raise DatasetError(
            f"{label}: the first line does not name the schema's columns{headerless}: missing {listed}"
            + (f"; {len(unknown)} field(s) not declared, at position(s) {_positions(header, lambda n: n not in declared)}"
               " (not shown: the line may be data)" if unknown else "")
            + "; fix the file or declare the columns in the dataset's schema file"
        )
