"""The liquidator competition simulator (``xmargin simulate competition``), end to end.

On-chain runs start their own in-process dev node with a one-hour block time, deploy, seed a small
population and race real :class:`~bot.liquidator.Liquidator` instances, mining one block per round.
Oracles independent of the simulator's own bookkeeping: the engine's ``Liquidation`` events read
with ``eth_getLogs``, the bots' quote token and ETH balances, the block producer's ETH balance, and
the engine's state through the Lens.

Two small on-chain scenarios run once per module (and the first once more, for reproducibility):

* MIXED: three bots with fixed and profit-share tips, each winning some liquidations;
* REBID: a reactive re-bidder against a fixed and a profit-share bot; it outbids both.

The off-chain mode's built-in gas table (:mod:`simulator.competition.gas_table`) is held to every transaction of
both runs; a slow test measures it again (:mod:`simulator.competition.calibrate`) and compares.
"""

from __future__ import annotations

import json
from collections import Counter, defaultdict
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner
from web3 import Web3

from cli import cli
from simulator.competition.agents import (
    AGENT_FUNDS_WEI,
    BASE_FEE_FLOOR_WEI,
    DEFAULT_ORACLE_TIP_WEI,
    PoolEntry,
    Scenario,
    SimSettings,
    parse_share,
    parse_strategies,
    parse_wei,
    rebid_fees,
    ticks_at,
)
from simulator.competition import gas_table
from simulator.competition.calibrate import BRANCHES, MAX_ERROR, builtin, contracts_hash, errors, fit, measure
from simulator.competition.offchain import (
    DEFAULT_PATH_GAS,
    DEFAULT_REVERT_GAS,
    GasKey,
    GasTable,
    Initial,
    build_initial_state,
    exec_gas_before_refund,
    run_offchain,
    sweep,
    write_gas,
)
from simulator.competition.onchain import OnchainSimulation
from simulator.competition.report import CompetitionReport
from bot.txs import bump
from protocol_model.deploy import compile_contracts
from protocol_model.errors import ConfigError
from protocol_model.loader import load_state
from protocol_model.logs import decode_logs, engine_topic

WAD = 10**18
GWEI = 10**9
PCT = 10**16
SHOCK = (("ETH", -12 * PCT), ("BTC", -12 * PCT))
MIXED = (Scenario(12, 26, SHOCK, 5), "fixed:20gwei,profit-share:10%,fixed:5gwei")
REBID = (Scenario(12, 17, SHOCK, 4), "fixed:2gwei,profit-share:50%,rebid")
# A deep crash: bankrupt accounts closed (their keepers paid by the insurance fund) and one left
# with nothing but negative cash, settled in the liquidation (automatic settlement).
CRASH = (Scenario(12, 26, (("ETH", -25 * PCT), ("BTC", -25 * PCT)), 5), "fixed:20gwei,profit-share:10%,fixed:5gwei")
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
# Off-chain gas matches on-chain gas to a fraction of a percent (the engine's rounding helpers branch
# on their operands). With the run's measured table: the first transaction of each key sets it.
# With the built-in table: every transaction within MAX_ERROR (0.15 %; see simulator/competition/calibrate.py:
# the calibration's largest error is 0.103 %), so every sum of gas is too.
GAS_TOLERANCE_MEASURED = 0.005
GAS_TOLERANCE_BUILTIN = MAX_ERROR
GAS_FIELDS = ("gas_success_wei", "gas_reverted_wei", "tips_wei", "gas_used", "net_profit_usd_wad", "gas_wei")
RUN_GAS_FIELDS = ("gas_wei", "tips_wei", "tips_usd_wad", "tip_share", "tip_share_wad")


def bots(strategy: str, k: int = 3) -> list[Any]:
    return parse_strategies(strategy, k)


class Run:
    """An on-chain run whose chain stays up for the module's oracles."""

    def __init__(self, sim: OnchainSimulation, report: CompetitionReport) -> None:
        self.sim = sim
        self.report = report

    @property
    def w3(self) -> Web3:
        assert self.sim.w3 is not None
        return self.sim.w3

    @property
    def shock(self) -> int:
        assert self.sim.shock_block is not None
        return self.sim.shock_block

    @property
    def end(self) -> int:
        assert self.sim.end_block is not None
        return self.sim.end_block


def _start(case: tuple[Scenario, str]) -> Iterator[Run]:
    compile_contracts()
    scenario, strategy = case
    with OnchainSimulation(scenario, bots(strategy)) as sim:
        yield Run(sim, sim.run())


@pytest.fixture(scope="module")
def mixed() -> Iterator[Run]:
    yield from _start(MIXED)


@pytest.fixture(scope="module")
def rebid() -> Iterator[Run]:
    yield from _start(REBID)


@pytest.fixture(scope="module")
def crash() -> Iterator[Run]:
    yield from _start(CRASH)


def split(report: CompetitionReport) -> tuple[dict[str, Any], dict[str, Any]]:
    """(everything but gas, the gas figures) of a report's comparable form."""
    exact = report.comparable()
    gas: dict[str, Any] = {k: exact.pop(k) for k in RUN_GAS_FIELDS}
    for b in exact["bots"]:
        gas[b["name"]] = {k: b.pop(k) for k in GAS_FIELDS}
    return exact, gas


def assert_close(a: Any, b: Any, rel: float, what: str = "") -> None:
    if isinstance(a, dict):
        assert a.keys() == b.keys(), what
        for k in a:
            assert_close(a[k], b[k], rel, f"{what}.{k}")
        return
    x, y = float(a), float(b)
    assert abs(x - y) <= rel * max(abs(x), abs(y)) + 1e-9, f"{what}: {a} vs {b}"


# ---------------------------------------------------------------------- definitions


def test_strategies_cycle_over_the_bots_with_parameters_and_latency() -> None:
    agents = parse_strategies("fixed:2gwei, profit-share:50% ,rebid@2", 5)
    assert [a.name for a in agents] == ["bot1", "bot2", "bot3", "bot4", "bot5"]
    assert [a.strategy for a in agents] == ["fixed:2gwei", "profit-share:50%", "rebid:1gwei@2", "fixed:2gwei",
                                            "profit-share:50%"]
    assert agents[0].tip_wei == 2 * GWEI and agents[1].share_wad == WAD // 2 and agents[2].latency == 2
    assert len({a.address for a in agents}) == 5
    cfg = agents[1].bot_config(SimSettings())
    assert cfg.gas_strategy == "profit_share" and cfg.profit_share_wad == WAD // 2
    assert parse_wei("1.5gwei") == 1_500_000_000 and parse_share("0.25") == WAD // 4
    for bad in ("bogus", "fixed:abc", "profit-share:150%", "rebid@-1", "fixed:0.5wei", ""):
        with pytest.raises(ConfigError):
            parse_strategies(bad, 2)


def test_latency_means_ticking_every_latency_plus_one_blocks_from_the_shock() -> None:
    S = 100
    assert [h for h in range(S - 2, S + 8) if ticks_at(0, h, S)] == list(range(S, S + 8))
    assert [h for h in range(S - 2, S + 8) if ticks_at(1, h, S)] == [S + 1, S + 3, S + 5, S + 7]
    assert [h for h in range(S - 2, S + 9) if ticks_at(2, h, S)] == [S + 2, S + 5, S + 8]


def test_rebid_bumps_at_least_12_5_percent_over_the_best_rival_within_the_profit_limit() -> None:
    settings = SimSettings()
    own = PoolEntry("0xA", 0, "0xT", 0, GWEI, 2 * 7 + GWEI)
    rival = PoolEntry("0xB", 3, "0xT", 0, 8 * GWEI, 14 + 8 * GWEI)
    other_market = PoolEntry("0xC", 1, "0xT", 1, 90 * GWEI, 14 + 90 * GWEI)
    profit = 100 * GWEI * settings.gas_estimate
    fees = rebid_fees(own, [rival, other_market], next_base_fee_wei=7, head_base_fee_wei=7,
                      expected_profit_wei=profit, settings=settings)
    assert fees is not None and fees.max_priority_fee_per_gas == bump(8 * GWEI) == 9 * GWEI
    assert fees.max_fee_per_gas >= fees.max_priority_fee_per_gas + 7
    # not outbid: no answer; outbid beyond the profit limit: no answer
    assert rebid_fees(own, [other_market], next_base_fee_wei=7, head_base_fee_wei=7, expected_profit_wei=profit,
                      settings=settings) is None
    assert rebid_fees(own, [rival], next_base_fee_wei=7, head_base_fee_wei=7,
                      expected_profit_wei=8 * GWEI * settings.gas_estimate, settings=settings) is None


# ---------------------------------------------------------------------- off-chain


def test_offchain_same_seed_gives_the_same_report_and_another_seed_another() -> None:
    scenario, strategy = MIXED
    first = run_offchain(scenario, bots(strategy))
    again = run_offchain(scenario, bots(strategy))
    assert first.comparable() == again.comparable()
    assert len(first.liquidations) >= 4 and len({x.bot for x in first.liquidations}) >= 2
    other = run_offchain(Scenario(12, 27, SHOCK, 5), bots(strategy))
    assert other.comparable() != first.comparable()


def test_offchain_runs_thousands_of_rounds() -> None:
    """A long run completes and liquidates; how fast it is, is shown by bench/simulate_bench.py."""
    scenario = Scenario(60, 3, (("ETH", -15 * PCT), ("BTC", -15 * PCT)), 2_000)
    report = run_offchain(scenario, bots("fixed:2gwei,profit-share:50%,rebid,fixed:1gwei@2", 4))
    assert len(report.liquidations) >= 5


@pytest.mark.parametrize("seed", [3, 7])
def test_with_profit_share_bidding_the_tip_share_grows_with_the_number_of_competitors(seed: int) -> None:
    """Rent dissipation: every extra profit-share bidder adds a reverted transaction that pays its
    tip too, so the block producer's share of the rewards grows from 1 to 8 competitors."""
    scenario = Scenario(30, seed, (("ETH", -15 * PCT), ("BTC", -15 * PCT)), 4)
    for strategy in ("profit-share:50%", "profit-share:30%,profit-share:50%,profit-share:70%"):
        points = sweep(scenario, strategy, range(1, 9))
        shares = [p.tip_share_wad for p in points]
        assert [p.bots for p in points] == list(range(1, 9))
        assert all(p.liquidations == points[0].liquidations > 0 for p in points)
        assert all(b >= a for a, b in zip(shares, shares[1:])), shares
        assert shares[-1] > shares[0], shares


# ---------------------------------------------------------------------- the gas table


def test_the_builtin_gas_table_was_measured_on_these_contracts() -> None:
    assert gas_table.CONTRACTS_HASH == contracts_hash(), (
        "the engine, token or feed changed since the simulator's gas table was measured: "
        "run python -m simulator.competition.calibrate --write")


def test_the_builtin_gas_table_has_every_path_of_the_default_listing() -> None:
    ok = {f"ok|m{m}|a{a}|c{c}|r{r}" for m in (0, 1) for a in (1, 2, 3) if a >> m & 1 for c in range(4) for r in (0, 1)}
    healthy = {f"revert|healthy|m{m}|a{a}|c{c}" for m in (0, 1) for a in range(4) for c in range(4)}
    # A liquidatable account without a position in the market; one with nothing left but negative
    # cash (a0, c0) does not exist: the liquidation that left it so settled it (automatic settlement).
    closed = {f"revert|no position|m{m}|a{a}|c{c}" for m in (0, 1) for a in range(4) if not a >> m & 1
              for c in range(4) if a or c}
    assert set(DEFAULT_PATH_GAS) == ok and len(ok) == 32
    assert set(DEFAULT_REVERT_GAS) == healthy | closed and len(closed) == 14
    assert tuple(gas_table.BRANCH_GAS) == BRANCHES


def test_gas_keys_storage_writes_and_refunds() -> None:
    key = "ok|m1|a3|s2|c1|r1|Nz,Nz,Nn,Nn,Nn,Nn,=,=,Nn,Zn,Nn"
    k = GasKey.parse(key)
    assert (k.market, k.active, k.shorts, k.collaterals, k.reward) == (1, 3, 2, 1, True)
    assert k.path == "ok|m1|a3|c1|r1" and k.coarse == "ok|2|1"
    branches = dict.fromkeys(BRANCHES, 0)
    # a partial liquidation: the active-markets words are not written (0), the house's cash is (100)
    assert write_gas("Nn,Nn,Nn,=,Nn,Nn,=,=,Nn,Zn,Nn".split(","), branches) == (7 * 2_900 + 100 + 20_000, 0)
    # a close: its branch, and a refund per cleared slot; the house's word is read cold when it changes
    closed = "Nz,Nz,Nn,Nz,Nn,Nn,=,=,Nn,Nn,Nn".split(",")
    assert write_gas(closed, branches | {"close": 7}) == (9 * 2_900 + 100 + 7, 3 * 4_800)
    opened = "Nn,Nn,Nn,=,Zn,Zn,=,Zn,Nn,Nn,Nn".split(",")
    assert write_gas(opened, branches | {"house_open": 5}) == (6 * 2_900 + 100 + 3 * 20_000 + 2_100 + 5, 0)
    # the refund cap (a fifth of the gas before refunds) is undone exactly
    for exec_gas, refund, intrinsic in ((90_000, 4_800, 22_000), (100_000, 33_600, 21_800), (60_000, 28_800, 21_900)):
        before = exec_gas_before_refund(exec_gas, refund, intrinsic)
        assert before - min(refund, (intrinsic + before) // 5) == exec_gas
        assert (before == exec_gas + refund) == (refund <= (intrinsic + exec_gas + refund) // 5)


def test_a_measured_key_sets_its_path_for_the_keys_it_did_not_meet() -> None:
    key = "ok|m0|a1|s0|c2|r1|Nz,Nz,Nn,Nz,Nn,Nn,=,=,Nn,Zn,Nn"
    table = GasTable({key: 100_000})
    assert table.exec_gas(key) == 100_000 and table.misses == 0
    warm = key.replace("Nn,Zn,Nn", "Nn,Nn,Nn")           # the keeper paid before: 2,900 instead of 20,000
    assert table.exec_gas(warm) == 100_000 - 17_100 and table.misses == 1
    short = key.replace("|s0|", "|s1|")
    assert table.exec_gas(short) == 100_000 + gas_table.BRANCH_GAS["short"] + gas_table.BRANCH_GAS["short_close"]
    builtin_table = GasTable()
    assert (builtin_table.exec_gas("revert|healthy|m0|a3|s3|c0") - builtin_table.exec_gas("revert|healthy|m0|a3|s0|c0")
            == 2 * gas_table.BRANCH_GAS["short"])
    with pytest.raises(ConfigError):
        GasKey.parse("ok|m0|a1|c2|r1|Nz")                # the key of a table, not of a transaction
    # The automatic settlement's branch (d): its own gas on top of the same path; d0 costs nothing.
    for d, name in ((1, "settle"), (2, "settle_check"), (3, "settle_check_positions")):
        settled = key.replace("|r1|", f"|r1|d{d}|")
        assert GasKey.parse(settled).settlement == d and GasKey.parse(settled).settled == (d == 1)
        assert table.exec_gas(settled) == 100_000 + gas_table.BRANCH_GAS[name]
    assert table.exec_gas(key.replace("|r1|", "|r1|d0|")) == 100_000
    with pytest.raises(ConfigError):
        GasKey.parse(key.replace("|r1|", "|r1|d7|"))


@pytest.mark.slow
def test_a_fresh_calibration_gives_the_builtin_gas_table() -> None:
    samples = measure()
    assert {GasKey.parse(s.key).path for s in samples} == set(DEFAULT_PATH_GAS) | set(DEFAULT_REVERT_GAS)
    assert fit(samples).values() == builtin().values()
    assert max(abs(e.relative) for e in errors(samples)) <= MAX_ERROR


def test_the_model_seeding_equals_the_chain_seeding(mixed: Run) -> None:
    """The off-chain mode's starting state is the state the Lens reads before the shock."""
    sim = mixed.sim
    assert sim.dep is not None
    model, plans = build_initial_state(MIXED[0].accounts, MIXED[0].seed, dep=sim.dep)
    chain = load_state(mixed.w3, sim.dep, [p.address for p in plans], block_identifier=mixed.shock - 1)
    assert model.accounts == chain.accounts
    assert model.house == chain.house
    assert model.insurance_fund == chain.insurance_fund


# ---------------------------------------------------------------------- on-chain


def test_onchain_same_seed_gives_the_same_report(mixed: Run) -> None:
    again = None
    for run in _start(MIXED):
        again = run.report
    assert again is not None
    assert again.comparable() == mixed.report.comparable()
    assert again.gas_table == mixed.report.gas_table


def test_onchain_totals_reconcile_with_the_chain(mixed: Run) -> None:
    report, w3, sim = mixed.report, mixed.w3, mixed.sim
    assert sim.dep is not None
    assert report.model_mismatches == []
    assert report.base_fee_wei == BASE_FEE_FLOOR_WEI
    logs = w3.eth.get_logs({"fromBlock": mixed.shock, "toBlock": mixed.end, "address": sim.dep.engine,
                            "topics": [engine_topic("Liquidation")]})
    events = decode_logs(logs, sim.dep.engine)
    rewards: dict[str, int] = defaultdict(int)
    counts: Counter[str] = Counter()
    for ev in events:
        rewards[ev.args["liquidator"]] += int(ev.args["keeper_reward"])
        counts[ev.args["liquidator"]] += 1
    assert len(events) == len(report.liquidations) >= 4
    assert sum(rewards.values()) == report.rewards_native > 0
    quote = sim.dep.quote_contract
    for b in report.bots:
        assert rewards.get(b.address, 0) == b.rewards_native
        assert counts.get(b.address, 0) == b.won
        assert quote.functions.balanceOf(b.address).call() == b.rewards_native
        # gas: the bot's ETH went to gas and nothing else
        assert w3.eth.get_balance(b.address) == AGENT_FUNDS_WEI - b.gas_wei
    assert len({b.address for b in report.bots if b.won}) >= 2
    # tips: what the block producer earned over the run
    coinbase = w3.eth.get_block(mixed.end)["miner"]
    earned = w3.eth.get_balance(coinbase, mixed.end) - w3.eth.get_balance(coinbase, mixed.shock)
    assert earned == report.tips_wei > 0
    assert report.tip_share_wad == report.tips_wei * report.eth_price_wad // report.rewards_usd_wad
    # blocks until the last liquidation
    assert report.blocks_to_last_liquidation == max(ev.block for ev in events) - mixed.shock


def test_the_price_updates_wait_in_the_pool_and_are_mined_in_the_update_block(mixed: Run) -> None:
    """The shock's set_answer transactions compete in the block ordering like any transaction: sent
    pending with the oracle's tip, mined together in block S (the report's block 0); without a
    backrunner no liquidation shares their block."""
    sim, w3 = mixed.sim, mixed.w3
    assert sim.dep is not None
    txs = w3.eth.get_block(mixed.shock, full_transactions=True)["transactions"]
    assert [Web3.to_checksum_address(t["to"]) for t in txs] == list(sim.dep.feeds.values())
    assert {t["from"] for t in txs} == {sim.owner.address}
    assert {int(t["maxPriorityFeePerGas"]) for t in txs} == {DEFAULT_ORACLE_TIP_WEI}
    assert w3.eth.get_block(mixed.shock - 1)["transactions"] == []
    report = mixed.report
    assert report.same_block == report.same_block_share_wad == report.backruns == 0
    assert min(x.block for x in report.liquidations) == 1


def test_offchain_reproduces_the_onchain_winners_and_totals(mixed: Run, rebid: Run, crash: Run) -> None:
    for run, (scenario, strategy) in ((mixed, MIXED), (rebid, REBID), (crash, CRASH)):
        on = run.report
        initial = Initial.build(scenario.accounts, scenario.seed)
        measured = run_offchain(scenario, bots(strategy), gas_table=GasTable(on.gas_table), initial=initial)
        builtin = run_offchain(scenario, bots(strategy), initial=initial)
        on_exact, on_gas = split(on)
        for off, tolerance in ((measured, GAS_TOLERANCE_MEASURED), (builtin, GAS_TOLERANCE_BUILTIN)):
            off_exact, off_gas = split(off)
            assert off_exact == on_exact
            assert_close(off_gas, on_gas, tolerance, strategy)


def test_the_builtin_gas_table_predicts_each_onchain_transaction(mixed: Run, rebid: Run, crash: Run) -> None:
    for run in (mixed, rebid, crash):
        samples = run.sim.gas_samples
        assert len(samples) == sum(b.mined for b in run.report.bots) > 0
        assert {GasKey.parse(s.key).reason for s in samples} >= {None, "healthy", "no position"}
        for e in errors(samples):
            path = GasKey.parse(e.sample.key).path
            assert path in DEFAULT_PATH_GAS or path in DEFAULT_REVERT_GAS, path   # measured, not a class median
            assert abs(e.relative) <= GAS_TOLERANCE_BUILTIN, (e.sample, e.predicted)


def test_a_crash_pays_the_keepers_of_bankrupt_accounts_and_settles_bad_debt_at_once(crash: Run) -> None:
    """The revised SPEC on chain, in the report and in the gas keys: keepers closing bankrupt
    accounts are paid (the insurance fund pays what the account cannot), and the close that leaves
    an account nothing but negative cash settles it (BadDebtSettled) in the same transaction."""
    report, w3, sim = crash.report, crash.w3, crash.sim
    assert sim.dep is not None and report.model_mismatches == []
    events = decode_logs(w3.eth.get_logs({"fromBlock": crash.shock, "toBlock": crash.end, "address": sim.dep.engine}),
                         sim.dep.engine)
    closes = [e for e in events if e.name == "Liquidation"]
    settled = [e for e in events if e.name == "BadDebtSettled"]
    bankrupt = [e for e in closes if int(e.args["charged"]) < int(e.args["penalty"])]
    assert bankrupt and all(int(e.args["keeper_reward"]) > 0 for e in bankrupt)
    assert settled and {e.tx_hash for e in settled} <= {e.tx_hash for e in closes}
    assert report.bad_debt_settled_usd_wad == sum(int(e.args["deficit"]) for e in settled) > 0
    assert report.socialised_usd_wad == sum(int(e.args["socialised"]) for e in settled)
    assert sum(GasKey.parse(s.key).settled for s in crash.sim.gas_samples) == len(settled)


def test_a_rebidder_replaces_its_transaction_to_outbid_rivals_by_12_5_percent(rebid: Run) -> None:
    report, w3 = rebid.report, rebid.w3
    rebidder = report.bots[2]
    assert rebidder.kind == "rebid" and rebidder.rebids > 0
    assert rebidder.won >= 3 and rebidder.won == len(report.liquidations)
    checked = 0
    for number in range(rebid.shock + 1, rebid.end + 1):
        block = w3.eth.get_block(number, full_transactions=True)
        by_target: dict[tuple[bytes, ...], list[Any]] = defaultdict(list)
        for tx in block["transactions"]:
            by_target[bytes(tx["input"])[4:68]].append(tx)
        for txs in by_target.values():
            ours = [t for t in txs if t["from"] == rebidder.address]
            rivals = [t for t in txs if t["from"] != rebidder.address]
            if not ours or not rivals:
                continue
            tip = int(ours[0]["maxPriorityFeePerGas"])
            assert tip >= bump(max(int(t["maxPriorityFeePerGas"]) for t in rivals))
            assert txs[0]["from"] == rebidder.address     # it is mined first
            checked += 1
    assert checked >= 3


# ---------------------------------------------------------------------- the command line


def test_cli_json_and_plot(tmp_path: Path) -> None:
    png = tmp_path / "competition.png"
    result = CliRunner().invoke(cli, [
        "simulate", "competition", "--mode", "offchain", "--bots", "3", "--strategy", MIXED[1],
        "--accounts", "12", "--shock", "ETH=-12%,BTC=-12%", "--seed", "26", "--blocks", "5",
        "--json", "--plot", str(png),
    ])
    assert result.exit_code == 0, result.output
    doc = json.loads(result.stdout)
    assert 0 < doc["tip_share"] < 1 and int(doc["tip_share_wad"]) > 0
    assert [b["name"] for b in doc["bots"]] == ["bot1", "bot2", "bot3"]
    assert doc["liquidation_count"] == len(doc["liquidations"]) >= 4
    assert [p["bots"] for p in doc["sweep"]] == list(range(1, 9))
    expected = run_offchain(*MIXED[:1], bots(MIXED[1])).comparable()
    assert {k: v for k, v in doc.items() if k in expected} == expected
    data = png.read_bytes()
    assert data[:8] == PNG_SIGNATURE and len(data) > 10_000

    human = CliRunner().invoke(cli, [
        "simulate", "competition", "--mode", "offchain", "--strategy", "fixed,rebid@1", "--accounts", "12",
        "--shock", "ETH=-12%", "--seed", "26", "--blocks", "3",
    ])
    assert human.exit_code == 0, human.output
    assert "tip share" in human.stdout and "rebid:1gwei@1" in human.stdout


@pytest.mark.parametrize("args", [
    ["--shock", "ETH"],
    ["--shock", "DOGE=-10%"],
    ["--shock", "ETH=-120%"],
    ["--shock", "ETH=-10%", "--strategy", "martingale"],
    ["--shock", "ETH=-10%", "--bots", "0"],
])
def test_cli_bad_input_is_one_line_and_exit_2(args: list[str]) -> None:
    result = CliRunner().invoke(cli, ["simulate", "competition", "--mode", "offchain", "--accounts", "5", *args])
    assert result.exit_code == 2, result.output
    assert "Traceback" not in result.output


@pytest.mark.slow
def test_cli_onchain_json(tmp_path: Path) -> None:
    png = tmp_path / "onchain.png"
    result = CliRunner().invoke(cli, [
        "simulate", "competition", "--mode", "onchain", "--bots", "3", "--strategy", MIXED[1], "--accounts", "12",
        "--shock", "ETH=-12%", "--shock", "BTC=-12%", "--seed", "26", "--blocks", "5", "--json", "--plot", str(png),
    ])
    assert result.exit_code == 0, result.output
    doc = json.loads(result.stdout)
    assert doc["mode"] == "onchain" and doc["model_mismatches"] == []
    assert png.read_bytes()[:8] == PNG_SIGNATURE
    off = run_offchain(*MIXED[:1], bots(MIXED[1]), gas_table=doc["gas_table"])
    assert [x["bot"] for x in doc["liquidations"]] == [x.bot for x in off.liquidations]


@pytest.mark.slow
def test_onchain_rent_dissipation_from_one_to_four_profit_share_bots() -> None:
    scenario = Scenario(12, 26, SHOCK, 3)
    shares = []
    for k in (1, 2, 4):
        with OnchainSimulation(scenario, bots("profit-share:50%", k)) as sim:
            shares.append(sim.run().tip_share_wad)
    assert shares[0] < shares[1] < shares[2]
