"""params.yaml -> one validated, frozen settings object. Unknown keys are errors."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from components.errors import PrivflowError

PARAMS_FILE = Path("params.yaml")
KEYRING_ENV = "PRIVFLOW_KEYRING"
LEDGER_ENV = "PRIVFLOW_LEDGER"
DEFAULT_KEYRING = Path.home() / ".local" / "share" / "privflow" / "keyring.json"


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class DatasetSettings(_Section):
    name: str = Field(pattern=r"^[A-Za-z0-9_.-]+$")


class IngestSettings(_Section):
    source: Path
    delimiter: str = Field(default=",", min_length=1, max_length=1)
    encoding: str = "utf-8"
    log: Path = Path(".privflow/ingest-log.jsonl")  # when each snapshot was taken (outside DVC)


class ValidateSettings(_Section):
    schema_file: Path = Field(alias="schema")
    max_reject_rate: float = Field(ge=0.0, le=1.0)


class EncryptSettings(_Section):
    test_fraction: float = Field(gt=0.0, lt=1.0)
    split_seed: int


class TrainSettings(_Section):
    model: Literal["mlp"] = "mlp"
    hidden_units: int = Field(ge=1)
    epochs: int = Field(ge=1)
    batch_size: int = Field(ge=1)
    learning_rate: float = Field(gt=0)
    max_grad_norm: float = Field(gt=0)
    target_epsilon: float = Field(gt=0)
    target_delta: float = Field(gt=0, lt=1)
    accountant: Literal["prv", "rdp", "gdp"] = "prv"
    grad_sample_mode: Literal["hooks", "ghost"] = "hooks"
    init_seed: int = 0
    audit_canaries: int = Field(default=0, ge=0)  # > 0: run the one-run empirical audit gate
    audit_confidence: float = Field(default=0.95, gt=0.5, lt=1)


class PrivacySettings(_Section):
    epsilon_cap: float = Field(gt=0)  # cap on the composed epsilon of all runs on the dataset
    # A SQLite path (~ expanded) or a SQLAlchemy URL (PostgreSQL). The default lives outside
    # the repository: `dvc exp run --temp/--queue` runs in a copy of it, and a repo-relative
    # ledger there would lose the charge; every workspace on the machine must see one budget.
    ledger: str = "~/.local/share/privflow/ledger.sqlite"


class CompressSettings(_Section):
    prune_amount: float = Field(ge=0.0, lt=1.0)
    latency_repeats: int = Field(default=50, ge=1)


class ReportSettings(_Section):
    title: str = "privflow run report"


class Settings(_Section):
    dataset: DatasetSettings
    ingest: IngestSettings
    validate_: ValidateSettings = Field(alias="validate")
    encrypt: EncryptSettings
    train: TrainSettings
    privacy: PrivacySettings
    compress: CompressSettings
    report: ReportSettings

    @model_validator(mode="after")
    def _epsilon_fits_cap(self) -> Settings:
        if self.train.target_epsilon > self.privacy.epsilon_cap:
            raise ValueError(
                f"train.target_epsilon ({self.train.target_epsilon}) exceeds "
                f"privacy.epsilon_cap ({self.privacy.epsilon_cap}): no run could ever fit"
            )
        return self


def load_settings(path: Path = PARAMS_FILE) -> Settings:
    """Read and validate params.yaml; the error lists every bad field by its dotted name."""
    if not path.is_file():
        raise PrivflowError(f"{path}: settings file not found (run from the project root)")
    raw = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    try:
        return Settings.model_validate(raw)
    except ValidationError as error:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in e['loc'])}: {e['msg']}" for e in error.errors()
        )
        raise PrivflowError(f"{path}: invalid settings: {problems}") from None


def ledger_location(settings: Settings) -> str:
    """$PRIVFLOW_LEDGER (keeps a PostgreSQL password out of params.yaml), else privacy.ledger."""
    location = os.environ.get(LEDGER_ENV) or settings.privacy.ledger
    return location if "://" in location else str(Path(location).expanduser())


def keyring_path() -> Path:
    """Where the key-encryption keys live: $PRIVFLOW_KEYRING, else the user's data dir."""
    return Path(os.environ.get(KEYRING_ENV) or DEFAULT_KEYRING)
