"""What every benchmark does with its result: the protocol from its docstring, the JSON under bench/results/."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path


def commit() -> str:
    """The checked-out commit the benchmark measures (short hash; `+changes` when the tree has uncommitted edits)."""
    root = Path(__file__).resolve().parent.parent

    def git(*args: str) -> str:
        return subprocess.run(["git", *args], cwd=root, capture_output=True, text=True).stdout.strip()

    head = git("rev-parse", "--short", "HEAD") or "unknown"
    return head + ("+changes" if git("status", "--porcelain", "--untracked-files=no", "--", "bigrec_cli") else "")


def protocol(docstring: str) -> str:
    """The docstring after its title line: the protocol written into the result."""
    return docstring.strip().split("\n", 2)[2]


def write_result(path: Path, result: dict, echo: bool = True) -> None:
    """Write the result as JSON and, with `echo`, print it without its protocol."""
    path.parent.mkdir(parents=True, exist_ok=True)
    result = {"commit": result.get("commit") or commit(), **result}
    path.write_text(json.dumps(result, indent=2) + "\n")
    if echo:
        print(json.dumps({key: value for key, value in result.items() if key != "protocol"}, indent=2))
