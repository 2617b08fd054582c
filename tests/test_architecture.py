import ast
import subprocess
import sys
from pathlib import Path

from tests.conftest import REPO

PACKAGE = REPO / "bigrec_cli"


def imported_modules(path: Path) -> set[str]:
    names = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            names.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module.split(".")[0])
    return names


def test_only_backend_imports_tensorflow_and_only_console_imports_rich():
    for path in PACKAGE.glob("*.py"):
        names = imported_modules(path)
        if path.name != "backend.py":
            assert not names & {"tensorflow", "tf_keras", "bert4keras", "keras"}, path.name
        if path.name != "console.py":
            assert "rich" not in names, path.name
        assert "pickle" not in names, path.name


def test_help_does_not_import_tensorflow():
    code = (
        "import sys\n"
        "from typer.testing import CliRunner\n"
        "from bigrec_cli.cli import app\n"
        "result = CliRunner().invoke(app, ['--help'])\n"
        "assert result.exit_code == 0 and 'preprocess' in result.stdout\n"
        "assert 'tensorflow' not in sys.modules, 'tensorflow was imported'\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, cwd=REPO)


def test_the_driver_of_ray_workers_does_not_import_tensorflow():
    """`train --workers N` and `extract --workers N` orchestrate from a process that needs no TensorFlow."""
    code = (
        "import sys\nimport bigrec_cli.raycluster\nassert 'tensorflow' not in sys.modules, 'tensorflow was imported'\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, cwd=REPO)
