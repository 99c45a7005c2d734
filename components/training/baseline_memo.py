"""The non-private baseline, remembered across re-runs of train.

The baseline depends on the split, the model's start and the training schedule, not on
anything DP-SGD adds: re-running train at a new epsilon, with the audit, over several
processes or with another noise seed fits the same candidates to the same end. On the text
preset that refit is most of the stage (the e2e test's 1,200 reviews: ~100 s of ~130, four
fits through an encoder layer against one DP run), so it is done once.

What is kept is the baseline's outcome (test accuracy, the recipe chosen, and which test
records it got right, for the paired privacy cost), sealed under the dataset's key in
`.privflow/baselines/` like every derived artifact. Its name is an HMAC, under a key derived
from the dataset's, of everything the baseline depends on: the split's tensors, the start
weights, the training settings other than DP's own, privflow's source and torch's version.
Keyed, because an unkeyed hash of a small dataset would let whoever reads the folder confirm a
guess of its rows. An entry that does not open (edited, or under a key the keyring no longer
holds) is recomputed, never trusted.
"""

from __future__ import annotations

import functools
import hashlib
import hmac
import json
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

import torch
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from privflow.crypto.vault import ArtifactIdentity, Vault
from privflow.errors import PrivflowError
from privflow.modeling.models import correct_predictions
from privflow.settings import TrainSettings
from privflow.training.baseline import Baseline, how_made

BASELINE_MEMO = Path(".privflow") / "baselines"
KEPT = 16  # entries; the oldest go first
# settings that shape only the DP run (its noise, sampling, processes, checkpoints, audit): the
# baseline trains without them, so changing them reuses it. Any other setting, new ones
# included, is part of the entry's name.
DP_ONLY = frozenset({"target_epsilon", "target_delta", "accountant", "sampling", "processes", "nodes", "rendezvous",
                     "noise_seed", "checkpoint_every_epochs", "audit_canaries", "audit_confidence"})
Split = tuple[torch.Tensor, torch.Tensor]


@dataclass(frozen=True)
class BaselineOutcome:
    """What the metrics, the report and the paired privacy cost need of a baseline."""

    accuracy: float
    recipe: str
    correct: torch.Tensor  # per test record: did the baseline get it right
    reused: bool = False

    @classmethod
    def of(cls, baseline: Baseline, test: Split) -> BaselineOutcome:
        return cls(baseline.accuracy, baseline.recipe, correct_predictions(baseline.model, *test))

    def record(self) -> dict:
        return {**how_made(self.recipe), "reused_from_an_earlier_run": self.reused}


@functools.cache
def _source_digest() -> bytes:
    """privflow's own code: an edit anywhere in it makes every entry stale."""
    import privflow

    root, digest = Path(privflow.__file__).parent, hashlib.sha256()
    for path in sorted(root.rglob("*.py")):
        digest.update(path.relative_to(root).as_posix().encode() + b"\0" + path.read_bytes())
    return digest.digest()


def _tensor_parts(tensors: Iterable[torch.Tensor]) -> Iterable[bytes | memoryview]:
    for tensor in tensors:
        flat = tensor.detach().cpu().contiguous().reshape(-1)
        yield f"{flat.dtype}{tuple(tensor.shape)}".encode()
        yield memoryview(flat.view(torch.uint8).numpy())


def entry_name(vault: Vault, dataset: str, t: TrainSettings, start: dict | None, card: dict,
               train: Split, test: Split) -> str:
    """The HMAC of everything the baseline depends on, under a key derived from the dataset's.
    `start`: the pretrain stage's weights and fine-tuning mode (read_pretrained), or None."""
    _, dataset_key = vault.keys.dataset_key(dataset)
    key = HKDF(hashes.SHA256(), 32, salt=None, info=b"privflow baseline memo v1").derive(dataset_key)
    settings = {name: value for name, value in t.model_dump(mode="json").items() if name not in DP_ONLY}
    weights = start["weights"] if start else {}
    described = json.dumps({"settings": settings, "card": card, "torch": torch.__version__, "start": sorted(weights),
                            "fine_tune": start and start["fine_tune"]}, sort_keys=True)
    mac = hmac.new(key, digestmod="sha256")
    tensors = [*(weights[name] for name in sorted(weights)), *train, *test]
    for part in [_source_digest(), described.encode(), *_tensor_parts(tensors)]:
        mac.update(len(part).to_bytes(8, "big"))
        mac.update(part)
    return mac.hexdigest()


def remembered_baseline(vault: Vault, dataset: str, name: str, compute: Callable[[], Baseline],
                        test: Split) -> BaselineOutcome:
    """The entry `name` when it opens, else `compute()`'s outcome, then kept under that name."""
    path, identity = BASELINE_MEMO / f"{name}.sealed", ArtifactIdentity(dataset, "train", "baseline", name)
    if path.is_file():
        try:
            kept = json.loads(vault.open(path, identity))
            return BaselineOutcome(kept["accuracy"], kept["recipe"], torch.tensor(kept["correct"], dtype=torch.bool),
                                   reused=True)
        except (PrivflowError, ValueError, KeyError):
            path.unlink(missing_ok=True)  # not trusted: computed again below
    outcome = BaselineOutcome.of(compute(), test)
    vault.seal(json.dumps({"accuracy": outcome.accuracy, "recipe": outcome.recipe,
                           "correct": outcome.correct.tolist()}).encode(), identity, path)
    _forget_the_oldest()
    return outcome


def _forget_the_oldest() -> None:
    """Keep KEPT entries, and no seal a killed run left half-written (a seal takes
    milliseconds: one older than a minute is no other run's). Another run may prune beside this one."""
    entries, now = [], time.time()
    for path in BASELINE_MEMO.iterdir():
        try:
            modified = path.stat().st_mtime
        except FileNotFoundError:
            continue
        if path.suffix == ".sealed":
            entries.append((modified, path))
        elif now - modified > 60:
            path.unlink(missing_ok=True)
    for _, stale in sorted(entries)[:-KEPT]:
        stale.unlink(missing_ok=True)
