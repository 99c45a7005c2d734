"""The privacy statement: what the DP guarantee covers, in words a data protection officer can check."""

from __future__ import annotations


def privacy_statement(training: dict) -> list[str]:
    """Plain-words statement in the style of TF Privacy's compute_dp_sgd_privacy_statement."""
    p = training["privacy"]
    return [
        f"DP-SGD with Poisson sampling at rate {p['sample_rate']:.4%}, noise multiplier "
        f"{p['noise_multiplier']:.4f} and per-example clipping norm {p['max_grad_norm']}, iterated over "
        f"{p['steps']} steps on {training['rows']['train']} training records, satisfies "
        f"(ε = {p['epsilon_spent']:.3f}, δ = {p['delta']:g})-differential privacy, as computed by "
        f"Opacus' {p['accountant'].upper()} accountant. The ε charged to the ledger before training "
        f"was {p['epsilon']:.3f}.",
        _unit_statement(p, training),
        _noise_statement(p),
        _pretraining_statement(training.get("pretraining") or {"pretrained": False}),
        f"Not covered by the guarantee: the accuracy, loss and class-by-class figures (computed on a held-out "
        f"split of {training['rows']['test']} records; a class with few of them is shown without its count or "
        "recall), the non-private baseline's accuracy, the row counts of "
        f"the validation summary and of the split, whether a {p['privacy_unit']} has more than one record "
        "(and, under a bound, how many records it left out), the schema and the existence of the dataset. "
        "How many records the busiest one has is not published: one person's figure. Features are scaled by "
        "bounds declared in the schema, not by statistics of the data, so scaling spends no budget.",
    ]


def _unit_statement(p: dict, training: dict) -> str:
    unit, bound = p["privacy_unit"], p.get("rows_per_unit_bound", 1)
    if bound > 1:
        dropped = training["rows"].get("dropped_by_unit_bound", 0)
        return (f"User-level privacy: the (ε, δ) protects each {unit}, not just each record. Training kept at "
                f"most {bound} records per {unit} (the first in snapshot order; {dropped} records left out), "
                f"sampled, clipped and accounted each {unit} as one.")
    return (f"The guarantee bounds what the released weights reveal about any single record; no {unit} has "
            f"more than one record (checked before training), so the same (ε, δ) protects each {unit}.")


def _noise_statement(p: dict) -> str:
    source = p.get("noise_source", "torch Mersenne Twister seeded from OS entropy")
    if p.get("secure_noise"):
        return f"Sampling and noise came from a cryptographically secure generator: {source}."
    return (f"Sampling and noise came from {source}: not a cryptographically secure generator, which "
            "matters only against an attacker who can reconstruct its state (privacy.secure_noise switches "
            "to an AES-256-CTR CSPRNG; the prod profile requires it).")


def _pretraining_statement(pretraining: dict) -> str:
    if not pretraining["pretrained"]:
        return "No public pretraining: DP-SGD started from random weights."
    scope = "all layers" if pretraining["fine_tune"] == "all" else "only the output layer"
    return (f"Public pretraining: the model started from weights trained on {pretraining['rows']} public "
            f"records ({pretraining['origin']}; snapshot {pretraining['snapshot_id'][:19]}), data separate "
            f"from the private source and declared public, so it spent no budget. DP-SGD as above then "
            f"fine-tuned {scope} on the private records; the guarantee covers those, not the public ones.")
