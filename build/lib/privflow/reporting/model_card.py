"""The model card (Markdown) beside the compressed model."""

from __future__ import annotations

from pathlib import Path

from privflow.catalog import MODEL_CARD_MD
from privflow.reporting.templates import environment

PACKAGE_FILES = ("templates/model_card.md.j2",)


def write_model_card(out_dir: Path, card: dict, training: dict, compression: dict) -> None:
    text = environment().get_template("model_card.md.j2").render(card=card, training=training,
                                                                  compression=compression)
    (out_dir / MODEL_CARD_MD).write_text(text, encoding="utf-8")
