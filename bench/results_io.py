"""What every benchmark does with its result: the protocol from its docstring, the JSON under bench/results/."""

from __future__ import annotations

import json
from pathlib import Path


def protocol(docstring: str) -> str:
    """The docstring after its title line: the protocol written into the result."""
    return docstring.strip().split("\n", 2)[2]


def write_result(path: Path, result: dict, echo: bool = True) -> None:
    """Write the result as JSON and, with `echo`, print it without its protocol."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(result, indent=2) + "\n")
    if echo:
        print(json.dumps({key: value for key, value in result.items() if key != "protocol"}, indent=2))
