"""Stage `explain`: global feature importance of the trained model, costing no privacy.

Permutation importance: shuffle one feature across the reference rows and measure how often
the model's prediction changes (model reliance; Fisher, Rudin & Dominici 2019). Permuting
needs no labels, so the reference rows can be synthetic. Which rows (`explain.data`):
- `public`: the dataset's public data (needs `pretrain:` in its entry); no privacy spent;
- `synthetic`: uniform draws from the scaled feature range [0, 1]; no privacy spent, but
  off the data's distribution, so importances describe the model more than the population;
- `private_test`: the held-out private split, decrypted here. The importances are then a
  statistic of private rows outside the DP guarantee; the report says so.
`auto` (the default) picks `public` when the dataset declares public data, else `synthetic`.
A text model (train.model: text) is explained by word occlusion on public reviews instead
(privflow.modeling.text_attribution).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from privflow.artifacts import open_vault, read_json, stage_paths, write_json
from privflow.catalog import DATASET
from privflow.data.schema_file import load_schema
from privflow.errors import PrivacyError, run_stage
from privflow.modeling.pruning import synthetic_inputs
from privflow.settings import Settings, load_settings
from privflow.training.io import load_model
from privflow.training.public import public_files, read_public

REPEATS = 5
SYNTHETIC_ROWS = 2000
STATEMENTS = {
    "public": "public data declared for this dataset ({rows} rows); no private row was read and no privacy spent",
    "synthetic": "{rows} synthetic inputs drawn uniformly from the scaled feature range; no private row was read "
                 "and no privacy spent (off the data's distribution: the importances describe the model's "
                 "behaviour more than the population)",
    "private_test": "the held-out private test split ({rows} rows), as explain.data requests: these importances "
                    "are computed from private rows and are NOT covered by the differential-privacy guarantee",
}


@torch.inference_mode()
def permutation_importance(model: torch.nn.Module, features: np.ndarray, repeats: int = REPEATS,
                           seed: int = 0) -> np.ndarray:
    """Per feature: the mean share of reference rows whose predicted class changes when that
    feature is shuffled across rows."""
    rng = np.random.default_rng(seed)
    inputs = torch.from_numpy(features.astype(np.float32))
    reference = model(inputs).argmax(dim=1)
    importance = np.zeros(features.shape[1])
    for column in range(features.shape[1]):
        for _ in range(repeats):
            shuffled = inputs.clone()
            shuffled[:, column] = shuffled[rng.permutation(len(shuffled)), column]
            importance[column] += float((model(shuffled).argmax(dim=1) != reference).float().mean())
    return importance / repeats


def reference_rows(kind: str, settings: Settings, public: Path, data: Path, n_features: int) -> np.ndarray:
    """The reference rows the config asks for; private rows only on explicit request."""
    if kind == "public":
        if settings.pretrain is None:
            raise PrivacyError(f"explain.data is 'public' but {settings.dataset.name} declares no public data "
                               "(pretrain: in its params.yaml entry); use 'synthetic'")
        schema = load_schema(settings.validate_.schema_file)
        return read_public(public_files(public, settings.ingest.source), schema, settings).tensors[0].numpy()
    if kind == "synthetic":
        return synthetic_inputs(n_features, SYNTHETIC_ROWS, seed=11).numpy()
    from privflow.training.io import load_split

    return load_split(open_vault(), read_json(data / DATASET), "test", data).tensors[0].numpy()


def explain_text(model: torch.nn.Module, card: dict) -> dict:
    """Word attributions on public reviews (the text preset)."""
    from privflow.data.public_text import ORIGIN
    from privflow.modeling.text_attribution import word_importance

    ranked, reviews = word_importance(model, card["text"])
    return {"method": "word occlusion (drop in the predicted class's probability when a word is left out)",
            "data": "public", "rows": reviews, "private_rows_read": False,
            "statement": f"{reviews} public texts ({ORIGIN}); no private text was read and no privacy spent (public "
                         "text from another domain: the attributions describe the model more than the dataset)",
            "importance": ranked}


def main() -> None:
    args = stage_paths(__doc__, "model", "public", "data", "metrics")
    settings = load_settings(args.dataset)
    model, card = load_model(args.model)
    if card["preset"] == "text":
        explanation = explain_text(model, card)
        write_json(args.metrics, explanation)
        print("explain: on public text; most important words: "
              + ", ".join(f"{r['feature']} {r['importance']:.3f}" for r in explanation["importance"][:3]))
        return
    kind = settings.explain.data
    if kind == "auto":
        kind = "public" if settings.pretrain is not None else "synthetic"
    rows = reference_rows(kind, settings, args.public, args.data, len(card["features"]))
    importance = permutation_importance(model, rows)
    ranked = sorted(zip(card["features"], importance.tolist()), key=lambda pair: -pair[1])
    write_json(args.metrics, {
        "method": f"permutation importance (prediction changes, {REPEATS} shuffles per feature)",
        "data": kind, "rows": len(rows), "statement": STATEMENTS[kind].format(rows=len(rows)),
        "private_rows_read": kind == "private_test",
        "importance": [{"feature": name, "importance": value} for name, value in ranked],
    })
    print(f"explain: on {kind} data ({len(rows)} rows); most important: "
          + ", ".join(f"{name} {value:.3f}" for name, value in ranked[:3]))


if __name__ == "__main__":
    run_stage(main)
