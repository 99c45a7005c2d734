"""How the released DP model does class by class on the held-out split.

Accuracy alone cannot tell an auditor whether DP-SGD left a model that learned or one that
answers the most frequent class for everyone: under tight budgets the second is a common
failure, and on skewed data it scores well (a payroll project's three risk bands: accuracy
0.507 against 0.546 non-private read as "DP costs 4 points", where always answering the
largest band scores 0.546: neither model predicted anything). So the model is compared with
that constant answer on the same records, paired as the DP/non-private gap is
(`training.baseline.paired_gap`), and each class gets its recall.

The figures are statistics of private test records, outside the DP guarantee like the
accuracy itself. A class with fewer than `MIN_CLASS_RECORDS` test records gets neither its
count nor its recall: a recall over three people says whether each of them was classified
right (the threshold rule of statistical disclosure control, as in Eurostat's and the ONS's
minimum cell sizes).
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from privflow.crypto.vault import Vault
from privflow.training.baseline import paired_gap
from privflow.training.io import load_split, load_text_split

MIN_CLASS_RECORDS = 10
BATCH = {"text": 64, "tabular": 4096}  # a text batch's activations are tokens x width per record


@torch.inference_mode()
def split_predictions(model: nn.Module, card: dict, vault: Vault, description: dict,
                     data_dir: Path) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(predicted class, true class, person) of every record of the sealed test split, in fp32
    on the CPU: the released weights as `privflow predict` and the export start from them."""
    model.eval()
    if card["preset"] == "text":
        from privflow.modeling.text_encoder import load_tokenizer, pretrained, tokenize

        texts, labels, units = load_text_split(vault, description, "test", data_dir, card["text"]["column"])
        tokenizer = load_tokenizer(pretrained(card["text"]["encoder"]), card["text"]["max_tokens"])
        step = BATCH["text"]
        parts = [model(*tokenize(tokenizer, texts[start:start + step])) for start in range(0, len(texts), step)]
    else:
        features, labels, units = load_split(vault, description, "test", data_dir).tensors
        step = BATCH["tabular"]
        parts = [model(features[start:start + step]) for start in range(0, len(labels), step)]
    predicted = torch.cat([logits.argmax(dim=1) for logits in parts]) if parts else torch.zeros(0, dtype=torch.long)
    return predicted, labels, units


def _versus_constant(right: torch.Tensor, labels: torch.Tensor, classes: list[str], counts: torch.Tensor,
                     units: torch.Tensor | None) -> dict:
    """The model against always answering the test split's most frequent class, paired (over
    persons where one has several test records)."""
    largest = int(counts.argmax())
    gained = right.float() - (labels == largest).float()
    points, half = paired_gap(gained, units)
    plain = paired_gap(gained)[1] if units is not None else float("nan")
    name = classes[largest]
    outcome = ("not measured" if not len(labels) > 1 else "better" if points - half > 0
               else "worse" if points + half < 0 else "no better")
    verdict = ("not measured: fewer than two test records" if outcome == "not measured"
               else f"the DP model does {outcome} than always answering '{name}'"
               + (", within the test split's noise" if outcome == "no better" else ""))
    return {"class": name, "accuracy": float(counts[largest]) / max(len(labels), 1), "points": points,
            "interval_95": [points - half, points + half], "outcome": outcome, "verdict": verdict,
            "over_persons": units is not None,
            # the interval over persons against the one over records: the report's guide to how much train's
            # "what DP cost" interval, which counts records, understates (same split, same persons)
            "widening_over_persons": half / plain if plain > 0 else None}


def _per_class(classes: list[str], counts: list[int], recalls: list[float], answered: list[int]) -> list[dict]:
    """Each class's row; a small class without its count or recall."""
    total = max(sum(counts), 1)
    return [{"class": name, "records": count if count >= MIN_CLASS_RECORDS else None,
             "recall": recall if count >= MIN_CLASS_RECORDS else None, "answered_share": answers / total}
            for name, count, recall, answers in zip(classes, counts, recalls, answered)]


def class_evaluation(predicted: torch.Tensor, labels: torch.Tensor, classes: list[str],
                     units: torch.Tensor | None = None) -> dict:
    """Accuracy, balanced accuracy, the constant answer's score and each class's recall. `units`:
    each record's person, when some have several test records (user-level data)."""
    right = predicted == labels
    if units is not None and len(torch.unique(units)) == len(units):
        units = None  # one record each: the plain interval (the clustered one equals it); no persons to speak of
    counts = torch.bincount(labels, minlength=len(classes))
    # a class's recall: its records answered right over its records, counted in integers
    hits, sizes = torch.bincount(labels[right], minlength=len(classes)).tolist(), counts.tolist()
    recalls = [hit / size if size else float("nan") for hit, size in zip(hits, sizes)]
    answered = torch.bincount(predicted, minlength=len(classes)).tolist()
    present = [recall for recall, size in zip(recalls, sizes) if size]
    return {
        "records": len(labels),
        "accuracy": int(right.sum()) / len(right) if len(right) else float("nan"),  # in integers, as train's
        "balanced_accuracy": sum(present) / len(present) if present else float("nan"),
        "classes_answered": sum(1 for answers in answered if answers),
        "versus_constant": _versus_constant(right, labels, classes, counts, units),
        "classes": _per_class(classes, sizes, recalls, answered),
        "min_class_records": MIN_CLASS_RECORDS,
    }
