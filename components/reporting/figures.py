"""The report's plots, as inline SVG (no script, no network): learning curve, budget, importances."""

from __future__ import annotations

import io

import matplotlib

matplotlib.use("Agg")  # no display: SVG only
import matplotlib.pyplot as plt  # noqa: E402


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
    for ax, key, title, colour in zip(axes, ("test_loss", "test_accuracy", "epsilon"),
                                      ("Held-out loss", "Held-out accuracy", "Privacy spent (ε)"),
                                      ("#6b4fa1", "#1d5fa8", "#b3261e")):
        ax.plot(epochs, [p[key] for p in curve], color=colour)
        ax.set(title=title, xlabel="epoch")
    return _svg(figure)


def importance_svg(explanation: dict, top: int = 15) -> str:
    ranked = explanation["importance"][:top][::-1]
    figure, ax = plt.subplots(figsize=(10, 0.28 * len(ranked) + 1.2))
    ax.barh([r["feature"] for r in ranked], [r["importance"] for r in ranked], color="#1d5fa8")
    if explanation["method"].startswith("word occlusion"):
        ax.set(title=f"Word occlusion on {explanation['rows']} public texts (the words that moved predictions most)",
               xlabel="mean drop in the predicted class's probability when the word is left out")
    else:
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
