"""Item-vector files: `.npz` archives of plain arrays, written atomically and read without pickle."""

from __future__ import annotations

import zipfile
from pathlib import Path

import numpy as np

from bigrec_cli.errors import ArtifactError
from bigrec_cli.project import atomic_file


def save_arrays(path: Path, **arrays: np.ndarray) -> None:
    """Write named arrays to an `.npz` file atomically."""
    with atomic_file(path) as temporary, open(temporary, "wb") as stream:
        np.savez(stream, **arrays)


def load_arrays(path: Path) -> dict[str, np.ndarray]:
    """Read every array of an `.npz` file, refusing pickled objects."""
    try:
        with np.load(path, allow_pickle=False) as archive:
            return {name: archive[name] for name in archive.files}
    except FileNotFoundError:
        raise ArtifactError(f"{path} is missing", hint="rerun the step that writes it") from None
    except (ValueError, OSError, EOFError, KeyError, zipfile.BadZipFile) as error:
        raise ArtifactError(f"{path} is damaged: {error}", hint="rerun the step that writes it") from None


def save_item_vectors(path: Path, item_ids: list[str], vectors: np.ndarray) -> None:
    """Write item ids and their vectors, row for row."""
    save_arrays(path, item_ids=np.array(item_ids, dtype=str), vectors=vectors.astype("float32"))


def load_item_vectors(path: Path) -> tuple[list[str], np.ndarray]:
    """Read item ids and their vectors."""
    arrays = load_arrays(path)
    return arrays["item_ids"].tolist(), arrays["vectors"]
