"""Checks that need no data, run before the ledger is charged.

A run refused here spends nothing: the model preset must fit the schema's encoded features
and classes, privflow's DP step must cover every trainable layer, and one forward pass on
zeros must give one logit per class. Anything that fails only after decryption keeps its
charge (the data was touched), and its message says so.
"""

from __future__ import annotations

import math

from privflow.data.feature_names import feature_names
from privflow.data.schema import DatasetSchema
from privflow.data.schema_file import load_schema
from privflow.errors import PrivacyError, PrivflowError
from privflow.settings import Settings, TrainSettings

SHAPED_PRESETS = {"cnn": 3, "lstm": 2, "transformer": 2}  # input_shape sizes each preset takes


class ConfigurationError(PrivflowError):
    """The training configuration cannot work with this dataset's schema."""


def check_model_config(t: TrainSettings, n_features: int, n_classes: int, where: str) -> None:
    """Refuse a model configuration that cannot train on `n_features` inputs and `n_classes`
    classes, naming the setting to change (`where` names the dataset)."""
    import torch

    from privflow.modeling.models import build_model
    from privflow.privacy.dp_sgd import PrivateGradient

    if n_classes < 2:
        raise ConfigurationError(f"{where}: the target has {n_classes} class(es); list at least two in its `allowed:`")
    if n_features < 1:
        raise ConfigurationError(f"{where}: the schema gives the model no input; declare feature columns")
    try:
        model = build_model(t.model, n_features, n_classes, t.hidden_units, t.input_shape)
        PrivateGradient(model, t.max_grad_norm)
        with torch.no_grad():
            logits = model(torch.zeros(2, n_features))
    except PrivacyError as error:
        raise ConfigurationError(f"{where}: {error}") from None
    except (ValueError, RuntimeError) as error:  # torch's shape errors name sizes, never data
        raise ConfigurationError(f"{where}: train.model '{t.model}' (hidden_units {t.hidden_units}, input_shape "
                                 f"{t.input_shape}) cannot take {n_features} features and {n_classes} classes: "
                                 f"{error}; change the train section of this dataset") from None
    if tuple(logits.shape) != (2, n_classes):
        raise ConfigurationError(f"{where}: train.model '{t.model}' gives {tuple(logits.shape)[1:]} outputs, "
                                 f"the target has {n_classes} classes")


def text_column(text_columns: list[str], wanted: str | None, where: str) -> str:
    """The text column the `text` preset reads: train.text.column, or the schema's only one."""
    if wanted is not None and wanted not in text_columns:
        raise ConfigurationError(f"{where}: train.text.column '{wanted}' is not a `type: text` column of its schema "
                                 f"(text columns: {', '.join(text_columns) or 'none'})")
    if wanted is None and len(text_columns) != 1:
        found = f"{len(text_columns)} ({', '.join(text_columns)})" if text_columns else "none"
        raise ConfigurationError(f"{where}: train.model text reads one `type: text` column; the schema has {found}: "
                                 "declare one, or name it in train.text.column")
    return wanted or text_columns[0]


def check_text_model(t: TrainSettings, text_columns: list[str], where: str) -> str:
    """The text preset's column, once its pretrained encoder is known and installed (no torch)."""
    from privflow.modeling.text_encoder import pretrained

    column = text_column(text_columns, t.text.column, where)
    try:
        pretrained(t.text.encoder).files()
    except PrivflowError as error:
        raise ConfigurationError(f"{where}: train.text.encoder: {error}") from None
    return column


def check_dataset(settings: Settings) -> DatasetSchema:
    """What can be known of a dataset before its source is read: the schema loads (every
    mistake named), and the model's input shape fits the features the schema gives. Cheap
    (no torch), so `privflow run` and `ingest` both call it before touching the data."""
    schema = load_schema(settings.validate_.schema_file)
    names, t = feature_names(schema), settings.train
    where = f"dataset {settings.dataset.name}"
    if t.model == "text":
        check_text_model(t, schema.text_columns, where)
    elif not names:
        raise ConfigurationError(
            f"{where}: {settings.validate_.schema_file} gives the model no tabular input, only text "
            f"({', '.join(schema.text_columns)}); set train.model: text for this dataset to fine-tune a pretrained "
            "encoder on it, or declare numeric or `allowed:` columns")
    if t.model in SHAPED_PRESETS and t.input_shape is not None:
        wanted = SHAPED_PRESETS[t.model]
        if len(t.input_shape) != wanted or math.prod(t.input_shape) != len(names):
            raise ConfigurationError(
                f"{where}: train.input_shape {list(t.input_shape)} does not fit the {len(names)} model inputs "
                f"that {settings.validate_.schema_file} gives (preset '{t.model}': {wanted} sizes whose product "
                f"is {len(names)}); fix train.input_shape for this dataset")
    elif t.model == "cnn":
        raise ConfigurationError(f"{where}: train.model cnn needs train.input_shape: [channels, height, width]")
    return schema
