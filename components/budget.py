"""The budget a stage charges, and the anchors that keep its ledger honest.

A dataset's budget is named by its params.yaml entry, or by `budget:` when several entries
draw on the same people (a renamed entry, or two views of one population). The ledger's
head after each charge is an anchor, kept where whoever rewrites the ledger cannot also
rewrite it unseen:
- `.privflow/anchors/<budget>.sealed` in the project (sealed: forging one needs the keyring),
- beside the trained model (`ledger-anchor.sealed`, a DVC out: in the cache and the remote),
- in the run's metrics (`metrics/<dataset>/train.json`: DVC-tracked, so also in the DVC
  cache under dvc.lock's hash, and at git HEAD where a team commits metrics) and so in
  every archived report (`reports/<dataset>/runs/`).
`train` checks the ledger against the anchors it can find before it charges, and refuses a
ledger that fails; `privflow budget verify` checks every anchor there is.
"""

from __future__ import annotations

import json
import subprocess
from dataclasses import asdict
from pathlib import Path

from privflow.catalog import LEDGER_ANCHOR, anchor_identity
from privflow.crypto.vault import Vault
from privflow.errors import IntegrityError, KeyringError
from privflow.privacy.ledger import LedgerAnchor, LedgerTampered, PrivacyLedger, ledger_key
from privflow.settings import Settings, ledger_location

PROJECT_ANCHORS = Path(".privflow") / "anchors"


def budget_name(settings: Settings) -> str:
    """The ledger key of a dataset's budget: its declared `budget:`, else the entry's name."""
    return settings.dataset.budget or settings.dataset.name


def open_ledger(settings: Settings, vault: Vault) -> PrivacyLedger:
    return PrivacyLedger(ledger_location(settings), key=ledger_key(vault.keys))


def write_anchor(vault: Vault, anchor: LedgerAnchor, model_dir: Path | None = None) -> None:
    """Seal the anchor into the project's anchor file and, once there is one, beside the model."""
    document = json.dumps(asdict(anchor), sort_keys=True).encode()
    paths = [PROJECT_ANCHORS / f"{anchor.budget}.sealed"] + ([model_dir / LEDGER_ANCHOR] if model_dir else [])
    for path in paths:
        path.parent.mkdir(parents=True, exist_ok=True)
        vault.seal(document, anchor_identity(anchor.budget), path)


def _sealed(vault: Vault, path: Path, budget: str) -> LedgerAnchor | None:
    if not path.exists():
        return None
    try:
        return LedgerAnchor(**json.loads(vault.open(path, anchor_identity(budget))))
    except (IntegrityError, KeyringError) as error:
        raise LedgerTampered(f"{path}: ledger anchor fails authentication ({error}); it was altered or "
                             "sealed under another keyring") from None


def _from_metrics(text: str | None) -> LedgerAnchor | None:
    if not text:
        return None
    try:
        found = json.loads(text).get("ledger_anchor")
    except (ValueError, AttributeError):
        return None
    return LedgerAnchor(**found) if found else None


def _relative(path: Path) -> Path | None:
    """Project-relative, as dvc.lock and git name files (DVC's API gives absolute paths); None
    for a file outside the project (a stage run by hand with --metrics elsewhere): neither holds it."""
    if not path.is_absolute():
        return path
    try:
        return path.resolve().relative_to(Path.cwd().resolve())
    except ValueError:
        return None


def _committed(path: Path) -> str | None:
    """The file as the checked-out commit holds it (None outside git, untracked, or outside the project)."""
    if (relative := _relative(path)) is None:
        return None
    result = subprocess.run(["git", "show", f"HEAD:./{relative.as_posix()}"], capture_output=True, text=True,
                            check=False)
    return result.stdout if result.returncode == 0 else None


def project_anchors(vault: Vault, budgets: set[str]) -> list[tuple[str, LedgerAnchor]]:
    """The project's anchors of these budgets (those kept in one ledger): a ledger shared by
    several budgets is checked whole before any of them is charged again."""
    paths = [PROJECT_ANCHORS / f"{budget}.sealed" for budget in sorted(budgets)]
    return [(str(path), anchor) for path in paths
            if (anchor := _sealed(vault, path, path.name.removesuffix(".sealed"))) is not None]


def with_project_anchors(vault: Vault, anchors: list[tuple[str, LedgerAnchor]],
                         budgets: set[str]) -> list[tuple[str, LedgerAnchor]]:
    """`anchors`, and the project's anchors of `budgets` not already among them."""
    return anchors + [a for a in project_anchors(vault, budgets) if a not in anchors]


def budgets_in_ledger(settings: Settings) -> set[str]:
    """Every budget of this project whose ledger is this dataset's ledger."""
    from privflow.settings import dataset_names, load_settings

    location = ledger_location(settings)
    others = (load_settings(name) for name in dataset_names())
    return {budget_name(settings)} | {budget_name(o) for o in others if ledger_location(o) == location}


def _cached(path: Path, lock: Path = Path("dvc.lock"), cache: Path = Path(".dvc/cache")) -> str | None:
    """`path` as dvc.lock last recorded it, read from the DVC cache: DVC removes a stage's
    outputs before it runs, but the previous run's metrics stay in the cache."""
    import yaml

    relative = _relative(path)
    if not lock.exists() or relative is None:
        return None
    stages = (yaml.safe_load(lock.read_text(encoding="utf-8")) or {}).get("stages", {})
    wanted = relative.as_posix()
    for stage in stages.values():
        for out in stage.get("outs", []):
            if out.get("path") == wanted and "md5" in out:
                cached = cache / "files" / "md5" / out["md5"][:2] / out["md5"][2:]
                return cached.read_text(encoding="utf-8") if cached.exists() else None
    return None


def find_anchors(vault: Vault, budget: str, *, model_dir: Path | None = None, metrics: Path | None = None,
                 reports: Path | None = None) -> tuple[list[tuple[str, LedgerAnchor]], list[str]]:
    """Every anchor of `budget` that can be found, each with where it was found; and the
    places looked at that held none."""
    found: list[tuple[str, LedgerAnchor | None]] = [
        (str(PROJECT_ANCHORS / f"{budget}.sealed"), _sealed(vault, PROJECT_ANCHORS / f"{budget}.sealed", budget))]
    if model_dir is not None:
        found.append((str(model_dir / LEDGER_ANCHOR), _sealed(vault, model_dir / LEDGER_ANCHOR, budget)))
    if metrics is not None:
        found.append((str(metrics), _from_metrics(metrics.read_text() if metrics.exists() else None)))
        found.append((f"{metrics} in the DVC cache (dvc.lock)", _from_metrics(_cached(metrics))))
        found.append((f"{metrics} at git HEAD", _from_metrics(_committed(metrics))))
    if reports is not None:
        for report in sorted(reports.glob("runs/*.json")):
            training = json.loads(report.read_text()).get("training", {})
            found.append((str(report), LedgerAnchor(**training["ledger_anchor"])
                          if training.get("ledger_anchor") else None))
    anchors = [(where, a) for where, a in found if a is not None and a.budget == budget]
    return anchors, [where for where, a in found if a is None]


def refuse_unless_intact(ledger: PrivacyLedger, anchors: list[tuple[str, LedgerAnchor]], where: str) -> None:
    """No charge goes onto a ledger that fails verification: it would hide the damage."""
    problems = ledger.verify(anchors)
    if problems:
        shown = "; ".join(problems[:3]) + (f"; and {len(problems) - 3} more" if len(problems) > 3 else "")
        raise LedgerTampered(
            f"{where}: the privacy ledger fails verification, so nothing was charged: {shown}. Restore the "
            "ledger from its backup (privacy.ledger or $PRIVFLOW_LEDGER), then check that `privflow budget "
            "verify` says intact before training again")
