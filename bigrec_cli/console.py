"""The only module that imports Rich: the stdout and stderr consoles, tables and progress bars."""

from __future__ import annotations

import json
import re
import sys
from contextlib import contextmanager
from typing import Any, Iterator

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn
from rich.table import Table
from rich.text import Text

# Piped or captured output gets a wide fixed width instead of 80 columns, so tables are never cut.
console = Console(highlight=False, soft_wrap=True, emoji=False, width=None if sys.stdout.isatty() else 160)
err_console = Console(stderr=True, highlight=False, emoji=False)
CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f-\x9f]")


def plain(value: Any) -> Text:
    """User or data text as a literal cell: no markup, no emoji codes, control characters removed."""
    return Text(CONTROL.sub("", str(value)))


def print_json(value: Any) -> None:
    """Write one JSON document to stdout, nothing else."""
    sys.stdout.write(json.dumps(value, indent=2, sort_keys=False, default=str) + "\n")
    sys.stdout.flush()


def error(message: str) -> None:
    """Print one error line to stderr."""
    err_console.print(Text.assemble(("error:", "bold red"), " ", plain(message)), soft_wrap=True)


def info(message: str) -> None:
    """Print a progress or log line to stderr."""
    err_console.print(plain(message), soft_wrap=True)


@contextmanager
def progress(description: str, transient: bool = False) -> Iterator[Progress]:
    """A Rich progress bar on stderr; callers set its total and advance it (`transient`: erased when done)."""
    bar = Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
        console=err_console,
        transient=transient,
    )
    with bar:
        bar.add_task(description, total=None)
        yield bar


def key_values(title: str, values: dict[str, Any]) -> None:
    """Print a two-column table of scalar results to stdout."""
    table = Table(title=title, show_header=False)
    table.add_column("", style="bold")
    table.add_column("", justify="right")
    for key, value in values.items():
        table.add_row(plain(key), plain(f"{value:.4f}" if isinstance(value, float) else value))
    console.print(table)


def metrics_table(report: dict, cutoffs: list[int]) -> None:
    """Print the evaluation report: one row per metric, the model beside each baseline."""
    baselines = report.get("baselines", {})
    table = Table(
        title=f"Test metrics, run {report['run_id']} ({report['num_users']} users, {report['num_items']} items)"
    )
    table.add_column("metric", style="bold")
    table.add_column("bigrec", justify="right")
    for name in baselines:
        table.add_column(name, justify="right")
    for metric in ("hr", "ndcg", "mrr"):
        for k in cutoffs:
            key = f"{metric}@{k}"
            table.add_row(key, f"{report[key]:.4f}", *(f"{baselines[name][key]:.4f}" for name in baselines))
    table.add_row("auc", f"{report['auc']:.4f}", *("" for _ in baselines))
    table.add_row("log_loss", f"{report['log_loss']:.4f}", *("" for _ in baselines))
    console.print(table)
    err_console.print(f"protocol: {report['protocol']['split']}; {report['protocol']['auc_log_loss']}", markup=False)


def recommendations_table(answer: dict) -> None:
    """Print one user's top-K list."""
    flag = " (cold start: popular items)" if answer["cold_start"] else ""
    table = Table(title=plain(f"Top {len(answer['items'])} for user {answer['user_id']}{flag}"))
    table.add_column("rank", justify="right")
    table.add_column("item_id")
    table.add_column("title")
    table.add_column("score", justify="right")
    explained = any("because" in item for item in answer["items"])
    if explained:
        table.add_column("because of")
    for item in answer["items"]:
        score = "" if item["score"] is None else f"{item['score']:.4f}"
        cells = [str(item["rank"]), plain(item["item_id"]), plain(item["title"]), score]
        if explained:
            reasons = item.get("because", [])
            cells.append(
                plain(
                    ", ".join(
                        f"{reason['title'] or reason['item_id']} (+{reason['contribution']:.2f})" for reason in reasons
                    )
                )
            )
        table.add_row(*cells)
    console.print(table)


def rows_table(title: str, rows: list[dict], columns: list[str]) -> None:
    """Print a list of records as a table on stdout."""
    table = Table(title=title)
    for column in columns:
        table.add_column(column)
    for row in rows:
        cells = [row.get(column) for column in columns]
        table.add_row(
            *(plain("" if cell is None else f"{cell:.4f}" if isinstance(cell, float) else cell) for cell in cells)
        )
    console.print(table)
