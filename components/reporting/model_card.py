"""The model card (Markdown) beside the compressed model."""

from __future__ import annotations

from pathlib import Path

from privflow.catalog import MODEL_CARD_MD
from privflow.reporting.templates import environment

PACKAGE_FILES = ("templates/model_card.md.j2",)


def write_model_card(out_dir: Path, card: dict, training: dict, evaluation: dict, compression: dict) -> None:
    """`evaluation`: the evaluate stage's figures, class by class (Mitchell et al. 2019 ask a model
    card for disaggregated results: accuracy alone hides a model that answers one class)."""
    text = environment().get_template("model_card.md.j2").render(card=card, training=training,
                                                                  evaluation=evaluation, compression=compression)
    (out_dir / MODEL_CARD_MD).write_text(text, encoding="utf-8")
