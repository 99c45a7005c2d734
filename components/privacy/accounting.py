"""Plan a DP-SGD run before it touches data: noise, sample rate, steps, epsilon.

The plan is computed exactly as Opacus will run it (Poisson sampling with rate
1/ceil(N/B), ceil(N/B) steps per epoch), so the epsilon charged before training equals the
epsilon Opacus' accountant reports after it.
"""

from __future__ import annotations

import functools
import hashlib
import hmac
import json
import math
import os
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from privflow.errors import PrivacyError


def create_accountant(mechanism: str):
    """Opacus' accountant, imported when first needed: opacus' package init loads torch and its
    privacy engine (seconds), which `privflow budget show` and `--help` must not pay for."""
    from opacus.accountants import create_accountant as create

    memoize_rdp_orders()
    return create(mechanism=mechanism)


@functools.cache
def memoize_rdp_orders() -> None:
    """Opacus' PRV accountant bounds its domain with the RDP of one step at 150 orders (99 of
    them fractional, each a Python series), for every epsilon it computes: twice per call, again
    at each epoch and for each composition, a second or more of a train stage. That value depends
    on (sample rate, noise, order) alone, so this process keeps it: the same numbers, once each."""
    from opacus.accountants.analysis import rdp

    rdp._compute_rdp = functools.lru_cache(maxsize=65536)(rdp._compute_rdp)


@contextmanager
def quiet_rdp_bound() -> Iterator[None]:
    """Opacus warns when the RDP bound's best order is its largest one (PRV sizes its domain with
    that bound): a remark on Opacus' order grid, nothing a privflow user could change."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Optimal order is the largest alpha")
        yield


@dataclass(frozen=True)
class DpSgdPlan:
    accountant: str
    noise_multiplier: float
    sample_rate: float
    steps: int
    delta: float
    epsilon: float  # what the accountant gives for exactly these parameters


def epsilon_for(accountant: str, noise_multiplier: float, sample_rate: float, steps: int, delta: float) -> float:
    counter = create_accountant(mechanism=accountant)
    counter.history = [(noise_multiplier, sample_rate, steps)]
    with quiet_rdp_bound():
        return float(counter.get_epsilon(delta=delta))


def plan_dp_sgd(*, rows: int, batch_size: int, epochs: int, target_epsilon: float,
                target_delta: float, accountant: str) -> DpSgdPlan:
    if rows < 1:
        raise PrivacyError("no training rows: nothing to train on")
    if target_delta >= 1 / rows:
        raise PrivacyError(
            f"train.target_delta {target_delta:g} must be < 1/N = {1 / rows:.3g} "
            f"(N = {rows} training rows): a larger delta allows releasing a whole row"
        )
    steps_per_epoch = math.ceil(rows / batch_size)
    sample_rate = 1 / steps_per_epoch
    steps = epochs * steps_per_epoch
    key = _memo_key([(target_epsilon, sample_rate, steps)], target_delta, f"{accountant} {_opacus_version()}")
    noise = _read_memo(NOISE_MEMO).get(key)
    known = isinstance(noise, float) and math.isfinite(noise) and noise > 0
    epsilon = epsilon_for(accountant, noise, sample_rate, steps, target_delta) if known else None
    if epsilon is None or not target_epsilon - SEARCH_TOLERANCE <= epsilon <= target_epsilon:
        noise = _search_noise(target_epsilon, target_delta, sample_rate, steps, accountant)
        epsilon = epsilon_for(accountant, noise, sample_rate, steps, target_delta)
        _write_memo(NOISE_MEMO, {**_read_memo(NOISE_MEMO), key: noise})
    return DpSgdPlan(accountant, noise, sample_rate, steps, target_delta, epsilon)


# Noise levels found by the search, by its exact inputs and Opacus' version: `privflow run`'s
# plan and then the train stage search for the same one, a second or more each. A remembered
# level needs no key: it is used only when the accountant, computing the plan's epsilon as it
# always does, puts it where the search ends (within SEARCH_TOLERANCE under the target), so an
# edited entry can neither spend more than the target nor noise the model more than the search
# would; otherwise the search runs again.
NOISE_MEMO = Path(".privflow") / "noise-levels.json"
SEARCH_TOLERANCE = 0.01  # Opacus' get_noise_multiplier default, stated: the check above relies on it


def _search_noise(target_epsilon: float, target_delta: float, sample_rate: float, steps: int, accountant: str) -> float:
    """Opacus' bisection for the smallest noise within SEARCH_TOLERANCE of the target epsilon."""
    from opacus.accountants.utils import get_noise_multiplier

    memoize_rdp_orders()
    try:
        with quiet_rdp_bound():
            return float(get_noise_multiplier(target_epsilon=target_epsilon, target_delta=target_delta,
                                              sample_rate=sample_rate, steps=steps, accountant=accountant,
                                              epsilon_tolerance=SEARCH_TOLERANCE))
    except ValueError as error:
        # e.g. GDP's central-limit approximation has no root for a few large steps
        raise PrivacyError(
            f"the {accountant} accountant finds no noise level for epsilon {target_epsilon} over "
            f"{steps} steps at sample rate {sample_rate:.4g} ({error}); use accountant prv, "
            "or change epochs or batch size"
        ) from None


def _opacus_version() -> str:
    from importlib.metadata import version

    return version("opacus")


# Earlier results of composed_epsilon, a pure function of its inputs, each tagged with the
# ledger's MAC key: read by commands that only display a budget (status, budget show, the
# plan), so they need not load Opacus (seconds) to repeat a composition a charge already did.
# An entry whose tag fails (edited, or written under another keyring) is ignored and composed
# afresh. A charge never reads it: it composes inside the ledger's transaction.
EPSILON_MEMO = Path(".privflow") / "composed-epsilon.json"


def _memo_key(mechanisms: list[tuple[float, float, int]], delta: float, *context: str) -> str:
    exact = json.dumps([[float(n).hex(), float(q).hex(), int(t)] for n, q, t in mechanisms] + [float(delta).hex()]
                       + list(context))
    return hashlib.sha256(exact.encode()).hexdigest()


def _tag(mac_key: bytes, key: str, epsilon: float) -> str:
    return hmac.new(mac_key, f"privflow composed epsilon v1|{key}|{float(epsilon).hex()}".encode(),
                    hashlib.sha256).hexdigest()


def _read_memo(path: Path) -> dict:
    try:
        memo = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return memo if isinstance(memo, dict) else {}


def _recalled(mac_key: bytes, key: str) -> float | None:
    entry = _read_memo(EPSILON_MEMO).get(key)
    try:
        epsilon = float(entry["epsilon"])
        return epsilon if hmac.compare_digest(entry["tag"], _tag(mac_key, key, epsilon)) else None
    except (TypeError, KeyError, ValueError):
        return None


def _remember(mac_key: bytes, key: str, epsilon: float) -> None:
    _write_memo(EPSILON_MEMO, {**_read_memo(EPSILON_MEMO), key: {"epsilon": epsilon, "tag": _tag(mac_key, key, epsilon)}})


def _write_memo(path: Path, memo: dict) -> None:
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        partial = path.with_suffix(f".{os.getpid()}.tmp")
        partial.write_text(json.dumps(memo), encoding="utf-8")
        os.replace(partial, path)
    except OSError:  # a read-only project still gets its answer, only slower next time
        pass


def composed_epsilon(mechanisms: list[tuple[float, float, int]], delta: float, *,
                     mac_key: bytes | None = None, from_memo: bool = False) -> float:
    """Epsilon of running every (noise, sample rate, steps) mechanism on the same people,
    composed by the PRV accountant at the given delta (0 when nothing has run). With the
    ledger's `mac_key` the result is recorded in EPSILON_MEMO; `from_memo` (displays only) takes
    an earlier identical composition from it when its tag verifies."""
    if not mechanisms:
        return 0.0
    key = _memo_key(mechanisms, delta)
    if from_memo and mac_key is not None and (known := _recalled(mac_key, key)) is not None:
        return known
    counter = create_accountant(mechanism="prv")
    counter.history = list(mechanisms)
    with quiet_rdp_bound():
        epsilon = float(counter.get_epsilon(delta=delta))
    if mac_key is not None:
        _remember(mac_key, key, epsilon)
    return epsilon
