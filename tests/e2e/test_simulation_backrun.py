"""The competition simulator's ``backrun`` strategy (issue 12): an agent that sees the shock's price
updates pending in the pool and liquidates in the update's own block, with the update's tip.

Off-chain runs on the exact model (about a second each). Oracles independent of the simulator's own
bookkeeping: each liquidated account's health recomputed with :func:`protocol_model.health.health`
on the seeded state before and after the shocked prices (no wrongful liquidation: healthy before
the update, liquidatable after it), and the report's gas figures summed from its own per-bot fields.
On chain the backrun agent is the live bot's backrunner (:mod:`bot.backrun`); one small on-chain
run checks that the update's block holds the updates then its liquidations, and that the off-chain
mode reproduces it.
"""

from __future__ import annotations

import copy
import json
from collections.abc import Iterator
from typing import Any

import pytest
from click.testing import CliRunner
from web3 import Web3

from cli import cli
from protocol_model.actions import set_answer
from protocol_model.deploy import compile_contracts
from protocol_model.errors import ConfigError
from protocol_model.health import health
from simulator.competition.agents import DEFAULT_ORACLE_TIP_WEI, Scenario, SimSettings, parse_strategies
from simulator.competition.offchain import Initial, run_offchain, shocked_answers
from simulator.competition.onchain import OnchainSimulation
from simulator.competition.calibrate import errors
from simulator.competition.offchain import GasTable
from test_simulation import GAS_TOLERANCE_BUILTIN, GAS_TOLERANCE_MEASURED, assert_close, split

WAD = 10**18
GWEI = 10**9
PCT = 10**16
SHOCK = (("ETH", -12 * PCT), ("BTC", -12 * PCT))
SCENARIO = Scenario(12, 26, SHOCK, 5)
ONCHAIN = "fixed:20gwei,backrun"


@pytest.fixture(scope="module")
def initial() -> Initial:
    return Initial.build(SCENARIO.accounts, SCENARIO.seed)


def healthy_then_liquidatable(initial: Initial, scenario: Scenario) -> tuple[set[str], set[str]]:
    """(accounts liquidatable before the update, accounts liquidatable right after it), from the
    seeded state and the shocked answers, independently of the simulator's chain."""
    before = {a for a, acc in initial.state.accounts.items() if health(initial.state, acc).maint_health < 0}
    after_state = copy.deepcopy(initial.state)
    for feed, answer in shocked_answers(after_state, initial.feeds, scenario).items():
        set_answer(after_state, feed, answer, after_state.timestamp + 1)
    after = {a for a, acc in after_state.accounts.items() if health(after_state, acc).maint_health < 0}
    return before, after


# ---------------------------------------------------------------------- definitions


def test_backrun_parses_with_the_oracle_tip_or_its_own_and_refuses_malformed_items() -> None:
    agents = parse_strategies("backrun, backrun:2gwei ,fixed", 4)
    assert [a.strategy for a in agents] == ["backrun", "backrun:2gwei", "fixed:1gwei", "backrun"]
    assert [a.backruns for a in agents] == [True, True, False, True]
    assert agents[0].backrun_tip(7 * GWEI) == 7 * GWEI       # the oracle's tip, whatever it is
    assert agents[1].backrun_tip(7 * GWEI) == 2 * GWEI       # its own
    # after the update it is a fixed-tip bot: its own tip, or the default
    assert agents[0].bot_config(SimSettings()).fixed_tip_wei == GWEI
    assert agents[1].bot_config(SimSettings()).fixed_tip_wei == 2 * GWEI
    for bad, words in (("backrun@1", "latency"), ("backrun:soon", "not a whole amount of wei"),
                       ("backrun:-1gwei", "wei"), ("backrunner", "unknown strategy")):
        with pytest.raises(ConfigError, match=words) as exc:
            parse_strategies(bad, 2)
        assert "\n" not in str(exc.value)
    with pytest.raises(ConfigError, match="oracle-tip"):
        Scenario(12, 26, SHOCK, 5, oracle_tip_wei=-1)


# ---------------------------------------------------------------------- off-chain


def test_a_backrunner_wins_the_liquidations_in_the_update_block_and_the_share_is_reported(initial: Initial) -> None:
    plain = run_offchain(SCENARIO, parse_strategies("fixed:20gwei,fixed:5gwei", 2), initial=initial)
    report = run_offchain(SCENARIO, parse_strategies("fixed:20gwei,backrun", 2), initial=initial)
    before, after = healthy_then_liquidatable(initial, SCENARIO)
    assert not before and len(after) >= 4
    # Without a backrunner nothing is liquidated in the update's block: every bot learns of it there.
    assert plain.same_block == 0 and plain.same_block_share_wad == 0
    assert min(x.block for x in plain.liquidations) == 1
    fixed, backrun = report.bots
    same = [x for x in report.liquidations if x.block == 0]
    # The backrunner, sending after its rival in agent order but a block earlier, wins the update's block.
    assert same and all(x.bot == "bot2" for x in same)
    assert {x.account for x in same} == after                  # every account the update made liquidatable
    assert backrun.same_block == len(same) and fixed.same_block == 0
    assert report.same_block == len(same)
    assert report.same_block_share_wad == len(same) * WAD // len(report.liquidations)
    # No wrongful liquidation and nothing landed before the update: every backrun succeeded.
    assert {x.account for x in report.liquidations} <= after
    assert backrun.backruns == len(same) and backrun.reverted == 0
    assert report.backruns_before_update == report.backruns_before_update_failed == 0
    assert report.gas_backruns_failed_wei == 0
    # The backruns paid the oracle's tip: the block producer earned exactly that per gas.
    assert backrun.tips_wei == DEFAULT_ORACLE_TIP_WEI * backrun.gas_used
    # The plain bot, which won these accounts without the backrunner, no longer wins them.
    assert fixed.won < plain.bots[0].won + plain.bots[1].won


def test_a_backrun_bidding_above_the_oracle_lands_before_the_update_reverts_and_its_gas_is_reported(
        initial: Initial) -> None:
    """backrun:2gwei against an update paying 1 gwei: fee ordering puts its liquidations before the
    update, where the accounts are still healthy: they revert, and the report counts them and their
    gas; the backrunner matching the oracle's tip, after the update, wins them."""
    report = run_offchain(SCENARIO, parse_strategies("backrun:2gwei,backrun", 2), initial=initial)
    early, matched = report.bots
    assert early.backruns > 0 and early.backruns_before_update == early.backruns
    assert early.backruns_before_update_failed == early.backruns == early.reverted
    assert early.gas_backruns_failed_wei == early.gas_reverted_wei > 0
    assert early.won == early.same_block == 0
    assert matched.backruns_before_update == 0 and matched.same_block == matched.backruns > 0
    assert report.gas_backruns_failed_wei == early.gas_backruns_failed_wei
    assert report.backruns == early.backruns + matched.backruns
    # the update's tip set to 2 gwei: both now land after it; the first in agent order wins
    even = run_offchain(Scenario(12, 26, SHOCK, 5, oracle_tip_wei=2 * GWEI),
                        parse_strategies("backrun:2gwei,backrun", 2), initial=initial)
    assert even.backruns_before_update == 0 and even.bots[0].same_block > 0


# ---------------------------------------------------------------------- on-chain and the command line


@pytest.fixture(scope="module")
def onchain() -> Iterator[OnchainSimulation]:
    compile_contracts()
    with OnchainSimulation(SCENARIO, parse_strategies(ONCHAIN, 2)) as sim:
        sim.report = sim.run()      # type: ignore[attr-defined]
        yield sim


def test_onchain_the_bots_backrunner_lands_right_after_the_update_and_offchain_agrees(onchain: Any,
                                                                                       initial: Initial) -> None:
    """The on-chain backrun agent is the live bot's backrunner (bot/backrun.py) reading the node's
    pending-transaction filter; the block of the update holds the updates, then its liquidations;
    the off-chain run of the same scenario gives the same report (gas within the table's error)."""
    report, w3 = onchain.report, onchain.w3
    assert report.model_mismatches == []
    S = onchain.shock_block
    txs = w3.eth.get_block(S, full_transactions=True)["transactions"]
    feeds = list(onchain.dep.feeds.values())
    assert [Web3.to_checksum_address(t["to"]) for t in txs[:len(feeds)]] == feeds
    backrunner = report.bots[1]
    rest = txs[len(feeds):]
    assert rest and {t["from"] for t in rest} == {backrunner.address}
    assert {int(t["maxPriorityFeePerGas"]) for t in rest} == {DEFAULT_ORACLE_TIP_WEI}
    assert all(int(w3.eth.get_transaction_receipt(t["hash"])["status"]) == 1 for t in rest)
    assert backrunner.same_block == backrunner.backruns == len(rest) and report.backruns_before_update == 0
    on_exact, on_gas = split(report)
    for table, tolerance in ((None, GAS_TOLERANCE_BUILTIN), (GasTable(report.gas_table), GAS_TOLERANCE_MEASURED)):
        off = run_offchain(SCENARIO, parse_strategies(ONCHAIN, 2), initial=initial, gas_table=table)
        off_exact, off_gas = split(off)
        assert off_exact == on_exact
        assert_close(off_gas, on_gas, tolerance)
    # Each transaction's gas, those of the update's block included: there the engine skips the
    # staleness check of the prices published in the block (FRESH_READ_GAS per read), and the
    # built-in table, measured on older prices, is corrected by as much.
    in_update_block = [s for s in onchain.gas_samples if s.case.startswith(f"block {S} ")]
    assert len(in_update_block) == len(rest)
    for e in errors(onchain.gas_samples):
        assert abs(e.relative) <= GAS_TOLERANCE_BUILTIN, (e.sample, e.predicted)


def test_onchain_mode_refuses_a_backrun_at_its_own_tip_in_one_line_before_starting_a_node() -> None:
    with pytest.raises(ConfigError, match="off-chain only") as exc:
        OnchainSimulation(SCENARIO, parse_strategies("fixed,backrun:2gwei", 2))
    assert "\n" not in str(exc.value)
    result = CliRunner().invoke(cli, ["simulate", "competition", "--mode", "onchain", "--strategy", "backrun:2gwei",
                                      "--accounts", "5", "--shock", "ETH=-12%"])
    assert result.exit_code == 2, result.output
    assert "off-chain only" in result.output and "Traceback" not in result.output


def _cli(*args: str) -> Any:
    return CliRunner().invoke(cli, ["simulate", "competition", "--mode", "offchain", "--accounts", "12",
                                    "--shock", "ETH=-12%,BTC=-12%", "--seed", "26", "--blocks", "5", *args])


def test_cli_shows_the_same_block_column_and_the_backruns_before_the_update() -> None:
    human = _cli("--bots", "2", "--strategy", "backrun:2gwei,backrun")
    assert human.exit_code == 0, human.output
    assert "same block" in human.stdout and "backrun:2gwei" in human.stdout
    assert "in the same block as the price update" in human.stdout and "landed before the update" in human.stdout
    doc = json.loads(_cli("--bots", "2", "--strategy", "fixed:20gwei,backrun", "--json").stdout)
    assert doc["same_block"] == doc["bots"][1]["same_block"] > 0 and doc["bots"][0]["same_block"] == 0
    assert int(doc["same_block_share_wad"]) == doc["same_block"] * WAD // doc["liquidation_count"]
    expected = run_offchain(SCENARIO, parse_strategies("fixed:20gwei,backrun", 2)).comparable()
    assert {k: v for k, v in doc.items() if k in expected} == expected
    # the oracle's tip is an option; a bad one is one line and exit 2
    zero = json.loads(_cli("--bots", "1", "--strategy", "backrun", "--oracle-tip", "0", "--json").stdout)
    assert zero == json.loads(json.dumps(run_offchain(Scenario(12, 26, SHOCK, 5, oracle_tip_wei=0),
                                                      parse_strategies("backrun", 1)).to_json())) | {
        "elapsed_s": zero["elapsed_s"]}
    assert zero != json.loads(_cli("--bots", "1", "--strategy", "backrun", "--json").stdout) | {
        "elapsed_s": zero["elapsed_s"]}
    bad = _cli("--strategy", "backrun", "--oracle-tip", "lots")
    assert bad.exit_code == 2 and "--oracle-tip" in bad.output and "Traceback" not in bad.output
