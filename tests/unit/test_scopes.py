"""How the default run splits the tests over its two workers (tests/conftest.py, ``scope_of``):
a module is one scope, or one per node kind where its tests run on the dev node and on anvil."""

from __future__ import annotations

from conftest import SCOPE_SECONDS, scope_of


def test_a_module_is_a_scope_and_its_node_kinds_are_two() -> None:
    assert scope_of("tests/integration/test_lens.py::test_lens_accounts_match_engine_views[q6]") == \
        "tests/integration/test_lens.py"
    assert scope_of("tests/unit/test_bot_fees.py::test_fixed_tip") == "tests/unit/test_bot_fees.py"
    assert scope_of("tests/e2e/test_bot_e2e.py::test_dry_run_decides_but_sends_nothing[devnode]") == \
        "tests/e2e/test_bot_e2e.py:devnode"
    assert scope_of("tests/e2e/test_bot_e2e.py::test_a_rewind_below_its_own_liquidations[anvil-anvil_reorg]") == \
        "tests/e2e/test_bot_e2e.py:anvil"
    assert scope_of("tests/e2e/test_bot_e2e.py::test_crash[devnode-single]") == "tests/e2e/test_bot_e2e.py:devnode"
    assert scope_of("tests/e2e/test_x.py::test_y[anvil_reorg]") == "tests/e2e/test_x.py"


def test_every_timed_scope_names_a_module_that_exists() -> None:
    from pathlib import Path

    root = Path(__file__).resolve().parents[2]
    assert [s for s in SCOPE_SECONDS if not (root / s.split(":")[0]).is_file()] == []
