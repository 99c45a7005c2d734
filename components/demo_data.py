"""Write the bundled demo dataset: scikit-learn's breast-cancer table as a hospital export.

Real data an installed dependency ships (nothing is downloaded), with a patient id column
and a handful of realistic defects so the quarantine path runs on every demo.
"""

from __future__ import annotations

import argparse
import csv
import io
from pathlib import Path

from sklearn.datasets import load_breast_cancer

# (1-based data row, column, bad value): what real exports get wrong.
DEFECTS: list[tuple[int, str, str]] = [
    (3, "mean_radius", "n/a"),         # text in a numeric column
    (10, "mean_texture", "-5.2"),      # outside the declared range
    (20, "diagnosis", ""),             # missing label
    (30, "diagnosis", "unknown"),      # label not in the allowed set
    (41, "patient_id", "P-000040"),    # the same patient twice
    (60, "patient_id", "60"),          # id in the wrong format
]
EXTRA_FIELD_ROW = 50                   # a stray delimiter: one field too many


def demo_table() -> tuple[list[str], list[list[str]]]:
    data = load_breast_cancer()
    header = ["patient_id", "diagnosis"] + [n.replace(" ", "_") for n in data.feature_names]
    rows = [
        [f"P-{i + 1:06d}", str(data.target_names[label])] + [repr(float(v)) for v in features]
        for i, (features, label) in enumerate(zip(data.data, data.target))
    ]
    for row, column, value in DEFECTS:
        rows[row - 1][header.index(column)] = value
    rows[EXTRA_FIELD_ROW - 1].append("0.1")
    return header, rows


def write_demo_csv(path: Path) -> Path:
    header, rows = demo_table()
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(header)
    writer.writerows(rows)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(buffer.getvalue(), encoding="utf-8")
    return path


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("path", type=Path)
    print(f"demo data: wrote {write_demo_csv(parser.parse_args().path)}")
