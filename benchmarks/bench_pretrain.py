"""Accuracy at epsilon 3 with and without public pretraining, same run, same split seeds.

The churn demo: private export (5000 rows, split by person as the pipeline splits it) and the
public sample of another bank (20000 rows, other plan mix). Each DP configuration is trained
REPEATS times (the DP noise is never seeded) and the mean test accuracy reported.
Goal (issue 10): pretraining closes at least half of the gap between DP-from-scratch and the
non-private baseline (also from scratch, the pipeline's baseline).
"""

from __future__ import annotations

import json
import statistics
import sys
import tempfile
from pathlib import Path

import torch
from rich.console import Console
from rich.table import Table
from torch.utils.data import TensorDataset

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks.bench_compress import demo_splits  # noqa: E402
from privflow.modeling.models import accuracy  # noqa: E402
from privflow.training.public import pretrain, read_public
from privflow.privacy.accounting import plan_dp_sgd  # noqa: E402
from privflow.data.schema_file import load_schema
from privflow.settings import load_settings  # noqa: E402
from privflow.training.loop import train_private
from privflow.training.baseline import preset_baseline

OUT = ROOT / "bench-results" / "pretrain.json"
REPEATS = 3


def dp_accuracy(train: TensorDataset, test: TensorDataset, settings, start: dict | None) -> list[float]:
    t = settings.train
    plan = plan_dp_sgd(rows=len(train), batch_size=t.batch_size, epochs=t.epochs, target_epsilon=3.0,
                       target_delta=1e-5, accountant="prv")
    return [accuracy(train_private(train, test, plan, t, 2, start).model, *test.tensors[:2]) for _ in range(REPEATS)]


def main() -> None:
    settings = load_settings("churn", ROOT / "params.yaml")  # the demo's churn settings, as `make run`
    with tempfile.TemporaryDirectory() as base:
        train, test = demo_splits("churn", Path(base) / "source")
        public = read_public([Path(base) / "public" / "churn" / "churn_public.csv.gz"],
                             load_schema(ROOT / "schemas" / "churn.yaml"), settings)
    pretrained, public_accuracy = pretrain(public, settings, 2)
    weights = {k: v.detach().clone() for k, v in pretrained.state_dict().items()}
    rows = {
        "non-private baseline (from scratch)": [preset_baseline(train, test, settings.train, 2).accuracy],
        "public pretraining only (no private data)": [accuracy(pretrained, *test.tensors)],
        "DP from scratch": dp_accuracy(train, test, settings, None),
        "DP fine-tune, all layers, after public pretraining": dp_accuracy(
            train, test, settings, {"weights": weights, "fine_tune": "all"}),
        "DP fine-tune, last layer, after public pretraining": dp_accuracy(
            train, test, settings, {"weights": weights, "fine_tune": "last_layer"}),
    }
    means = {name: statistics.mean(values) for name, values in rows.items()}
    baseline, scratch = means["non-private baseline (from scratch)"], means["DP from scratch"]
    gap = baseline - scratch
    closed = {name: (means[name] - scratch) / gap if gap > 0 else float("nan")
              for name in rows if name.startswith("DP fine-tune")}
    table = Table("model (epsilon 3, delta 1e-5 for DP rows)", "test accuracy (mean)", "runs", "gap closed",
                  title=f"public pretraining, churn demo ({len(train)} private train rows, {len(public)} public)")
    for name, values in rows.items():
        table.add_row(name, f"{means[name]:.4f}", str(len(values)),
                      f"{closed[name]:.0%}" if name in closed else "-")
    Console(width=160).print(table)
    OUT.parent.mkdir(exist_ok=True)
    OUT.write_text(json.dumps({"accuracy": rows, "mean": means, "gap_closed": closed, "goal_gap_closed": 0.5,
                               "public_held_back_accuracy": public_accuracy}, indent=2))
    print(f"wrote {OUT}")


if __name__ == "__main__":
    main()
