"""`bigrec evaluate --report DIR`: PNG plots and a small HTML page. matplotlib, imported only here."""

from __future__ import annotations

import html
from pathlib import Path

import numpy as np

from bigrec_cli.project import atomic_write_bytes

MAX_K = 50
STYLES = {"bigrec": ("#d62728", 2.5), "ease": ("#1f77b4", 1.5), "itemknn": ("#2ca02c", 1.5), "pop": ("#7f7f7f", 1.5)}


def curve(ranks: np.ndarray, metric: str) -> np.ndarray:
    """HR@K or NDCG@K for K = 1 … MAX_K."""
    ks = np.arange(1, MAX_K + 1)
    if metric == "hr":
        return np.array([(ranks < k).mean() for k in ks])
    gains = 1.0 / np.log2(ranks + 2.0)
    return np.array([np.where(ranks < k, gains, 0.0).mean() for k in ks])


def _save(figure, path: Path) -> None:
    import io

    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=110, bbox_inches="tight")
    atomic_write_bytes(path, buffer.getvalue())


def write_report(directory: Path, report: dict, ranks: dict[str, np.ndarray], history: list[dict]) -> Path:
    """Write ndcg_at_k.png, hr_at_k.png, training.png and index.html into `directory`; return the page."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    directory.mkdir(parents=True, exist_ok=True)
    for metric, label in (("ndcg", "NDCG@K"), ("hr", "HR@K")):
        figure, axes = plt.subplots(figsize=(6.4, 4.2))
        for name, values in ranks.items():
            color, width = STYLES.get(name, ("black", 1.5))
            axes.plot(np.arange(1, MAX_K + 1), curve(values, metric), label=name, color=color, linewidth=width)
        axes.set(xlabel="K", ylabel=label, title=f"{label}, full ranking, {report['num_users']} test users")
        axes.grid(alpha=0.3)
        axes.legend()
        _save(figure, directory / f"{metric}_at_k.png")
        plt.close(figure)
    figure, (loss_axes, ndcg_axes) = plt.subplots(1, 2, figsize=(9.6, 3.6))
    epochs = [entry["epoch"] for entry in history]
    loss_axes.plot(epochs, [entry["loss"] for entry in history], marker="o", color="#9467bd")
    loss_axes.set(xlabel="epoch", ylabel="training loss", title="Training loss")
    ndcg_axes.plot(epochs, [entry["val_ndcg@10"] for entry in history], marker="o", color="#d62728", label="NDCG@10")
    ndcg_axes.plot(epochs, [entry["val_hr@10"] for entry in history], marker="s", color="#ff7f0e", label="HR@10")
    ndcg_axes.set(xlabel="epoch", title="Validation (full ranking)")
    ndcg_axes.legend()
    for axes in (loss_axes, ndcg_axes):
        axes.grid(alpha=0.3)
    _save(figure, directory / "training.png")
    plt.close(figure)

    names = ["bigrec", *report.get("baselines", {})]
    rows = []
    for key in [f"{m}@{k}" for m in ("hr", "ndcg", "mrr") for k in report["protocol"]["cutoffs"]]:
        values = [report[key]] + [report["baselines"][name][key] for name in names[1:]]
        best = max(values)
        cells = "".join(f"<td{' class=best' if value == best else ''}>{value:.4f}</td>" for value in values)
        rows.append(f"<tr><th>{key}</th>{cells}</tr>")
    page = f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>bigrec evaluation {html.escape(report["run_id"])}</title>
<style>body{{font-family:system-ui,sans-serif;max-width:980px;margin:2em auto;color:#222}}
table{{border-collapse:collapse}}td,th{{padding:4px 12px;border-bottom:1px solid #ddd;text-align:right}}
.best{{font-weight:bold;color:#d62728}}img{{max-width:100%}}</style></head><body>
<h1>bigrec evaluation</h1>
<p>Run <code>{html.escape(report["run_id"])}</code>: {report["num_users"]} test users, {report["num_items"]} items.
AUC {report["auc"]:.4f}, log loss {report["log_loss"]:.4f} ({html.escape(report["protocol"]["auc_log_loss"])}).</p>
<p><small>{html.escape(report["protocol"]["split"])}.
Baselines: {html.escape(report["protocol"]["baselines"])}.</small></p>
<table><tr><th>metric</th>{"".join(f"<th>{html.escape(name)}</th>" for name in names)}</tr>{"".join(rows)}</table>
<h2>Ranking quality by cutoff</h2><img src="ndcg_at_k.png" alt="NDCG@K"><img src="hr_at_k.png" alt="HR@K">
<h2>Training</h2><img src="training.png" alt="training curves">
</body></html>
"""
    atomic_write_bytes(directory / "index.html", page.encode("utf-8"))
    return directory / "index.html"
