"""The report rendered three ways: self-contained HTML (plots inline as SVG, no script, no
network), Markdown (Prefect artifacts) and JSON (machines)."""

from __future__ import annotations

from pathlib import Path

from privflow.artifacts import write_json
from privflow.catalog import REPORT_FILES
from privflow.reporting.figures import budget_svg, curve_svg, importance_svg
from privflow.reporting.templates import environment

PACKAGE_FILES = ("templates/report.html.j2", "templates/report.md.j2")
SECTIONS = ("summary", "privacy-statement", "validation", "training", "compression",
            "explanations", "budget", "audit", "lineage")


def write_report(context: dict, out_dir: Path) -> None:
    out_dir.mkdir(parents=True, exist_ok=True)
    plots = {"curve_svg": curve_svg(context["curve"]),
             "budget_svg": budget_svg(context["budget"]["charges"], context["budget"]["cap"]),
             "importance_svg": importance_svg(context["explanation"])}
    html, markdown, document = REPORT_FILES
    (out_dir / html).write_text(
        environment().get_template("report.html.j2").render(**context, **plots, sections=SECTIONS), encoding="utf-8")
    (out_dir / markdown).write_text(environment().get_template("report.md.j2").render(**context), encoding="utf-8")
    write_json(out_dir / document, context)
