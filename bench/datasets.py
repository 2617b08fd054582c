"""Convert the shared benchmark datasets into bigrec's generic CSV contract.

Usage: `python bench/datasets.py [--out DIR] [--data-dir DIR] [--subsample FRACTION] NAME...`

Reads `<repo>/../shared/data` (or `--data-dir`, or the environment variable BIGREC_DATA_DIR) and writes, for each
dataset, `<out>/<name>/events.csv` (`user_id,item_id,timestamp,event,weight`; ml-100k has `rating` instead of
`weight`), `items.csv` (`item_id,title` or
`item_id,title,description`) and `meta.json` (counts and protocol). Rows are written in source-file order; nothing
is shuffled, and ties in time are left for the consumer to break.

Datasets:
- `online-retail`: the novel-item protocol of online-retail/SOURCE.md. Purchase lines with a CustomerID, without
  cancellations (InvoiceNo starting with C) or non-positive quantities; each (customer, item) kept at its first
  purchase; customers with at least 3 items. Expected 266,600 events, 4,192 customers, 3,665 items.
- `online-retail-repeat`: the repeat-aware protocol. The same purchase lines, one event per (customer, item,
  invoice), quantities of repeated lines summed; customers with at least 3 such events (expected 387,698 events,
  4,214 customers, 3,665 items); plus the cancellations of those customers and items as `cancel` events.
- `ml-100k`: all 100,000 MovieLens 100K ratings; items described as "YEAR. Genres: A, B" as in bigrec's reader.
- `<name>-<percent>` (e.g. `online-retail-25`, or any NAME with `--subsample`): a random share of the users of
  `<name>`, drawn from the sorted user ids with numpy default_rng(0), with all their events and only their items.

`all` writes online-retail, online-retail-repeat, ml-100k, online-retail-25 and ml-100k-25. Exit status: 0 when
every count matches SOURCE.md, 1 when one does not, 2 when the data is absent.
"""

from __future__ import annotations

import argparse
import functools
import inspect
import json
import os
import re
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

ROOT = Path(__file__).resolve().parent.parent
DEFAULT_DATA_DIR = ROOT.parent / "shared" / "data"
DEFAULT_OUT = ROOT / "bench" / ".work" / "datasets"
SEED = 0
EVENT_COLUMNS = ["user_id", "item_id", "timestamp", "event", "weight"]
ALL = ("online-retail", "online-retail-repeat", "ml-100k", "online-retail-25", "ml-100k-25")
EXPECTED = {  # purchase or rating events, users, items: the figures in the sources' SOURCE.md
    "online-retail": (266_600, 4_192, 3_665),
    "online-retail-repeat": (387_698, 4_214, 3_665),
    "ml-100k": (100_000, 943, 1_682),
}


class DataMissing(Exception):
    """A source file or folder is absent."""


@dataclass(frozen=True)
class Dataset:
    events: pd.DataFrame
    items: pd.DataFrame
    protocol: str


def protocol_of(builder: Callable[[Path], Dataset]) -> str:
    return " ".join((inspect.getdoc(builder) or "").split())


def require(path: Path) -> Path:
    if not path.exists():
        raise DataMissing(f"{path} is absent: no benchmark data to convert")
    return path


@functools.cache
def read_retail(data_dir: Path) -> pd.DataFrame:
    """All rows of online-retail/by-day/*.csv in file order, with ids and timestamps in the output contract."""
    files = sorted(require(data_dir / "online-retail" / "by-day").glob("*.csv"))
    if not files:
        raise DataMissing(f"{data_dir / 'online-retail' / 'by-day'} holds no CSV files")
    raw = pd.concat([pd.read_csv(path, dtype=str, keep_default_na=False) for path in files], ignore_index=True)
    return pd.DataFrame(
        {
            "user_id": raw["CustomerID"].str.removesuffix(".0"),
            "item_id": raw["StockCode"],
            "invoice": raw["InvoiceNo"],
            "timestamp": raw["InvoiceDate"].str.replace(" ", "T", n=1, regex=False),
            "quantity": raw["Quantity"].astype(int),
            "description": raw["Description"].str.strip(),
        }
    )


def retail_items(raw: pd.DataFrame, item_ids: pd.Series) -> pd.DataFrame:
    """Title each item with its most frequent non-empty Description in the whole log (ties: alphabetically first)."""
    named = raw.loc[raw["description"] != "", ["item_id", "description"]]
    counts = named.value_counts().rename("count").reset_index()
    best = counts.sort_values(["count", "description"], ascending=[False, True]).drop_duplicates("item_id")
    titles = best.set_index("item_id")["description"].reindex(item_ids.unique()).fillna("")
    return pd.DataFrame({"item_id": titles.index, "title": titles.to_numpy()})


def is_purchase(raw: pd.DataFrame) -> pd.Series:
    return (raw["user_id"] != "") & ~raw["invoice"].str.startswith("C") & (raw["quantity"] > 0)


def invoice_lines(rows: pd.DataFrame) -> pd.DataFrame:
    """One event per (customer, item, invoice) at its first line's position and time, weight = |sum of quantities|."""
    lines = rows.groupby(["user_id", "item_id", "invoice"], sort=False).agg(
        timestamp=("timestamp", "first"), weight=("quantity", "sum")
    )
    lines = lines.reset_index()
    lines["event"] = np.where(lines["invoice"].str.startswith("C"), "cancel", "purchase")
    lines["weight"] = lines["weight"].abs()
    return lines[EVENT_COLUMNS]


def at_least(events: pd.DataFrame, size: int) -> pd.DataFrame:
    return events[events.groupby("user_id")["item_id"].transform("size") >= size]


def online_retail(data_dir: Path) -> Dataset:
    """UCI Online Retail, novel-item protocol (online-retail/SOURCE.md): purchase lines with a CustomerID, with
    cancellations (InvoiceNo starting with C) and non-positive quantities removed; each (customer, item) kept at
    its first purchase (the first invoice in file order, which is time order), weight = that invoice's quantity of
    the item; then customers with at least 3 items (one pass: it drops whole customers only, so it is stable).
    user_id = CustomerID as an integer, item_id = StockCode, timestamp = InvoiceDate as ISO text (UK local time,
    minute precision, no zone), event = purchase. Item title = the most frequent non-empty Description of the
    StockCode over all rows of the log, whitespace stripped (ties: alphabetically first)."""
    raw = read_retail(data_dir)
    first = invoice_lines(raw[is_purchase(raw)]).drop_duplicates(["user_id", "item_id"])
    events = at_least(first, 3)
    return Dataset(events, retail_items(raw, events["item_id"]), protocol_of(online_retail))


def online_retail_repeat(data_dir: Path) -> Dataset:
    """UCI Online Retail, repeat-aware protocol (online-retail/SOURCE.md): purchase lines with a CustomerID, with
    cancellations and non-positive quantities removed, one purchase event per (customer, item, invoice), weight =
    the quantities of its lines summed; customers with at least 3 purchase events. The cancellations (InvoiceNo
    starting with C) of those customers on those items are added as event = cancel, one per (customer, item,
    invoice), weight = the absolute quantity; they do not count toward the 3. Rows in file order (time order);
    ids, timestamps and item titles as in online-retail."""
    raw = read_retail(data_dir)
    purchases = at_least(invoice_lines(raw[is_purchase(raw)]), 3)
    present = raw["user_id"].isin(purchases["user_id"]) & raw["item_id"].isin(purchases["item_id"])
    events = invoice_lines(raw[present & (is_purchase(raw) | raw["invoice"].str.startswith("C"))])
    return Dataset(events, retail_items(raw, events["item_id"]), protocol_of(online_retail_repeat))


def ml_100k(data_dir: Path) -> Dataset:
    """MovieLens 100K: all 100,000 ratings of u.data in file order, timestamp = Unix seconds, event = rating,
    and the rating (1-5) in a `rating` column (a judgement, not a quantity: `--min-rating` reads it). Items as
    bigrec's own MovieLens reader builds them: title, and description "YEAR. Genres: A, B"."""
    from bigrec_cli.data import read_movielens_100k

    source = data_dir / "ml-100k"
    require(source / "u.data")
    ratings, items = read_movielens_100k(source)
    events = ratings.assign(event="rating")[[*EVENT_COLUMNS[:-1], "rating"]]
    return Dataset(events, items[items["item_id"].isin(events["item_id"])], protocol_of(ml_100k))


def subsample(dataset: Dataset, fraction: float, seed: int = SEED) -> Dataset:
    """Keep a random share of the users (drawn from the sorted ids), all their events and only the items they touch."""
    users = np.sort(dataset.events["user_id"].unique().astype(str))
    size = round(fraction * len(users))
    chosen = np.random.default_rng(seed).choice(users, size=size, replace=False)
    events = dataset.events[dataset.events["user_id"].isin(chosen)]
    items = dataset.items[dataset.items["item_id"].isin(events["item_id"])]
    protocol = (
        f"{dataset.protocol}\n\nSubsample: {size} of the {len(users)} users (round({fraction:g} x users)), drawn "
        f"without replacement by numpy default_rng({seed}).choice from the user ids sorted as text; all their "
        "events, in the same order, and only the items they touch."
    )
    return Dataset(events, items, protocol)


BUILDERS: dict[str, Callable[[Path], Dataset]] = {
    "online-retail": online_retail,
    "online-retail-repeat": online_retail_repeat,
    "ml-100k": ml_100k,
}


def parse_name(name: str) -> tuple[str, float | None]:
    """Split `<base>-<percent>` into the base dataset and the fraction of users kept (None for the whole set)."""
    if name in BUILDERS:
        return name, None
    match = re.fullmatch(r"(.+)-(\d+(?:\.\d+)?)", name)
    if match and match[1] in BUILDERS and 0 < float(match[2]) < 100:
        return match[1], float(match[2]) / 100
    raise ValueError(f"unknown dataset {name!r}: use {', '.join(BUILDERS)}, <name>-<percent> or all")


def counts(events: pd.DataFrame) -> dict[str, Any]:
    return {
        "events": len(events),
        "users": events["user_id"].nunique(),
        "items": events["item_id"].nunique(),
        "events_by_type": {str(kind): int(size) for kind, size in events["event"].value_counts().items()},
    }


def write(name: str, dataset: Dataset, out: Path) -> dict[str, Any]:
    folder = out / name
    folder.mkdir(parents=True, exist_ok=True)
    dataset.events.to_csv(folder / "events.csv", index=False, lineterminator="\n")
    dataset.items.to_csv(folder / "items.csv", index=False, lineterminator="\n")
    meta = {"name": name, **counts(dataset.events), "catalog_items": len(dataset.items), "protocol": dataset.protocol}
    (folder / "meta.json").write_text(json.dumps(meta, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    return meta


def mismatch(name: str, meta: dict[str, Any]) -> str:
    """Describe how the counts differ from the published ones (purchases or ratings, users, items); empty if not."""
    if name not in EXPECTED:
        return ""
    main_events = meta["events_by_type"].get("rating" if name == "ml-100k" else "purchase", 0)
    found = (main_events, meta["users"], meta["items"])
    return "" if found == EXPECTED[name] else f"; MISMATCH: SOURCE.md gives {EXPECTED[name]}, found {found}"


def requested(names: list[str], fraction: float | None) -> list[str]:
    expanded = [name for given in names for name in (ALL if given == "all" else [given])]
    if fraction is not None:
        expanded += [f"{name}-{fraction * 100:g}" for name in expanded if name in BUILDERS]
    return list(dict.fromkeys(expanded))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("names", nargs="+", metavar="NAME", help=f"{', '.join(BUILDERS)}, <name>-<percent> or all")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help="output folder (default %(default)s)")
    parser.add_argument("--data-dir", type=Path, help="shared data folder (default $BIGREC_DATA_DIR or ../shared/data)")
    parser.add_argument("--subsample", type=float, metavar="FRACTION", help="also write <name>-<percent> variants")
    args = parser.parse_args(argv)
    if args.subsample is not None and not 0 < args.subsample < 1:
        parser.error("--subsample takes a fraction between 0 and 1")
    try:
        plan = [(name, *parse_name(name)) for name in requested(args.names, args.subsample)]
    except ValueError as error:
        parser.error(str(error))
    data_dir = args.data_dir or Path(os.environ.get("BIGREC_DATA_DIR") or DEFAULT_DATA_DIR)
    if not data_dir.is_dir():
        print(f"{data_dir} is absent: no benchmark data to convert", file=sys.stderr)
        return 2
    built: dict[str, Dataset] = {}
    failed = False
    for name, base, fraction in plan:
        start = time.perf_counter()
        try:
            if base not in built:
                built[base] = BUILDERS[base](data_dir.resolve())
        except DataMissing as error:
            print(error, file=sys.stderr)
            return 2
        meta = write(name, built[base] if fraction is None else subsample(built[base], fraction), args.out)
        problem = mismatch(name, meta)
        failed |= bool(problem)
        kinds = ", ".join(f"{size:,} {kind}" for kind, size in meta["events_by_type"].items())
        print(
            f"{name}: {meta['events']:,} events ({kinds}), {meta['users']:,} users, {meta['items']:,} items "
            f"-> {args.out / name} ({time.perf_counter() - start:.1f} s){problem}"
        )
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
