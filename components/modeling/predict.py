"""Score new records with a dataset's compressed model: the `privflow predict` command.

The records go through the same reader, coercion and schema checks as training data. Only
the columns the model reads must be there: the target, ids and every other column may be
absent (new records carry no label, and may have no visit id yet), and are checked where
present. A record that fails is named (file, row, column, check) and not scored; a guess on
bad input would look like an answer.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from privflow.data.coercion import coerce_batch
from privflow.data.features import encode_features
from privflow.data.records import FileSpan, RecordReader, RowFailure, first_header
from privflow.data.row_checks import to_pandera
from privflow.data.schema import DatasetSchema
from privflow.data.sources import disk_members, list_source
from privflow.data.validation import one_per_cell, schema_failures
from privflow.errors import SchemaError
from privflow.modeling.export import load_export, onnx_logits, probabilities
from privflow.settings import IngestSettings


@dataclass
class Scored:
    rows: list[int]
    probabilities: np.ndarray  # rows x classes
    classes: list[str]
    failures: list[RowFailure]
    spans: list[FileSpan]

    def lines(self) -> Iterator[list[str]]:
        """CSV lines: a header, then one per scored record, keyed by its row number in the input
        (no identifier or input value is copied into the output)."""
        yield ["row", "prediction", *(f"p_{c}" for c in self.classes)]
        for row, p in zip(self.rows, self.probabilities):
            yield [str(row), self.classes[int(p.argmax())], *(f"{v:.6f}" for v in p)]


def columns_read(schema: DatasetSchema, card: dict) -> set[str]:
    """The columns the export reads: a text model's text column, or the tabular features."""
    return {card["text"]["column"]} if card.get("text") else set(schema.feature_columns)


def scoring_schema(schema: DatasetSchema, read: set[str]) -> DatasetSchema:
    """The training schema with every column the model does not read optional (missing values
    allowed); the target among them: new records carry no label."""
    optional = {name: spec.model_copy(update={"nullable": True}) for name, spec in schema.columns.items()
                if name not in read}
    return schema.model_copy(update={"columns": {**schema.columns, **optional}})


def text_tokenizer(text_card: dict | None, schema: DatasetSchema):
    """A text model's own tokenizer (from the verified pretrained files); None for the others."""
    if text_card is None:
        return None
    if text_card["column"] not in schema.text_columns:
        raise SchemaError(f"the model reads the text column '{text_card['column']}', which the schema no longer "
                          "declares as `type: text`; re-run the pipeline or score with the old schema")
    from privflow.modeling.text_encoder import load_tokenizer, pretrained

    return load_tokenizer(pretrained(text_card["encoder"]), text_card["max_tokens"])


def model_inputs(valid, scoring: DatasetSchema, card: dict, tokenizer) -> np.ndarray | dict[str, np.ndarray]:
    """What the export reads: encoded features, or a text model's token ids and mask."""
    if tokenizer is not None:
        from privflow.modeling.text_encoder import token_arrays

        return token_arrays(tokenizer, valid[card["text"]["column"]].tolist())
    data = encode_features(valid, scoring)
    if data.feature_names != card["features"]:
        raise SchemaError(f"the model was trained on features {card['features']}, the schema now gives "
                          f"{data.feature_names}; re-run the pipeline or score with the old schema")
    return data.features


def check_model_columns(source: Path, schema: DatasetSchema, ingest: IngestSettings, read: set[str]) -> None:
    """Refuse a file whose first line lacks a column the model reads, saying so in scoring's
    words (the reader's own check would advise declaring it in the schema). A first line that
    names no declared column at all is left to the reader, which asks whether the header line
    is missing and shows none of the line (it may be data)."""
    header = first_header(source, ingest)
    missing = [name for name in schema.columns if name in read and name not in header]
    if missing and set(header) & set(schema.columns):
        raise SchemaError(f"{source}: no column {missing[0]!r}" + (f" (nor {missing[1:]})" if missing[1:] else "")
                          + ", which the model reads; add it to the file (the label, ids and the schema's other "
                            "columns may be left out)")


def score(source: Path, schema: DatasetSchema, ingest: IngestSettings, model_dir: Path) -> Scored:
    runtime, card = load_export(model_dir)
    tokenizer = text_tokenizer(card.get("text"), schema)
    read = columns_read(schema, card)
    check_model_columns(source, schema, ingest, read)
    scoring = scoring_schema(schema, read)
    reader = RecordReader.of(str(source), scoring, ingest, optional=frozenset(schema.columns.keys() - read))
    checks = to_pandera(scoring, unique=False)
    rows, scored, failures = [], [], []
    for batch in reader.batches(disk_members(list_source(source))):
        typed, coercion = coerce_batch(batch, scoring)
        found = coercion + schema_failures(typed, checks)
        failures += found
        valid = typed.drop(index=sorted({f.row for f in found}))
        if valid.empty:
            continue
        scored.append(probabilities(onnx_logits(runtime, model_inputs(valid, scoring, card, tokenizer))))
        rows += valid.index.tolist()
    failures = one_per_cell(reader.failures + failures)
    stacked = np.concatenate(scored) if scored else np.empty((0, len(card["classes"])))
    return Scored(rows, stacked, card["classes"], failures, reader.spans)
