"""Every run's report kept under reports/<dataset>/runs/, and reports/index.html rebuilt over all of them."""

from __future__ import annotations

import shutil
from pathlib import Path

from privflow.artifacts import read_json
from privflow.catalog import REPORT_JSON
from privflow.reporting.templates import environment

PACKAGE_FILES = ("templates/index.html.j2",)


def archive_run(reports: Path) -> Path:
    """Keep this run's report and rebuild the index of every run of every dataset."""
    context = read_json(reports / REPORT_JSON)
    runs = reports / "runs"
    runs.mkdir(parents=True, exist_ok=True)
    for suffix in ("html", "json"):
        shutil.copyfile(reports / f"report.{suffix}", runs / f"{context['run_id']}.{suffix}")
    root = reports.parent
    entries = [{**read_json(p), "href": p.relative_to(root).with_suffix(".html").as_posix()}
               for p in root.glob("*/runs/*.json")]
    index = root / "index.html"
    index.write_text(environment().get_template("index.html.j2").render(
        runs=sorted(entries, key=lambda c: c["generated_at"], reverse=True)), encoding="utf-8")
    return index
