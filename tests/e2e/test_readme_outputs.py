"""The README's outputs are real: ``scripts/readme_outputs.py --check`` reruns every block that is
not marked volatile (a dev node, deploy, seed, a price shock, accounts, health, a competition) and
finds each exactly as the README shows it; and the script's parser reads the README's commands."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "scripts"))

import readme_outputs  # noqa: E402


def test_every_readme_output_block_has_commands_and_the_tour_is_compared() -> None:
    blocks = readme_outputs.parse(readme_outputs.README.read_text())
    assert all(b.commands for b in blocks)
    compared = {b.name for b in blocks if not b.volatile}
    assert {"node", "deploy", "accounts", "competition"} <= compared
    assert [b.commands[0] for b in blocks if b.name == "node"] == ["xmargin node --export-keys dev-keys"]


@pytest.mark.slow   # about 30-50 s: a node, four commands and a competition, each its own process
def test_the_readme_shows_what_the_commands_print() -> None:
    proc = subprocess.run([sys.executable, str(ROOT / "scripts" / "readme_outputs.py"), "--check"],
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr
