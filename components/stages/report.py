"""Stage `report`: what happened to the data, for an auditor, a DPO and an ML engineer.

One context is built from the plaintext side files (counts, hashes, key ids, metrics) and
the ledger, then rendered three ways: self-contained HTML (plots inline as SVG, no script,
no network), Markdown (Prefect artifacts) and JSON (machines). This stage never opens the
vault, so it cannot leak a row.
"""

from __future__ import annotations

import json

from privflow.artifacts import open_vault, stage_paths
from privflow.budget import open_ledger
from privflow.errors import run_stage
from privflow.reporting.context import build_context
from privflow.reporting.render import write_report
from privflow.settings import load_settings


def main() -> None:
    args = stage_paths(__doc__, "manifest", "validation", "dataset-description", "model", "training", "curve",
                       "evaluation", "compression", "explanation", "pretraining", "out")
    settings = load_settings(args.dataset)
    ledger = open_ledger(settings, open_vault())
    context = build_context(args, settings.report.title, ledger, settings.privacy.epsilon_cap)
    write_report(context, args.out)
    print(f"report: wrote {args.out}/report.html, report.md, report.json ({json.dumps(context['run_id'])})")


if __name__ == "__main__":
    run_stage(main)
