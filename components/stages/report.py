"""Stage `report`: what happened to the data, for an auditor, a DPO and an ML engineer.

One context is built from the plaintext side files (counts, hashes, key ids, metrics) and
the ledger, then rendered three ways: self-contained HTML (plots inline as SVG, no script,
no network), Markdown (Prefect artifacts) and JSON (machines). This stage never opens the
vault, so it cannot leak a row.
"""

from __future__ import annotations

import argparse
import io
import json
import shutil
from dataclasses import asdict
from datetime import UTC, datetime
from importlib.metadata import version
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import yaml  # noqa: E402
from jinja2 import Environment, PackageLoader, select_autoescape  # noqa: E402

from privflow.artifacts import git_commit, open_vault, read_json, sha256_file, stage_paths, write_json  # noqa: E402
from privflow.budget import open_ledger  # noqa: E402
from privflow.errors import run_stage  # noqa: E402
from privflow.privacy.ledger import Charge, LedgerAnchor, PrivacyLedger, budget_of  # noqa: E402
from privflow.settings import load_settings  # noqa: E402

PACKAGES = ("torch", "opacus", "cryptography", "blake3", "pandera", "dvc", "prefect")
SECTIONS = ("summary", "privacy-statement", "validation", "training", "compression",
            "explanations", "budget", "audit", "lineage")
_ENV = Environment(loader=PackageLoader("privflow.reporting", "templates"),
                   autoescape=select_autoescape(["html"]), trim_blocks=True, lstrip_blocks=True)


def privacy_statement(training: dict, dataset: dict, budget: dict) -> list[str]:
    """Plain-words statement in the style of TF Privacy's compute_dp_sgd_privacy_statement."""
    p = training["privacy"]
    per_person = dataset["max_rows_per_unit"]
    return [
        f"DP-SGD with Poisson sampling at rate {p['sample_rate']:.4%}, noise multiplier "
        f"{p['noise_multiplier']:.4f} and per-example clipping norm {p['max_grad_norm']}, iterated over "
        f"{p['steps']} steps on {training['rows']['train']} training records, satisfies "
        f"(ε = {p['epsilon_spent']:.3f}, δ = {p['delta']:g})-differential privacy, as computed by "
        f"Opacus' {p['accountant'].upper()} accountant. The ε charged to the ledger before training "
        f"was {p['epsilon']:.3f}.",
        _unit_statement(p, dataset, training),
        _noise_statement(p),
        _pretraining_statement(training.get("pretraining") or {"pretrained": False}),
        f"Not covered by the guarantee: the accuracy figures (computed on a held-out split of "
        f"{training['rows']['test']} records), the non-private baseline's accuracy, the row counts of "
        "the validation summary, the schema and the existence of the dataset. Features are scaled by "
        "bounds declared in the schema, not by statistics of the data, so scaling spends no budget.",
    ]


def _unit_statement(p: dict, dataset: dict, training: dict) -> str:
    unit, bound = p["privacy_unit"], p.get("rows_per_unit_bound", 1)
    if bound > 1:
        dropped = training["rows"].get("dropped_by_unit_bound", 0)
        return (f"User-level privacy: the (ε, δ) protects each {unit}, not just each record. A {unit} has up to "
                f"{dataset['max_rows_per_unit']} records; training kept at most {bound} per {unit} (the first in "
                f"snapshot order; {dropped} records left out), sampled, clipped and accounted each {unit} as one.")
    return (f"The guarantee bounds what the released weights reveal about any single record; each {unit} "
            f"has at most {dataset['max_rows_per_unit']} record, so the same (ε, δ) protects each {unit}.")


def _noise_statement(p: dict) -> str:
    source = p.get("noise_source", "torch Mersenne Twister seeded from OS entropy")
    if p.get("secure_noise"):
        return f"Sampling and noise came from a cryptographically secure generator: {source}."
    return (f"Sampling and noise came from {source}: not a cryptographically secure generator, which "
            "matters only against an attacker who can reconstruct its state (privacy.secure_noise switches "
            "to a ChaCha20 CSPRNG; the prod profile requires it).")


def _pretraining_statement(pretraining: dict) -> str:
    if not pretraining["pretrained"]:
        return "No public pretraining: DP-SGD started from random weights."
    scope = "all layers" if pretraining["fine_tune"] == "all" else "only the output layer"
    return (f"Public pretraining: the model started from weights trained on {pretraining['rows']} public "
            f"records ({pretraining['origin']}; snapshot {pretraining['snapshot_id'][:19]}), data separate "
            f"from the private source and declared public, so it spent no budget. DP-SGD as above then "
            f"fine-tuned {scope} on the private records; the guarantee covers those, not the public ones.")


def _svg(figure) -> str:
    figure.tight_layout()
    buffer = io.StringIO()
    figure.savefig(buffer, format="svg")
    plt.close(figure)
    svg = buffer.getvalue()
    return svg[svg.index("<svg"):]


def curve_svg(curve: list[dict]) -> str:
    figure, axes = plt.subplots(1, 3, figsize=(10, 3))
    epochs = [p["epoch"] for p in curve]
    for ax, key, title, colour in zip(axes, ("train_loss", "test_accuracy", "epsilon"),
                                      ("Training loss", "Test accuracy", "Privacy spent (ε)"),
                                      ("#6b4fa1", "#1d5fa8", "#b3261e")):
        ax.plot(epochs, [p[key] for p in curve], color=colour)
        ax.set(title=title, xlabel="epoch")
    return _svg(figure)


def importance_svg(explanation: dict, top: int = 15) -> str:
    ranked = explanation["importance"][:top][::-1]
    figure, ax = plt.subplots(figsize=(10, 0.28 * len(ranked) + 1.2))
    ax.barh([r["feature"] for r in ranked], [r["importance"] for r in ranked], color="#1d5fa8")
    ax.set(title=f"Permutation importance on {explanation['data']} data (share of predictions changed)",
           xlabel="share of reference rows whose prediction changes when the feature is shuffled")
    return _svg(figure)


def budget_svg(charges: list[dict], cap: float) -> str:
    figure, ax = plt.subplots(figsize=(10, 2.8))
    running, total = [], 0.0
    for charge in charges:
        total += charge["epsilon"]
        running.append(total)
    runs = list(range(1, len(running) + 1))
    bars = ax.bar(runs, running, color="#b3261e", label="cumulative ε after the run")
    ax.bar_label(bars, fmt="%.2f")
    ax.axhline(cap, color="#555", linestyle="--", label=f"cap {cap:g}")
    ax.set_xticks(runs)
    ax.set(title="Cumulative ε spent on this dataset, by run", xlabel="run (ledger order)",
           ylabel="ε", ylim=(0, cap * 1.1), xlim=(0.4, max(len(runs), 8) + 0.6))
    ax.legend(loc="upper left")
    return _svg(figure)


def dvc_outputs(lock: Path, dataset: str | None = None) -> list[dict]:
    """Every output DVC has recorded so far for the dataset, with the hash it tracks (ciphertext
    for sealed data)."""
    if not lock.exists():
        return []
    stages = yaml.safe_load(lock.read_text(encoding="utf-8")).get("stages", {})
    return [{"stage": name, "path": out["path"], "md5": out.get("md5", "?")}
            for name, stage in stages.items() for out in stage.get("outs", [])
            if dataset is None or name.endswith(f"@{dataset}")]


def budget_section(dataset: str, charges: list[Charge], cap: float, problems: list[str]) -> dict:
    budget = budget_of(dataset, cap, charges)
    return {"cap": cap, "spent": budget.spent, "spent_sum": budget.spent_sum, "remaining": budget.remaining,
            "delta_total": budget.delta_total, "charges": [asdict(c) for c in charges], "problems": problems}


def build_context(args: argparse.Namespace, title: str, ledger: PrivacyLedger, cap: float) -> dict:
    training, dataset = read_json(args.training), read_json(args.dataset_description)
    name = training["budget"].get("name", dataset["dataset"])
    anchor = training.get("ledger_anchor")
    anchors = [(str(args.training), LedgerAnchor(**anchor))] if anchor else []
    budget = budget_section(name, ledger.charges(name), cap, ledger.verify(anchors))
    return {
        "title": title, "generated_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "run_id": training["run_id"], "manifest": read_json(args.manifest),
        "validation": read_json(args.validation), "dataset": dataset, "training": training,
        "curve": read_json(args.curve), "compression": read_json(args.compression), "budget": budget,
        "privacy_statement": privacy_statement(training, dataset, budget),
        "explanation": read_json(args.explanation), "pretraining": read_json(args.pretraining),
        "audit": training.get("audit"),
        "lineage": {"model_sha256": sha256_file(args.model), "git_commit": git_commit(),
                    "dvc_outputs": dvc_outputs(Path("dvc.lock"), dataset["dataset"]),
                    "packages": {name: version(name) for name in PACKAGES}},
    }


def write_report(context: dict, out_dir: Path) -> None:
    out_dir.mkdir(parents=True, exist_ok=True)
    plots = {"curve_svg": curve_svg(context["curve"]),
             "budget_svg": budget_svg(context["budget"]["charges"], context["budget"]["cap"]),
             "importance_svg": importance_svg(context["explanation"])}
    (out_dir / "report.html").write_text(
        _ENV.get_template("report.html.j2").render(**context, **plots, sections=SECTIONS), encoding="utf-8")
    (out_dir / "report.md").write_text(_ENV.get_template("report.md.j2").render(**context), encoding="utf-8")
    write_json(out_dir / "report.json", context)


def archive_run(reports: Path) -> Path:
    """Keep this run's report under reports/<dataset>/runs/ and rebuild reports/index.html,
    the index of every run of every dataset."""
    context = read_json(reports / "report.json")
    runs = reports / "runs"
    runs.mkdir(parents=True, exist_ok=True)
    for suffix in ("html", "json"):
        shutil.copyfile(reports / f"report.{suffix}", runs / f"{context['run_id']}.{suffix}")
    root = reports.parent
    entries = [{**read_json(p), "href": p.relative_to(root).with_suffix(".html").as_posix()}
               for p in root.glob("*/runs/*.json")]
    index = root / "index.html"
    index.write_text(_ENV.get_template("index.html.j2").render(
        runs=sorted(entries, key=lambda c: c["generated_at"], reverse=True)), encoding="utf-8")
    return index


def main() -> None:
    args = stage_paths(__doc__, "manifest", "validation", "dataset-description", "model", "training", "curve",
                       "compression", "explanation", "pretraining", "out")
    settings = load_settings(args.dataset)
    ledger = open_ledger(settings, open_vault())
    context = build_context(args, settings.report.title, ledger, settings.privacy.epsilon_cap)
    write_report(context, args.out)
    print(f"report: wrote {args.out}/report.html, report.md, report.json ({json.dumps(context['run_id'])})")


if __name__ == "__main__":
    run_stage(main)
