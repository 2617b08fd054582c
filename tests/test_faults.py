"""Faults of the machine, not of the input: a read-only project, a disk that fills up during `train`.

Each runs the real CLI in a subprocess under a real operating-system limit: a read-only bind mount (root, in its
own mount namespace) or file permissions (other users), and RLIMIT_FSIZE for a write that cannot complete.
"""

from __future__ import annotations

import json
import os
import resource
import shlex
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from bigrec_cli.project import ProjectDir

from .conftest import SAMPLE

READS = (["recommend", "--user", "u0007", "--json"], ["status"], ["evaluate", "--json"], ["runs", "list"])
WRITES = (["ingest-feedback", str(SAMPLE / "feedback_demo.csv")], ["train", "--epochs", "1"])


def bigrec_command(project: Path, args: list[str]) -> list[str]:
    return [sys.executable, "-m", "bigrec_cli", *args, "--project-dir", str(project)]


def run_read_only(project: Path, commands: list[list[str]]) -> list[subprocess.CompletedProcess]:
    """Run each command with `project` read-only: a read-only bind mount as root, permissions otherwise."""
    if os.geteuid() != 0:
        for folder, _, files in os.walk(project):
            for name in [*files, "."]:
                os.chmod(Path(folder) / name, 0o555 if name == "." else 0o444)
        try:
            return [subprocess.run(bigrec_command(project, args), capture_output=True, text=True) for args in commands]
        finally:
            for folder, _, _ in os.walk(project):
                os.chmod(folder, 0o755)
    if shutil.which("unshare") is None:
        pytest.skip("unshare is needed to make a read-only mount as root")
    quoted = shlex.quote(str(project))
    script = [f"mount --bind {quoted} {quoted} && mount -o remount,ro,bind {quoted} || exit 99"]
    for args in commands:
        script.append(f"{shlex.join(bigrec_command(project, args))}; echo \"rc=$?\" >&2; echo '@@' >&2; echo '@@'")
    completed = subprocess.run(["unshare", "-m", "sh", "-c", "\n".join(script)], capture_output=True, text=True)
    if completed.returncode == 99:
        pytest.skip(f"cannot make a read-only mount here: {completed.stderr.strip()}")
    outputs, errors = completed.stdout.split("@@\n")[:-1], completed.stderr.split("@@\n")[:-1]
    results = []
    for args, stdout, stderr in zip(commands, outputs, errors, strict=True):
        body, _, code = stderr.rstrip("\n").rpartition("rc=")
        results.append(subprocess.CompletedProcess(args, int(code), stdout, body))
    return results


def test_read_only_project_answers_reads_and_refuses_writes_in_one_line(trained_copy):
    project = ProjectDir(trained_copy)
    subprocess.run(bigrec_command(trained_copy, list(WRITES[0])), check=True, capture_output=True)
    current = project.current_run_id()
    runs_before = sorted(path.name for path in project.runs_dir.iterdir())
    results = run_read_only(trained_copy, [*READS, *WRITES])
    for result in results[: len(READS)]:
        assert result.returncode == 0, (result.args, result.stderr)
        assert "Traceback" not in result.stderr
    recommended = json.loads(results[0].stdout)
    assert len(recommended["items"]) == 10
    assert "not recorded" in results[2].stderr, "evaluate says its record could not be kept"
    for result in results[len(READS) :]:
        assert result.returncode == 1, (result.args, result.stderr)
        assert "Traceback" not in result.stderr
        lines = [line for line in result.stderr.splitlines() if line.strip()]
        assert len(lines) == 1 and lines[0].startswith("error:") and "fix:" in lines[0], result.stderr
    assert project.current_run_id() == current
    assert sorted(path.name for path in project.runs_dir.iterdir()) == runs_before


def _file_size_limit(limit: int):
    def apply() -> None:
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # a write past the limit fails with EFBIG instead of killing
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))

    return apply


def test_a_write_that_cannot_complete_during_train_is_one_line_and_promotes_nothing(trained_copy):
    project = ProjectDir(trained_copy)
    current = project.current_run_id()
    runs_before = sorted(path.name for path in project.runs_dir.iterdir())
    limit = 64 * 1024  # smaller than the run's scorer.npz, larger than its JSON files
    assert (project.runs_dir / current / "scorer.npz").stat().st_size > limit
    result = subprocess.run(
        bigrec_command(trained_copy, ["train", "--epochs", "1"]),
        capture_output=True,
        text=True,
        preexec_fn=_file_size_limit(limit),
    )
    assert result.returncode == 1, result.stderr
    assert "Traceback" not in result.stderr
    lines = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(lines) == 1 and "File too large" in lines[0] and "fix:" in lines[0], result.stderr
    assert project.current_run_id() == current
    assert sorted(path.name for path in project.runs_dir.iterdir()) == runs_before, "no half-written run is left"


def test_train_on_a_nearly_full_disk_refuses_before_training(trained_copy, tmp_path):
    """A real small file system (tmpfs in a private mount namespace) holding the project and 64 KiB to spare."""
    if os.geteuid() != 0 or shutil.which("unshare") is None:
        pytest.skip("mounting a small tmpfs needs root and unshare")
    used = sum(path.stat().st_size for path in trained_copy.rglob("*") if path.is_file())
    mount = tmp_path / "small-disk"
    mount.mkdir()
    size_kib = used // 1024 + 256
    inner = mount / "project"
    script = (
        f"mount -t tmpfs -o size={size_kib}k tmpfs {shlex.quote(str(mount))} || exit 99\n"
        f"cp -r {shlex.quote(str(trained_copy))} {shlex.quote(str(inner))} || exit 98\n"
        f"{shlex.join(bigrec_command(inner, ['train', '--epochs', '1']))}; code=$?\n"
        f"ls -a {shlex.quote(str(inner / 'runs'))}; exit $code"
    )
    result = subprocess.run(["unshare", "-m", "sh", "-c", script], capture_output=True, text=True)
    if result.returncode in (98, 99):
        pytest.skip(f"cannot mount a small tmpfs here: {result.stderr.strip()}")
    assert result.returncode == 1, result.stderr
    assert "Traceback" not in result.stderr
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and "MiB free on the disk" in lines[0] and "runs prune" in lines[0], result.stderr
    assert ".incomplete" not in result.stdout
