"""The committed gas snapshot must match the contracts: a gas change shows up as a diff in review.

Regenerate with `python bench/gas_snapshot.py` and commit tests/__snapshots__/gas.txt.
"""

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_gas_snapshot_is_up_to_date() -> None:
    result = subprocess.run(
        [sys.executable, str(ROOT / "bench" / "gas_snapshot.py"), "--check"],
        capture_output=True, text=True, timeout=600,
    )
    assert result.returncode == 0, result.stderr + result.stdout


def test_gas_targets_are_met() -> None:
    """Issue targets: liquidate (2 positions + 2 collaterals) <= 150,000; trade <= 120,000;
    liquidate_many of 16 such accounts <= 90,000 per order (issue 11)."""
    sys.path.insert(0, str(ROOT / "bench"))
    import gas_snapshot

    lines = (ROOT / "tests" / "__snapshots__" / "gas.txt").read_text().splitlines()
    gas = {line.rsplit(None, 1)[0].strip(): int(line.rsplit(None, 1)[1]) for line in lines if line.strip()}
    for label, ceiling in gas_snapshot.TARGETS.items():
        assert gas[label] <= ceiling, f"{label}: {gas[label]} > {ceiling}"
