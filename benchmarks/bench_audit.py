"""How much the one-run empirical audit (train.audit_canaries) sees in each text fine-tuning mode.

The audit (Steinke, Nasr & Jagielski 2023) is a gate: its lower bound on epsilon must stay at or
below the accounted epsilon, or the model is not released. A gate is only worth its power: it
must fail a trainer that leaks. Here the leaking trainer is privflow's own with the noise
switched off (clipping kept); the honest one is the same trainer with its noise.

Per mode (head; the last layer; LoRA rank 4 on the last layer), per canary draw: 400 public
film reviews and 1,000 canary texts (6 words of random letters, random labels, each in with
probability 1/2) at 16 tokens, through the tokenizer and the frozen layers as the train stage
puts them; batch 64, learning rate 0.5, target epsilon 0.25 at delta 1e-5 (PRV). Printed: the
bound without noise (goal: above the claim) and with it (goal: at or below the claim).
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import json
import time
from pathlib import Path

import numpy as np
import torch
from rich.console import Console
from rich.table import Table
from torch.utils.data import TensorDataset

from privflow.data.public_text import LABELS, film_reviews
from privflow.privacy.accounting import plan_dp_sgd
from privflow.privacy.audit import AuditResult, Canaries, audit, draw_text_canaries
from privflow.settings import TrainSettings
from privflow.training.canaries import with_canaries
from privflow.training.loop import train_private
from privflow.training.text_finetune import TextTraining, prepare_text_training

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "bench-results" / "audit.json"
MODES = {"head": {"fine_tune": "head"}, "last_layers": {"fine_tune": "last_layers", "last_k": 1},
         "lora": {"fine_tune": "lora", "last_k": 1, "lora_rank": 4}}
TRAIN, TEST, CANARIES = 400, 200, 1000


def audit_settings(mode: str, epochs: int, noise_seed: int | None = None) -> TrainSettings:
    """The bench's settings; noise_seed (tests only) makes the sampling and noise one fixed draw."""
    return TrainSettings(model="text", text={**MODES[mode], "max_tokens": 16}, hidden_units=1, epochs=epochs,
                         batch_size=64, learning_rate=0.5, max_grad_norm=1.0, target_epsilon=0.25, target_delta=1e-5,
                         device="cpu", noise_seed=noise_seed)


def labelled(reviews) -> tuple[list[str], torch.Tensor, torch.Tensor]:
    """(texts, labels, units): one review per person."""
    return [r.text for r in reviews], torch.tensor([LABELS.index(r.label) for r in reviews]), torch.arange(len(reviews))


def prepared_for_audit(t: TrainSettings, canaries: Canaries) -> tuple[TextTraining, TensorDataset]:
    """TRAIN and TEST real reviews and the canaries prepared as the train stage prepares them
    (tokenizer, frozen layers), and the training rows with the included canaries joined."""
    reviews = film_reviews()[:TRAIN + TEST]
    text = prepare_text_training(t, "feedback", len(LABELS), (labelled(reviews[:TRAIN]), labelled(reviews[TRAIN:])),
                                 canaries)
    return text, with_canaries(text.train, text.canaries)


def audited_run(t: TrainSettings, text: TextTraining, train: TensorDataset, noise_off: bool) -> AuditResult:
    """privflow's trainer at the plan for `t` (noise_off: the deliberately broken trainer, clipping
    kept), then the one-run audit of what it trained."""
    plan = plan_dp_sgd(rows=len(train), batch_size=t.batch_size, epochs=t.epochs, target_epsilon=t.target_epsilon,
                       target_delta=t.target_delta, accountant="prv")
    if noise_off:
        plan = dataclasses.replace(plan, noise_multiplier=0.0)
    model = train_private(train, text.test, plan, t, len(LABELS), model=copy.deepcopy(text.top)).model
    return audit(model, text.canaries, plan.epsilon, plan.delta)


def audited(mode: str, epochs: int, draw: int) -> dict:
    """One canary draw of one mode: the bound with the noise off and with it on."""
    t = audit_settings(mode, epochs)
    text, train = prepared_for_audit(t, draw_text_canaries(CANARIES, len(LABELS), np.random.default_rng(draw)))
    row = {"mode": mode, "epochs": epochs, "draw": draw}
    for name, noise_off in (("without_noise", True), ("with_noise", False)):
        started = time.perf_counter()
        result = audited_run(t, text, train, noise_off)
        row[name] = {"bound": result.epsilon_lower_bound, "guesses": result.guesses, "correct": result.correct,
                     "seconds": time.perf_counter() - started}
    return {**row, "claimed_epsilon": result.claimed_epsilon}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=30)
    parser.add_argument("--draws", type=int, default=3, help="canary draws per mode (seeds 1..N)")
    parser.add_argument("--modes", nargs="+", choices=list(MODES), default=list(MODES))
    args = parser.parse_args()
    rows = [audited(mode, args.epochs, draw) for mode in args.modes for draw in range(1, args.draws + 1)]
    table = Table("mode", "epochs", "claimed ε", "bound without noise (goal > claim)",
                  "bound with noise (goal ≤ claim)", title="one-run audit of text fine-tuning: power per mode")
    for mode in args.modes:
        own = [r for r in rows if r["mode"] == mode]
        span = {k: f"{min(r[k]['bound'] for r in own):.2f}-{max(r[k]['bound'] for r in own):.2f}"
                for k in ("without_noise", "with_noise")}
        table.add_row(mode, str(args.epochs), f"{own[0]['claimed_epsilon']:.3f}", span["without_noise"],
                      span["with_noise"])
    Console().print(table)
    OUT.parent.mkdir(exist_ok=True)
    OUT.write_text(json.dumps({"rows": rows, "torch_threads": torch.get_num_threads()}, indent=2))
    print(f"wrote {OUT}")


if __name__ == "__main__":
    main()
