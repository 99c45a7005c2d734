"""The non-private baseline is fitted once per split and settings: re-runs that change only
what DP adds reuse its sealed outcome; anything else it depends on fits it again."""

from __future__ import annotations

import pytest
import torch

from privflow.crypto.keys import Keyring
from privflow.crypto.vault import Vault
from privflow.settings import TrainSettings
from privflow.training.baseline import Schedule, adam_recipes, train_baseline
from privflow.training.baseline_memo import BASELINE_MEMO, KEPT, entry_name, remembered_baseline

DATASET = "payroll"
SETTINGS = TrainSettings(model="mlp", hidden_units=8, epochs=3, batch_size=20, learning_rate=0.5, max_grad_norm=1.0,
                         target_epsilon=3.0, target_delta=1e-5)


@pytest.fixture
def project(tmp_path, monkeypatch, vault):
    monkeypatch.chdir(tmp_path)  # the memo lives in the project's .privflow/
    vault.keys.dataset_key(DATASET)  # as the encrypt stage leaves it
    return vault


def splits(seed: int = 0):
    generator = torch.Generator().manual_seed(seed)
    features = torch.randn(240, 4, generator=generator)
    labels = (features[:, 0] + 0.3 * features[:, 1] > 0).long()
    return (features[:200], labels[:200]), (features[200:], labels[200:])


class Fits:
    """A real baseline fit on the split, counting how often it ran."""

    def __init__(self, train, test):
        self.train, self.test, self.runs = train, test, 0

    def __call__(self):
        self.runs += 1
        torch.manual_seed(0)
        return train_baseline(lambda: torch.nn.Linear(4, 2), self.train, self.test,
                              Schedule(3, 20, None, 1.0, 0), adam_recipes((1e-2, 1e-1)))


def name(vault, settings=SETTINGS, start=None, card=None, data=None):
    train, test = data or splits()
    return entry_name(vault, DATASET, settings, start, card or {}, train, test)


def test_a_rerun_that_changes_only_dp_settings_reuses_the_sealed_outcome(project):
    train, test = splits()
    fits = Fits(train, test)
    first = remembered_baseline(project, DATASET, name(project), fits, test)
    dp_only = SETTINGS.model_copy(update={"target_epsilon": 1.0, "noise_seed": 5, "processes": 2,
                                          "audit_canaries": 400, "checkpoint_every_epochs": 3})
    again = remembered_baseline(project, DATASET, name(project, dp_only), fits, test)
    assert fits.runs == 1 and not first.reused and again.reused
    assert (again.accuracy, again.recipe) == (first.accuracy, first.recipe) and torch.equal(again.correct, first.correct)
    assert first.correct.dtype == torch.bool and len(first.correct) == 40 and 0.8 < first.accuracy
    assert first.accuracy == pytest.approx(float(first.correct.float().mean()))
    assert again.record()["reused_from_an_earlier_run"] and not first.record()["reused_from_an_earlier_run"]


def test_anything_else_the_baseline_depends_on_names_another_entry(project, tmp_path):
    reference = name(project)
    changed = [
        name(project, SETTINGS.model_copy(update={"epochs": 4})),
        name(project, SETTINGS.model_copy(update={"learning_rate": 0.25})),
        name(project, SETTINGS.model_copy(update={"init_seed": 1})),
        name(project, start={"weights": {"0.weight": torch.zeros(2, 4)}, "fine_tune": "all"}),
        name(project, start={"weights": {"0.weight": torch.ones(2, 4)}, "fine_tune": "all"}),
        name(project, card={"text": {"weights_sha256": "53aa"}}),
        name(project, data=splits(seed=1)),
        # another keyring: the name is keyed, so it says nothing to whoever lacks the key
        name(Vault(Keyring.open(tmp_path / "other" / "keyring.json"))),
    ]
    (train, test) = splits()
    one_label = train[1].clone()
    one_label[7] = 1 - one_label[7]
    changed.append(name(project, data=((train[0], one_label), test)))
    assert len({reference, *changed}) == len(changed) + 1


def test_an_entry_that_does_not_open_is_fitted_again_never_trusted(project):
    train, test = splits()
    fits, entry = Fits(train, test), name(project)
    first = remembered_baseline(project, DATASET, entry, fits, test)
    sealed = BASELINE_MEMO / f"{entry}.sealed"
    assert b"recipe" not in sealed.read_bytes() and b"Adam" not in sealed.read_bytes()  # sealed, not plain JSON
    tampered = bytearray(sealed.read_bytes())
    tampered[-5] ^= 1
    sealed.write_bytes(bytes(tampered))
    again = remembered_baseline(project, DATASET, entry, fits, test)
    assert fits.runs == 2 and not again.reused and again.accuracy == first.accuracy
    # another entry's file under this name: sealed for another name, so it does not open here
    other = name(project, SETTINGS.model_copy(update={"epochs": 4}))
    remembered_baseline(project, DATASET, other, fits, test)
    sealed.write_bytes((BASELINE_MEMO / f"{other}.sealed").read_bytes())
    assert not remembered_baseline(project, DATASET, entry, fits, test).reused and fits.runs == 4


def test_the_memo_keeps_its_newest_entries_and_no_half_written_seal(project):
    import os
    import time

    train, test = splits()
    fits = Fits(train, test)
    BASELINE_MEMO.mkdir(parents=True)
    left = BASELINE_MEMO / "killed.sealed.partial"
    left.write_bytes(b"half")
    os.utime(left, (time.time() - 120, time.time() - 120))
    names = [name(project, SETTINGS.model_copy(update={"epochs": 1 + i})) for i in range(KEPT + 2)]
    for i, entry in enumerate(names):
        remembered_baseline(project, DATASET, entry, fits, test)
        os.utime(BASELINE_MEMO / f"{entry}.sealed", (1_000_000 + i, 1_000_000 + i))
    assert sorted(p.name for p in BASELINE_MEMO.iterdir()) == sorted(f"{n}.sealed" for n in names[-KEPT:])
