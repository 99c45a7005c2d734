"""Stage `evaluate`: the released DP model, class by class, on the held-out private split.

It answers what accuracy alone hides: whether the model beats always answering the most
frequent class, and how each class fares (privflow.modeling.evaluation). It reads the model
train released and the sealed test split, decrypted in memory only, and spends no budget:
evaluating a released model on records it was not trained on is outside the DP guarantee,
as the accuracy train reports is, and the report says so. Its own stage, not train's: a new
figure here re-runs this stage and the report, never a training.
"""

from __future__ import annotations

from privflow.artifacts import open_vault, read_json, stage_paths, write_json
from privflow.catalog import DATASET
from privflow.errors import DatasetError, run_stage
from privflow.modeling.evaluation import class_evaluation, split_predictions
from privflow.training.io import load_model


def main() -> None:
    args = stage_paths(__doc__, "model", "data", "metrics")
    model, card = load_model(args.model)
    description = read_json(args.data / DATASET)
    if card["snapshot_id"] != description["snapshot_id"]:  # `dvc repro` keeps them one; a hand-run stage may not
        raise DatasetError(f"{args.model} was trained on snapshot {card['snapshot_id'][:24]}, {args.data} holds "
                           f"{description['snapshot_id'][:24]}; run `privflow run` to train on the new snapshot")
    predicted, labels, units = split_predictions(model, card, open_vault(), description, args.data)
    # the run whose model it is: `privflow predict` warns with these figures only for that model
    classes = [str(name) for name in card["classes"]]
    evaluation = {"run_id": card.get("run_id"), **class_evaluation(predicted, labels, classes, units)}
    write_json(args.metrics, evaluation)
    constant = evaluation["versus_constant"]
    print(f"evaluate: {evaluation['records']} test records, accuracy {evaluation['accuracy']:.3f}, balanced "
          f"{evaluation['balanced_accuracy']:.3f}; {constant['verdict']} ({constant['accuracy']:.3f})")


if __name__ == "__main__":
    run_stage(main)
