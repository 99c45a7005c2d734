"""Stage `train`: DP-SGD to a target (epsilon, delta), under the dataset's budget.

Order matters: plan the run from counts alone, charge the ledger (refusing if the cap
would be exceeded), and only then decrypt a single row (privflow.training.charge). A
killed run resumes from its last sealed checkpoint under the same charge.
"""

from __future__ import annotations

import numpy as np

from privflow.artifacts import open_vault, read_json, stage_paths
from privflow.catalog import DATASET
from privflow.errors import run_stage
from privflow.preflight import check_model_config, check_text_model
from privflow.privacy.audit import draw_canaries, draw_text_canaries
from privflow.settings import load_settings
from privflow.training.charge import privacy_unit_bound, resume_or_charge
from privflow.training.checkpoint import checkpoint_for
from privflow.training.io import read_pretrained
from privflow.training.session import train_charged


def main() -> None:
    args = stage_paths(__doc__, "data", "pretrained", "out", "metrics", "curve")
    settings = load_settings(args.dataset)
    t = settings.train
    description = read_json(args.data / DATASET)
    n_classes = len(description["classes"])
    where = f"dataset {description['dataset']}"
    if t.model == "text":
        check_text_model(t, description["text_columns"], where)
    else:
        check_model_config(t, len(description["features"]), n_classes, where)
    canaries = None
    if t.audit_canaries:
        rng = np.random.default_rng()
        canaries = (draw_text_canaries(t.audit_canaries, n_classes, rng) if t.model == "text"
                    else draw_canaries(t.audit_canaries, len(description["features"]), n_classes, rng))
    extra_rows = int(canaries.included.sum()) if canaries else 0
    pretraining, _ = read_pretrained(args.pretrained)
    bound = privacy_unit_bound(description, settings)
    # canaries are drawn afresh per run, so an audited run cannot resume
    checkpoint = None if canaries else checkpoint_for(settings, description, pretraining, bound)
    vault = open_vault()
    run_id, plan, budget = resume_or_charge(description, settings, checkpoint, extra_rows, vault=vault,
                                            data_dir=args.data, metrics=args.metrics)
    try:
        train_charged(args, settings, vault, description, canaries, plan, run_id, budget, checkpoint)
    except Exception as error:
        error.add_note(f"run {run_id[:12]}'s charge of epsilon {plan.epsilon:.3f} stands: the private data was "
                       "decrypted before this failure")
        raise


if __name__ == "__main__":
    run_stage(main)
