"""Ingest + validate throughput and peak memory, beside a plain pyarrow read of the same file.

A generated churn export (20 columns: ids, categories, bools, ints, floats) of 1M rows, and
3M rows to show that memory stays flat while a whole-file read grows. Each measurement runs
in a fresh process, so peak RSS is that measurement's own; module imports are excluded on
both sides (pandera's one-off backend set-up too, by validating one tiny batch first).
Goal (issue 3): ingest + validate <= 3x the pyarrow read time, peak RSS under 1 GB.
Beside them, `privflow schema draft` of the same export (one pass, Arrow kernels), which a team
runs first on its own export: its time and peak RSS, with no goal set.
"""

from __future__ import annotations

import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
OUT = ROOT / "bench-results" / "ingest.json"
SIZES = (1_000_000, 3_000_000)


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def write_source(path: Path, rows: int) -> None:
    import pyarrow as pa
    import pyarrow.csv as pcsv

    from privflow.demo_data import churn_columns

    pcsv.write_csv(pa.table(churn_columns(rows, seed=1)), path)


def measure_read(path: Path) -> dict:
    import pyarrow.csv as pcsv

    start = time.perf_counter()
    table = pcsv.read_csv(path)
    seconds = time.perf_counter() - start
    return {"seconds": seconds, "rows": table.num_rows, "peak_rss_mb": peak_rss_mb()}


def measure_pipeline(path: Path, work: Path) -> dict:
    import io

    from privflow.artifacts import open_vault
    from privflow.data.snapshot import ingest_snapshot, open_snapshot
    from privflow.data.schema_file import load_schema
    from privflow.settings import IngestSettings
    from privflow.data.validation import validate_snapshot

    schema = load_schema(ROOT / "schemas" / "churn.yaml")
    settings = IngestSettings(source=path, log=work / "ingest-log.jsonl")
    header = ",".join(schema.columns).encode() + b"\n"
    validate_snapshot([("warm-up.csv", io.BytesIO(header))], "warm-up", schema, settings)  # one-off set-up
    vault, baseline = open_vault(), peak_rss_mb()
    start = time.perf_counter()
    manifest = ingest_snapshot("churn", settings, vault, work / "ingest", schema)
    ingested = time.perf_counter()
    with open_snapshot(vault, work / "ingest") as (_, members):
        outcome = validate_snapshot(members, str(path), schema, settings)
    done = time.perf_counter()
    return {"ingest_seconds": ingested - start, "validate_seconds": done - ingested, "seconds": done - start,
            "rows": manifest.rows, "rows_valid": outcome.rows_in - len(outcome.rejected),
            "baseline_rss_mb": baseline, "peak_rss_mb": peak_rss_mb()}


def measure_draft(path: Path) -> dict:
    from privflow.data.schema_draft import draft_schema
    from privflow.settings import IngestSettings

    baseline = peak_rss_mb()
    start = time.perf_counter()
    draft_schema(path, IngestSettings(source=path), "churn")
    return {"seconds": time.perf_counter() - start, "baseline_rss_mb": baseline, "peak_rss_mb": peak_rss_mb()}


def in_fresh_process(*args: str) -> dict:
    result = subprocess.run([sys.executable, __file__, *args], capture_output=True, text=True, check=True,
                            env={**os.environ, "PYTHONPATH": str(ROOT)})
    return json.loads(result.stdout.splitlines()[-1])


def main() -> None:
    from rich.console import Console
    from rich.table import Table

    results = []
    with tempfile.TemporaryDirectory() as base:
        os.environ["PRIVFLOW_KEYRING"] = str(Path(base) / "keyring.json")
        from privflow.crypto.keys import Keyring

        Keyring.open(Path(base) / "keyring.json")  # as `privflow keys init` does: stages never create one
        for rows in SIZES:
            source = Path(base) / f"churn-{rows}.csv"
            in_fresh_process("--write", str(source), str(rows))
            read = in_fresh_process("--read", str(source))
            ours = in_fresh_process("--pipeline", str(source), str(Path(base) / f"work-{rows}"))
            draft = in_fresh_process("--draft", str(source))
            size_mb = source.stat().st_size / 1e6
            results.append({"rows": rows, "columns": 20, "file_mb": size_mb, "pyarrow_read": read,
                            "ingest_validate": ours, "ratio": ours["seconds"] / read["seconds"], "schema_draft": draft})
            source.unlink()
    table = Table("rows", "MB", "read s", "ingest s", "validate s", "total s", "x read", "rows/s",
                  "RSS MB read/ours", "draft s", "draft RSS MB",
                  title="ingest+validate vs pyarrow read (goal: <= 3x, RSS < 1000 MB); schema draft beside")
    for r in results:
        ours, read = r["ingest_validate"], r["pyarrow_read"]
        table.add_row(f"{r['rows']:,}", f"{r['file_mb']:.0f}", f"{read['seconds']:.2f}",
                      f"{ours['ingest_seconds']:.2f}", f"{ours['validate_seconds']:.2f}", f"{ours['seconds']:.2f}",
                      f"{r['ratio']:.1f}", f"{r['rows'] / ours['seconds']:,.0f}",
                      f"{read['peak_rss_mb']:.0f}/{ours['peak_rss_mb']:.0f}",
                      f"{r['schema_draft']['seconds']:.2f}", f"{r['schema_draft']['peak_rss_mb']:.0f}")
    Console().print(table)
    OUT.parent.mkdir(exist_ok=True)
    OUT.write_text(json.dumps({"goal": {"ratio": 3.0, "peak_rss_mb": 1000}, "results": results}, indent=2))
    print(f"wrote {OUT}")


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "--write":
        write_source(Path(sys.argv[2]), int(sys.argv[3]))
        print("{}")
    elif len(sys.argv) > 1 and sys.argv[1] == "--read":
        print(json.dumps(measure_read(Path(sys.argv[2]))))
    elif len(sys.argv) > 1 and sys.argv[1] == "--draft":
        print(json.dumps(measure_draft(Path(sys.argv[2]))))
    elif len(sys.argv) > 1 and sys.argv[1] == "--pipeline":
        print(json.dumps(measure_pipeline(Path(sys.argv[2]), Path(sys.argv[3]))))
    else:
        main()
