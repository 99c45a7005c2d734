"""params.yaml -> one validated, frozen settings object per dataset. Unknown keys are errors.

params.yaml lists the datasets under `datasets:`; each names its source and schema and may
override any other section for itself (e.g. `datasets.churn.train.epochs`). The sections
outside `datasets:` are the defaults every dataset shares. dvc.yaml runs every stage once
per dataset (`foreach: ${datasets}`), so each dataset has its own snapshot, model, report
and privacy budget, all produced by the same code.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from privflow.errors import PrivflowError

PARAMS_FILE = Path("params.yaml")
KEYRING_ENV = "PRIVFLOW_KEYRING"
LEDGER_ENV = "PRIVFLOW_LEDGER"
DEFAULT_KEYRING = Path.home() / ".local" / "share" / "privflow" / "keyring.json"


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


NAME_PATTERN = r"^[A-Za-z0-9_.-]+$"  # what DVC stage names (`train@<name>`) and command lines accept


class DatasetSettings(_Section):
    name: str = Field(pattern=NAME_PATTERN)
    budget: str | None = Field(default=None, pattern=NAME_PATTERN)  # shared by entries over the same people


SECTIONS = ("ingest", "validate", "encrypt", "train", "privacy", "compress", "explain", "report")


class PretrainSettings(_Section):
    """Public data for this dataset (in data/public/<dataset>/): pretraining spends no budget."""

    origin: str = Field(min_length=1)  # where the public data came from: in the report and lineage
    epochs: int = Field(default=20, ge=1)
    learning_rate: float = Field(default=0.1, gt=0)
    fine_tune: Literal["all", "last_layer"] = "all"  # what DP-SGD then trains on the private data


class DatasetEntry(_Section):
    """One entry of `datasets:`: where the data is, its schema, and overrides of any section."""

    source: Path
    schema_file: Path = Field(alias="schema")
    budget: str | None = None  # the privacy budget's name when entries share one (default: the entry's name)
    pretrain: PretrainSettings | None = None
    overrides: dict[str, dict] = Field(default_factory=dict)

    @model_validator(mode="before")
    @classmethod
    def _gather_overrides(cls, raw: dict) -> dict:
        if not isinstance(raw, dict):
            return raw
        overrides = {k: raw[k] for k in SECTIONS if k in raw}
        return {**{k: v for k, v in raw.items() if k not in SECTIONS}, "overrides": overrides}


class IngestSettings(_Section):
    source: Path
    delimiter: str = Field(default=",", min_length=1, max_length=1)
    encoding: str = "utf-8"
    decimal: Literal[".", ","] = "."  # the numbers' decimal mark: "," for exports like 3,14
    thousands: Literal[".", ",", " ", "'"] | None = None  # digit groups: "." in 4.157,45 (none: 4.157 refused)
    log: Path = Path(".privflow/ingest-log.jsonl")  # when each snapshot was taken (outside DVC)

    @model_validator(mode="after")
    def _distinct_marks(self) -> IngestSettings:
        if self.decimal == self.delimiter:
            raise ValueError(f"ingest.decimal and ingest.delimiter are both {self.delimiter!r}: files with "
                             "decimal commas separate fields with ';' (set ingest.delimiter: ';')")
        if self.thousands is not None and self.thousands == self.decimal:  # a delimiter may be: "1,234.5" is quoted
            raise ValueError(f"ingest.thousands and ingest.decimal are both {self.decimal!r}: numbers written "
                             "4.157,45 take thousands: '.', decimal: ','")
        return self


class ValidateSettings(_Section):
    schema_file: Path = Field(alias="schema")
    max_reject_rate: float = Field(ge=0.0, le=1.0)


class EncryptSettings(_Section):
    test_fraction: float = Field(gt=0.0, lt=1.0)
    split_seed: int


SHUFFLING_SAMPLERS = {"shuffle", "shuffling", "random", "weighted", "weighted_random", "fixed", "uniform"}


class TextModelSettings(_Section):
    """The `text` preset: DP fine-tuning of a pretrained encoder from an installed wheel."""

    encoder: str = "all-MiniLM-L6-v2"  # privflow.modeling.text_encoder.PRETRAINED
    column: str | None = None  # the text column it reads; default: the schema's only one
    fine_tune: Literal["head", "last_layers", "all_layers", "lora"] = "head"
    last_k: int = Field(default=1, ge=1)  # last_layers and lora: how many of the encoder's last layers train
    lora_rank: int = Field(default=8, ge=1)  # lora: the adapters' rank r
    lora_alpha: float = Field(default=16.0, gt=0)  # lora: the update is scaled by alpha / r
    max_tokens: int = Field(default=64, ge=8, le=512)  # texts are cut to this many tokens
    # the frozen layers' forward pass: auto = bf16 where the device has it natively and it stays
    # within 2% of fp32 on public film reviews (privflow.training.text_finetune.frozen_precision)
    frozen_precision: Literal["auto", "fp32", "bf16"] = "auto"


class TrainSettings(_Section):
    model: Literal["mlp", "cnn", "lstm", "transformer", "text"] = "mlp"
    text: TextModelSettings = TextModelSettings()  # read when model is text
    input_shape: tuple[int, ...] | None = None  # cnn: [channels, height, width]; lstm/transformer: [steps, channels]
    hidden_units: int = Field(ge=1)
    epochs: int = Field(ge=1)
    batch_size: int = Field(ge=1)  # expected units per logical step (Poisson); rows when each unit has one
    physical_batch_size: int | None = Field(default=None, ge=1)  # virtual batches: units per forward pass
    learning_rate: float = Field(gt=0)
    lr_schedule: Literal["cosine", "constant"] = "cosine"  # cosine: the rate decays to 0 over the run (no privacy cost)
    max_grad_norm: float = Field(gt=0)
    target_epsilon: float = Field(gt=0)
    target_delta: float = Field(gt=0, lt=1)
    accountant: Literal["prv", "rdp", "gdp"] = "prv"
    sampling: Literal["poisson"] = "poisson"
    device: Literal["auto", "cpu", "cuda"] = "auto"  # auto: CUDA when present, else CPU
    processes: int = Field(default=1, ge=1)  # > 1: DPDDP, launched with torchrun (gloo on CPU, nccl on GPU)
    nodes: int = Field(default=1, ge=1)  # > 1: DPDDP across hosts, train.processes each; see infra/README.md
    rendezvous: str | None = Field(default=None, pattern=r"^[A-Za-z0-9_.:\[\]-]+:[0-9]+$")  # host:port, nodes > 1
    noise_seed: int | None = None  # development only: reproducible sampling and noise
    checkpoint_every_epochs: int = Field(default=1, ge=1)
    init_seed: int = 0
    audit_canaries: int = Field(default=0, ge=0)  # > 0: run the one-run empirical audit gate
    audit_confidence: float = Field(default=0.95, gt=0.5, lt=1)

    @property
    def distributed(self) -> bool:
        """DPDDP over torchrun's processes (on this host, or across hosts)."""
        return self.processes > 1 or self.nodes > 1

    @model_validator(mode="after")
    def _nodes_meet_somewhere(self) -> TrainSettings:
        if self.nodes > 1 and self.rendezvous is None:
            raise ValueError(f"train.nodes is {self.nodes}: set train.rendezvous to host:port of torchrun's c10d "
                             "rendezvous on the node that runs the train stage, reachable from every node")
        return self

    @model_validator(mode="after")
    def _canaries_in_one_process(self) -> TrainSettings:
        # refused here, before the charge: the audit scores canaries it drew in the one training process
        if self.audit_canaries and self.distributed:
            raise ValueError(f"train.audit_canaries is {self.audit_canaries} with train.processes {self.processes} "
                             f"and train.nodes {self.nodes}: the one-run audit needs train.processes: 1 and "
                             "train.nodes: 1; audit with one process, or set train.audit_canaries: 0")
        return self

    @field_validator("sampling", mode="before")
    @classmethod
    def _poisson_only(cls, value: object) -> object:
        if isinstance(value, str) and value.lower() in SHUFFLING_SAMPLERS:
            raise ValueError(
                f"'{value}' sampling is refused: DP-SGD's accounting assumes Poisson sampling, and a "
                "shuffling loader or weighted sampler can make the true epsilon 4-10x the reported one; "
                "use sampling: poisson")
        return value


class PrivacySettings(_Section):
    epsilon_cap: float = Field(gt=0)  # cap on the composed epsilon of all runs on the dataset
    # A SQLite path (~ expanded) or a SQLAlchemy URL (PostgreSQL). The default lives outside
    # the repository: `dvc exp run --temp/--queue` runs in a copy of it, and a repo-relative
    # ledger there would lose the charge; every workspace on the machine must see one budget.
    ledger: str = "~/.local/share/privflow/ledger.sqlite"
    profile: Literal["dev", "prod"] = "dev"  # prod: secure noise required, no noise seed
    secure_noise: bool = False  # AES-256-CTR CSPRNG for sampling and noise (components/privacy/noise.py)
    # parameters: a float32 model's noise drawn in float32 from 24-bit uniforms, as Opacus' secure
    # mode; float64: from 52-bit uniforms for every model, a wider margin against floating-point
    # attacks (2^156 against 2^72 by Holohan & Braghin's count) at 3x the draw's cost
    secure_noise_precision: Literal["parameters", "float64"] = "parameters"
    # user-level DP: when a privacy unit owns several rows, keep at most this many per unit
    # (its first rows in snapshot order) and clip and account per unit; unset refuses such data
    max_rows_per_unit: int | None = Field(default=None, ge=1)


class CompressSettings(_Section):
    structured_amount: float = Field(default=0.0, ge=0.0, lt=1.0)  # share of hidden units removed
    prune_amount: float = Field(ge=0.0, lt=1.0)  # share of the remaining weights zeroed (magnitude)
    latency_repeats: int = Field(default=50, ge=1)


class ExplainSettings(_Section):
    # auto: public data when declared, else synthetic; private_test reads private rows (the
    # report then says the importances are outside the DP guarantee)
    data: Literal["auto", "public", "synthetic", "private_test"] = "auto"


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
    explain: ExplainSettings = ExplainSettings()
    report: ReportSettings
    pretrain: PretrainSettings | None = None

    @model_validator(mode="after")
    def _epsilon_fits_cap(self) -> Settings:
        if self.train.target_epsilon > self.privacy.epsilon_cap:
            raise ValueError(
                f"train.target_epsilon ({self.train.target_epsilon}) exceeds "
                f"privacy.epsilon_cap ({self.privacy.epsilon_cap}): no run could ever fit"
            )
        return self

    @model_validator(mode="after")
    def _noise_is_secure_when_required(self) -> Settings:
        if self.privacy.secure_noise and self.train.noise_seed is not None:
            raise ValueError("train.noise_seed cannot be combined with privacy.secure_noise: a seeded "
                             "generator is predictable; remove the seed")
        if self.privacy.profile == "prod" and not self.privacy.secure_noise:
            raise ValueError("privacy.profile prod requires privacy.secure_noise: true (a CSPRNG for "
                             "sampling and noise)")
        return self


def _read_params(path: Path) -> dict:
    if not path.is_file():
        raise PrivflowError(f"{path}: settings file not found (run from the project root)")
    raw = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    if raw.get("datasets") == {}:
        raise PrivflowError(f"{path}: no dataset declared under `datasets:` yet; add yours (its source and a schema: "
                            "copy schemas/example.yaml or run `privflow schema draft SOURCE`), or run "
                            "`privflow init --demo` for the demo datasets")
    if not isinstance(raw.get("datasets"), dict):
        raise PrivflowError(f"{path}: no `datasets:` section; declare at least one dataset "
                            "(its source and schema) as `privflow init` writes it")
    bad = [name for name in raw["datasets"] if not re.fullmatch(NAME_PATTERN, str(name))]
    if bad:
        raise PrivflowError(f"{path}: dataset name(s) {bad} under `datasets:` would break DVC's stage names and "
                            "command lines; use letters, digits, '_', '.' and '-' only (e.g. "
                            f"{re.sub(r'[^A-Za-z0-9_.-]+', '_', str(bad[0]))!r})")
    return raw


def dataset_names(path: Path = PARAMS_FILE) -> list[str]:
    return list(_read_params(path)["datasets"])


def _problems(error: ValidationError, prefix: str = "") -> str:
    return "; ".join(f"{prefix}{'.'.join(str(p) for p in e['loc'])}: {e['msg']}" for e in error.errors())


def load_settings(dataset: str | None = None, path: Path = PARAMS_FILE) -> Settings:
    """The settings of one dataset (the only one, if None); every bad field named by its dotted path."""
    raw = _read_params(path)
    names = list(raw["datasets"])
    if dataset is None and len(names) == 1:
        dataset = names[0]
    if dataset not in raw["datasets"]:
        wanted = "name one with --dataset" if dataset is None else f"'{dataset}' is not one of them"
        raise PrivflowError(f"{path}: datasets {names} are declared; {wanted}")
    try:
        entry = DatasetEntry.model_validate(raw["datasets"][dataset] or {})
    except ValidationError as error:
        raise PrivflowError(f"{path}: invalid settings: {_problems(error, f'datasets.{dataset}.')}") from None
    sections = {k: {**(raw.get(k) or {}), **entry.overrides.get(k, {})} for k in SECTIONS}
    sections["ingest"]["source"] = entry.source
    sections["validate"]["schema"] = entry.schema_file
    unknown = sorted(set(raw) - {"datasets", *SECTIONS})
    try:
        if unknown:
            raise PrivflowError(f"{path}: unknown section(s) {unknown}")
        return Settings.model_validate({"dataset": {"name": dataset, "budget": entry.budget}, **sections,
                                        "pretrain": entry.pretrain})
    except ValidationError as error:
        raise PrivflowError(f"{path}: invalid settings for dataset '{dataset}': {_problems(error)}") from None


def ledger_location(settings: Settings) -> str:
    """$PRIVFLOW_LEDGER (keeps a PostgreSQL password out of params.yaml), else privacy.ledger."""
    location = os.environ.get(LEDGER_ENV) or settings.privacy.ledger
    return location if "://" in location else str(Path(location).expanduser())


def keyring_path() -> Path:
    """Where the key-encryption keys live: $PRIVFLOW_KEYRING, else the user's data dir."""
    return Path(os.environ.get(KEYRING_ENV) or DEFAULT_KEYRING)
