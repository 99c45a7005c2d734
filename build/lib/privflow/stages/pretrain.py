"""Stage `pretrain`: train on data declared public, spending no privacy budget.

A dataset may declare public data (`pretrain:` in its params.yaml entry: where the data came
from, and how the private fine-tuning uses the result). Its files sit in the dataset's public
folder, `data/public/<dataset>/`, apart from the private source, and are checked against the
same schema. Training on them is ordinary (non-private) SGD: the data is public, so nothing
is charged. `train` then starts from these weights and fine-tunes under DP-SGD, all layers or
only the last (Tramèr & Boneh 2021; De et al. 2022: public pretraining is where most of
DP's accuracy gap closes).

The guard: the public folder may never be, contain or be inside the private source, and no
public file may have the same bytes as a private one; otherwise the stage refuses.
"""

from __future__ import annotations

from safetensors.torch import save_file

from privflow.artifacts import stage_paths, write_json
from privflow.catalog import PRETRAINED, PRETRAIN_DESCRIPTION
from privflow.data.schema_file import load_schema
from privflow.data.sources import SUFFIXES, snapshot_id
from privflow.errors import PrivacyError, run_stage
from privflow.modeling.models import weights_of
from privflow.settings import load_settings
from privflow.training.public import pretrain, public_files, read_public


def main() -> None:
    args = stage_paths(__doc__, "public", "out")
    settings = load_settings(args.dataset)
    args.out.mkdir(parents=True, exist_ok=True)
    if settings.pretrain is None:
        write_json(args.out / PRETRAIN_DESCRIPTION, {"pretrained": False, "reason": "no public data declared"})
        print(f"pretrain: {args.dataset} declares no public data; training starts from random weights")
        return
    files = public_files(args.public, settings.ingest.source)
    if not files:
        raise PrivacyError(f"{args.public}: {args.dataset} declares public data (pretrain: in params.yaml) but "
                           f"the folder holds no {', '.join(SUFFIXES)} files; put the public data there")
    schema = load_schema(settings.validate_.schema_file)
    public = read_public(files, schema, settings)
    model, held_back_accuracy = pretrain(public, settings, len(schema.classes))
    save_file(weights_of(model), args.out / PRETRAINED)
    write_json(args.out / PRETRAIN_DESCRIPTION, {
        "pretrained": True, "origin": settings.pretrain.origin, "files": [p.name for p in files],
        "snapshot_id": snapshot_id(files, True), "rows": len(public), "epochs": settings.pretrain.epochs,
        "fine_tune": settings.pretrain.fine_tune, "public_held_back_accuracy": held_back_accuracy,
        "privacy_spent": 0.0})
    print(f"pretrain: {len(public)} public rows ({settings.pretrain.origin}), held-back accuracy "
          f"{held_back_accuracy:.3f}; no privacy budget spent")


if __name__ == "__main__":
    run_stage(main)
