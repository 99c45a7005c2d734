"""`privflow schema draft SOURCE`: a first schema for the data owner, read from the data.

The data owner may see the data, so this reads it: each column's type (the narrowest that
every value fits), whether values are missing, whether they are all distinct, a candidate
person-id column and candidate `allowed:` lists for columns with few values. It does not
write `min:`/`max:`: bounds measured on the rows would put private extremes into the
schema, outside the DP guarantee, so the owner declares them from domain knowledge (the
draft says so, and privflow refuses to train until they are there). Nothing is written
anywhere but the draft file the owner asks for.
"""

from __future__ import annotations

import re
from datetime import datetime
from pathlib import Path

from privflow.data.column_profile import (DRAFT_MAX_CHARS, ISO_FORMATS, MAX_ALLOWED, ColumnProfile,
                                         profile_source)
from privflow.data.schema import INTEGER_TYPES
from privflow.errors import DatasetError

_PERSON_NAME = re.compile(r"^(patient|customer|person|user|employee|member|client|student|citizen)", re.I)
_ID_NAME = re.compile(r"(^|_)(id|key|number|no)$|" + _PERSON_NAME.pattern, re.I)
_TARGET_NAME = re.compile(r"(target|label|outcome|class|result|churn|churned|diagnosis|^y)$", re.I)
_TIME_KINDS = ("date", "datetime")


def _yaml_value(value: str, kind: str) -> str:
    if kind in INTEGER_TYPES or kind == "float":
        return value
    return "'" + value.replace("'", "''") + "'"


def draft_schema(source: Path, ingest, dataset: str, ingest_line: str = "") -> str:
    """The draft as commented YAML text; `ingest_line`: the dataset's `ingest:` override it was read with."""
    header, profiles, rows = profile_source(source, ingest)
    if not rows:  # types, ids and categories drafted from nothing would all be wrong
        raise DatasetError(f"{source}: no records, only the header line; draft from an export that has rows")
    unit, unit_comment = _privacy_unit(header, profiles)
    few = [n for n in header if n != unit and profiles[n].distinct and 2 <= len(profiles[n].distinct) <= MAX_ALLOWED
           and profiles[n].type not in _TIME_KINDS]
    target = next((n for n in few if _TARGET_NAME.search(n)), few[-1] if few else header[-1])
    others = [n for n in few if n != target]
    lines = [
        f"# Draft schema for {dataset}, read from {source} ({rows} records) by `privflow schema draft`.",
        "# Check every line: types and candidate `allowed:` lists come from the rows you have now.",
        "# min/max are left for you to declare from domain knowledge (an age is 0..120, a rate 0..1):",
        "# bounds measured on the rows would leak private extremes outside the privacy guarantee,",
        "# so privflow scales features by declared bounds only and refuses to train until they are set.",
        *([f"# Read with `{ingest_line}`: put the same in the dataset's entry in params.yaml."] if ingest_line else []),
        f"dataset: {dataset}",
        f"privacy_unit: {unit}    # {unit_comment}",
        f"target: {target}    # candidate: a column with few values; the class order is its allowed list"
        + (f" (others: {', '.join(others)})" if others else ""),
        "strict: true",
        "columns:",
    ]
    for name in header:
        spec, comment = _column_line(profiles[name], name in (unit, target))
        if name in (unit, target) and profiles[name].missing:  # never nullable: such rows are quarantined
            spec = spec.replace(", nullable: true", "")
            comment = f"{profiles[name].missing} record(s) have no value: validation will quarantine them"
        lines.append(f"  {name}: {{{spec}}}" + (f"    # {comment}" if comment else ""))
    return "\n".join(lines) + "\n"


def _privacy_unit(header: list[str], profiles: dict[str, ColumnProfile]) -> tuple[str, str]:
    """The candidate unit DP protects, and what the owner must check: a column named for a person
    first, even when it repeats (the guarantee then covers all of a person's rows: user-level DP),
    else an id whose values never repeat (a row-level unit protects one record, not a person)."""
    person = next((n for n in header if _PERSON_NAME.search(n) and profiles[n].type == "string"), None)
    if person is not None and profiles[person].repeated:
        row_ids = [n for n in header if not profiles[n].repeated and _ID_NAME.search(n)]
        return person, ("candidate: the person; values repeat, so set privacy.max_rows_per_unit in params.yaml "
                        "(user-level DP: each person's rows bounded and protected together) or training refuses"
                        + (f"; {row_ids[0]} never repeats, but as the unit it would protect one record, not a person"
                           if row_ids else ""))
    unit = next((n for n in header if not profiles[n].repeated and _ID_NAME.search(n)),
                next((n for n in header if not profiles[n].repeated and profiles[n].type == "string"), header[0]))
    return unit, f"candidate: values never repeat{'' if _ID_NAME.search(unit) else ' (check it)'}"


def _column_line(profile: ColumnProfile, role: bool) -> tuple[str, str]:
    """One column's entry and the comment that says what the owner must still decide."""
    kind = profile.type
    if kind == "text" and not role:
        return _text_line(profile)
    kind = "string" if kind == "text" else kind  # a unit or target is never free text
    if kind == "string" and not role and profile.number_with_defects:  # the type, its defects quarantined
        kind = profile.number_with_defects
    numeric = kind in INTEGER_TYPES or kind == "float"
    parts = [f"type: {kind}"]
    if profile.missing:
        parts.append("nullable: true")
    one_word = profile.words == profile.present  # ids have no spaces; distinct notes are chance
    if not profile.repeated and profile.present > 1 and ((kind == "string" and one_word) or kind in INTEGER_TYPES):
        parts.append("unique: true")  # an id; distinct measures (a salary, a time) or notes are chance, not a rule
    few = profile.distinct is not None and profile.repeated
    if few and (kind == "string" or (role and kind != "bool")):
        values = sorted(profile.distinct, key=lambda v: (float(v) if numeric else 0.0, v))
        parts.append("allowed: [" + ", ".join(_yaml_value(v, kind) for v in values) + "]")
        return ", ".join(parts), ""
    if kind == "bool" and role:
        parts.append("allowed: [false, true]")
    elif not role and kind in _TIME_KINDS:
        return _time_line(profile, kind, parts)
    elif not role and numeric:
        return ", ".join(parts), "declare min: ..., max: ... from domain knowledge" + (
            f"; {profile.not_numbers} value(s) are not numbers: validation will quarantine those records"
            if profile.not_numbers else "")
    elif kind == "string" and not role and "unique: true" in parts:
        return ", ".join(parts), "an id (every value distinct): never a model input"
    elif kind == "string" and not role:
        return ", ".join(parts), "free text: never a model input (give `allowed:` to make it a category)"
    return ", ".join(parts), ""


def _text_line(profile: ColumnProfile) -> tuple[str, str]:
    """Free text: what the text preset (train.model: text) reads; never a tabular feature."""
    said = [f"free text, what the text preset reads (train.model: text): set max_chars to the longest text you "
            f"accept; longer ones are quarantined"]
    if profile.over_draft_chars:
        said.append(f"{profile.over_draft_chars} record(s) are longer than {DRAFT_MAX_CHARS}")
    if profile.missing:
        said.append(f"{profile.missing} record(s) have none: validation will quarantine them")
    return f"type: text, max_chars: {DRAFT_MAX_CHARS}", "; ".join(said)


def _time_line(profile: ColumnProfile, kind: str, parts: list[str]) -> tuple[str, str]:
    """A date or datetime feature: its format where not ISO 8601, bounds to declare in it, and its defects."""
    fmt = profile.time_format
    if fmt in ISO_FORMATS:
        fmt = None  # ISO 8601 is what a date column reads without a format
    if fmt:
        parts.append(f"format: '{fmt}'")
    low, high = (datetime(*day).strftime(fmt or ("%Y-%m-%d" if kind == "date" else "%Y-%m-%dT%H:%M:%S"))
                 for day in ((2000, 1, 1), (2030, 12, 31)))
    said = [f"declare min: '{low}', max: '{high}' from domain knowledge" + (", written in the format" if fmt else "")]
    failing = profile.not_times.get(profile.time_format, 0)
    if failing:
        said.append(f"{failing} value(s) are not {kind}s in it: validation will quarantine those records")
    if fmt and "%d" in fmt and "%m" in fmt:
        twin = fmt.replace("%d", "%?").replace("%m", "%d").replace("%?", "%m")
        if profile.not_times.get(twin) == failing:
            said.append(f"every value also reads as '{twin}' (no day above 12): check which the export writes")
    return ", ".join(parts), "; ".join(said)
