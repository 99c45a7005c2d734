"""Stage `report`: one self-contained HTML page a person can read, from aggregates only.

Inputs are the plaintext side files (counts, hashes, key ids, metrics) and the ledger;
this stage never opens the vault, so it cannot leak a row.
"""

from __future__ import annotations

import argparse
import io
from datetime import UTC, datetime
from importlib.metadata import version
from pathlib import Path

import matplotlib
import yaml

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
from jinja2 import Environment, PackageLoader, select_autoescape  # noqa: E402

from components.artifacts import git_commit, read_json, sha256_file  # noqa: E402
from components.errors import run_stage  # noqa: E402
from components.privacy.ledger import PrivacyLedger  # noqa: E402
from components.settings import load_settings  # noqa: E402

PACKAGES = ("torch", "opacus", "cryptography", "pandera", "dvc", "prefect")


def curve_svg(curve: list[dict]) -> str:
    figure, (left, right) = plt.subplots(1, 2, figsize=(9, 3.2))
    epochs = [p["epoch"] for p in curve]
    left.plot(epochs, [p["epsilon"] for p in curve], color="#b3261e")
    left.set(title="Privacy spent (epsilon) by epoch", xlabel="epoch", ylabel="epsilon")
    right.plot(epochs, [p["test_accuracy"] for p in curve], color="#1d5fa8")
    right.set(title="Test accuracy by epoch", xlabel="epoch", ylabel="accuracy")
    figure.tight_layout()
    buffer = io.StringIO()
    figure.savefig(buffer, format="svg")
    plt.close(figure)
    svg = buffer.getvalue()
    return svg[svg.index("<svg"):]


def dvc_outputs(lock: Path) -> list[dict]:
    """Every output DVC has recorded so far, with the hash it tracks (ciphertext for sealed data)."""
    if not lock.exists():
        return []
    stages = yaml.safe_load(lock.read_text(encoding="utf-8")).get("stages", {})
    return [{"stage": name, "path": out["path"], "md5": out.get("md5", "?")}
            for name, stage in stages.items() for out in stage.get("outs", [])]


def render_report(context: dict) -> str:
    env = Environment(loader=PackageLoader("components", "templates"),
                      autoescape=select_autoescape(["html", "j2"]))
    return env.get_template("report.html.j2").render(**context)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    for name in ("manifest", "validation", "dataset", "model", "training", "curve", "compression", "out"):
        parser.add_argument(f"--{name}", type=Path, required=True)
    args = parser.parse_args()
    settings = load_settings()
    training = read_json(args.training)
    dataset = read_json(args.dataset)
    ledger = PrivacyLedger(settings.privacy.ledger)
    context = {
        "title": settings.report.title, "generated_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "manifest": read_json(args.manifest), "validation": read_json(args.validation),
        "dataset": dataset, "training": training, "compression": read_json(args.compression),
        "curve_svg": curve_svg(read_json(args.curve)),
        "charges": ledger.charges(dataset["dataset"]),
        "budget": ledger.budget(dataset["dataset"], settings.privacy.epsilon_cap),
        "ledger_problems": ledger.verify(),
        "model_sha256": sha256_file(args.model), "git_commit": git_commit(),
        "packages": {name: version(name) for name in PACKAGES},
        "dvc_outputs": dvc_outputs(Path("dvc.lock")),
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(render_report(context), encoding="utf-8")
    print(f"report: wrote {args.out}")


if __name__ == "__main__":
    run_stage(main)
