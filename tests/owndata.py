"""Random schemas a data owner could write, random rows for them, random defects.

Used by the generative test (tests/integration/test_own_data_generative.py): every case must end with a
model whose predictions lie in the class set, or with a privflow error that names the file,
the column or the setting to change. Never a traceback.
"""

from __future__ import annotations

import csv
import io
import string
from dataclasses import dataclass, field
from datetime import date, datetime, timedelta

from hypothesis import strategies as st

FEATURE_TYPES = ["float", "int8", "int16", "int32", "int64", "bool", "category", "date", "datetime", "text"]
TARGET_TYPES = ["string", "int8", "int16", "int64", "bool", "float"]
BOOL_SPELLINGS = [None, ("Y", "N"), ("ja", "nein"), ("1", "0"), ("TRUE", "FALSE")]


@dataclass
class Column:
    name: str
    kind: str                   # one of FEATURE_TYPES or the target's type
    spec: dict                  # the schema entry, as YAML will hold it
    values: list                # values a valid row may carry, as text (sampled per row)
    nullable: bool = False


@dataclass
class Case:
    """One generated dataset: its schema file text, its CSV bytes, its settings, what to expect."""

    schema: dict
    header: list[str]
    rows: list[list[str]]
    delimiter: str
    decimal: str
    overrides: dict = field(default_factory=dict)
    classes: list[str] = field(default_factory=list)
    schema_mistake: str | None = None  # the column or key a deliberate schema mistake touches

    def csv_bytes(self) -> bytes:
        buffer = io.StringIO()
        writer = csv.writer(buffer, delimiter=self.delimiter, lineterminator="\n")
        writer.writerow(self.header)
        writer.writerows(self.rows)
        return buffer.getvalue().encode()


def _number_text(value: float, decimal: str, integer: bool) -> str:
    text = str(int(value)) if integer else repr(float(value))
    return text.replace(".", decimal) if decimal != "." else text


@st.composite
def feature_column(draw, index: int, decimal: str) -> Column:
    kind = draw(st.sampled_from(FEATURE_TYPES))
    name = f"{kind}_{index}"
    nullable = draw(st.booleans())
    spec: dict = {"nullable": nullable} if nullable else {}
    if kind in ("float", "int8", "int16", "int32", "int64"):
        integer = kind != "float"
        low = draw(st.integers(-100, 50))
        span = draw(st.integers(1, 70 if kind == "int8" else 1000))  # int8 bounds stay within -128..127
        spec.update(type=kind, min=low, max=low + span)
        if nullable and draw(st.booleans()):
            spec["fill"] = low
        values = [_number_text(low + span * i / 7, decimal, integer) if not integer else str(low + span * i // 7)
                  for i in range(8)]
    elif kind == "bool":
        spelling = draw(st.sampled_from(BOOL_SPELLINGS))
        spec["type"] = "bool"
        if spelling:
            spec.update(true_values=[spelling[0]], false_values=[spelling[1]])
        values = list(spelling) if spelling else ["true", "false", "yes", "no"]
    elif kind == "category":
        levels = draw(st.lists(st.text(string.ascii_lowercase, min_size=1, max_size=6), min_size=2, max_size=5,
                               unique=True))
        spec.update(type="string", allowed=levels)
        values = levels
    elif kind in ("date", "datetime"):
        start = date(2000, 1, 1) + timedelta(days=draw(st.integers(0, 8000)))
        end = start + timedelta(days=draw(st.integers(1, 3000)))
        if kind == "date":
            spec.update(type="date", min=start.isoformat(), max=end.isoformat())
            values = [(start + (end - start) * i / 7).isoformat() for i in range(8)]
        else:
            low, high = datetime.combine(start, datetime.min.time()), datetime.combine(end, datetime.min.time())
            spec.update(type="datetime", min=low.isoformat(), max=high.isoformat())
            values = [(low + (high - low) * i / 7).isoformat(sep=draw(st.sampled_from(["T", " "])))
                      for i in range(8)]
    else:  # free text: never a model input; sometimes with a regex
        spec["type"] = "string"
        if draw(st.booleans()):
            spec["regex"] = "^[a-z ]+$"
        values = ["alpha", "beta gamma", "delta"]
    return Column(name, kind, spec, values, nullable)


@st.composite
def target_column(draw) -> tuple[Column, list[str]]:
    kind = draw(st.sampled_from(TARGET_TYPES))
    count = 2 if kind == "bool" else draw(st.integers(2, 20))
    if kind == "string":
        labels = draw(st.lists(st.sampled_from(["yes", "no", "on", "off", "true", "false"])
                               | st.text(string.ascii_letters, min_size=1, max_size=8),
                               min_size=count, max_size=count, unique_by=str.lower))
        allowed, texts, names = labels, labels, labels
    elif kind == "bool":
        allowed = draw(st.permutations([False, True]))
        texts = ["true" if v else "false" for v in allowed]
        names = texts
    elif kind == "float":
        allowed = [i / 2 for i in range(count)]
        texts = [repr(v) for v in allowed]
        names = [format(v, "g") for v in allowed]
    else:
        first = draw(st.integers(-5, 5))
        allowed = list(range(first, first + count))
        texts = [str(v) for v in allowed]
        names = texts
    return Column("outcome", kind, {"type": kind, "allowed": allowed}, texts), names


DEFECTS = ["out_of_range", "not_a_number", "missing", "unknown_class", "extra_field", "bad_date", "bad_bool"]


@st.composite
def cases(draw) -> Case:
    delimiter = draw(st.sampled_from([",", ";", "\t"]))
    decimal = "," if delimiter == ";" and draw(st.booleans()) else "."
    features = [draw(feature_column(i, decimal)) for i in range(draw(st.integers(1, 5)))]
    target, classes = draw(target_column())
    rows_per_person = draw(st.integers(1, 5))
    people = draw(st.integers(12, 60))
    header = ["person_id", target.name] + [c.name for c in features]
    unit_spec = {"type": "string", "regex": "^U-[0-9]+$"}
    if rows_per_person == 1 and draw(st.booleans()):
        unit_spec["unique"] = True
    schema = {"dataset": "generated", "privacy_unit": "person_id", "target": target.name, "strict": True,
              "columns": {"person_id": unit_spec, target.name: target.spec, **{c.name: c.spec for c in features}}}
    rows = []
    for person in range(people):
        for _ in range(draw(st.integers(1, rows_per_person))):
            label = draw(st.integers(0, len(target.values) - 1))
            row = [f"U-{person}", target.values[label]]
            for column in features:
                missing = column.nullable and draw(st.integers(0, 9)) == 0
                row.append("" if missing else draw(st.sampled_from(column.values)))
            rows.append(row)
    for _ in range(draw(st.integers(0, 4))):  # defects the quarantine must account for
        position, defect = draw(st.integers(0, len(rows) - 1)), draw(st.sampled_from(DEFECTS))
        _plant(rows[position], defect, features, draw)
    # RDP: the PRV noise search takes seconds on such tiny datasets; the accountant is not under test here
    overrides = {"train": {"epochs": 1, "batch_size": max(2, len(rows) // 4), "hidden_units": 8, "accountant": "rdp"},
                 "validate": {"max_reject_rate": draw(st.sampled_from([0.2, 1.0]))},
                 "ingest": {"delimiter": delimiter, "decimal": decimal}}
    if rows_per_person > 1 and draw(st.integers(0, 3)) > 0:  # else refused: several rows, no bound
        overrides["privacy"] = {"max_rows_per_unit": draw(st.integers(1, rows_per_person))}
    case = Case(schema, header, rows, delimiter, decimal, overrides, classes)
    if draw(st.integers(0, 9).map(lambda v: v == 7)):  # about one case in ten (hypothesis favours 0)
        case.schema_mistake = _mistake(schema, features, draw)
    return case


def _plant(row: list[str], defect: str, features: list[Column], draw) -> None:
    column = draw(st.integers(0, len(features) - 1))
    cell = 2 + column
    if defect == "extra_field":
        row.append("surplus")
    elif defect == "unknown_class":
        row[1] = "no-such-class"
    elif defect == "missing":
        row[draw(st.sampled_from([0, 1, cell]))] = ""
    elif defect == "out_of_range":
        row[cell] = "99999" if features[column].kind not in ("date", "datetime") else "1900-01-01"
    elif defect == "not_a_number":
        row[cell] = "n/a"
    elif defect == "bad_date":
        row[cell] = "2021-02-30"
    else:
        row[cell] = "maybe"


def _mistake(schema: dict, features: list[Column], draw) -> str:
    """Break the schema the way people do; returns the name the error message must carry."""
    numeric = [c for c in features if c.kind in ("float", "int8", "int16", "int32", "int64", "date", "datetime")]
    choice = draw(st.sampled_from(["no_bounds", "bad_regex", "unknown_key", "target_not_a_column"]))
    if choice == "no_bounds" and numeric:
        column = draw(st.sampled_from(numeric))
        schema["columns"][column.name].pop("max")
        return column.name
    if choice == "bad_regex":
        schema["columns"]["person_id"]["regex"] = "^U-[0-9+$"
        return "person_id"
    if choice == "unknown_key":
        schema["columns"]["person_id"]["maximum"] = 3
        return "person_id"
    schema["target"] = "outcome_typo"
    return "outcome_typo"
