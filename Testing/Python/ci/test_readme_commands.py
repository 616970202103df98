"""CI runs the README's quick-start commands verbatim; the demo's default output folders are ignored by git."""

import importlib.util
from pathlib import Path

ROOT = Path(__file__).resolve().parents[3]


def _module():
    spec = importlib.util.spec_from_file_location("readme_commands", ROOT / ".ci" / "readme_commands.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_ci_runs_both_readme_commands_verbatim():
    commands = _module().quick_start_commands((ROOT / "README.md").read_text())
    assert "registration-suite demo --output-dir demo-output" in commands[0]
    assert commands[1].endswith("python -m pytest -q")
    run = (ROOT / ".ci" / "run").read_text()
    assert "readme_commands.py README.md" in run and 'bash -euo pipefail -c "$cmd"' in run


def test_demo_output_folders_ignored():
    ignored = (ROOT / ".gitignore").read_text().splitlines()
    assert "demo-output/" in ignored and "registration-suite-demo/" in ignored
