"""Nothing in the repository points at one machine: no symbolic links, no absolute paths to someone's folders."""

import re
import subprocess

from tests.conftest import REPO

MACHINE_PATH = re.compile(r"(?<![\w.])/(?:home|root|Users|work|tmp|mnt|opt|scratch)/[\w.-]+")


def tracked_files():
    listing = subprocess.run(["git", "ls-files", "-s"], cwd=REPO, capture_output=True, text=True, check=True).stdout
    for line in listing.splitlines():
        mode, _, _, path = line.split(maxsplit=3)
        yield mode, path


def test_no_symbolic_links_are_tracked():
    assert [path for mode, path in tracked_files() if mode == "120000"] == []


def test_no_tracked_text_names_a_machine_path():
    offenders = []
    for _mode, path in tracked_files():
        data = (REPO / path).read_bytes()
        if b"\0" in data[:8192]:
            continue
        for number, line in enumerate(data.decode("utf-8", "replace").splitlines(), start=1):
            if MACHINE_PATH.search(line):
                offenders.append(f"{path}:{number}: {line.strip()[:100]}")
    assert offenders == []
