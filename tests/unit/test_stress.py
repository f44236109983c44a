"""The stress engine without Ray: paths, one path against the model's cascade, the figures."""

from __future__ import annotations

from decimal import Decimal
from pathlib import Path

import pytest

from protocol_model.errors import ConfigError
from protocol_model.scenarios import cascade, moved_answer, resolve_feed
from protocol_model.state import ProtocolState
from simulator.stress.engine import KeeperSettings, PathResult, run_path
from simulator.stress.paths import PathModel, load_path_file
from simulator.stress.runner import (
    Sweep,
    apply_set,
    cost,
    open_interest,
    parse_sweep,
    parse_target,
    recommend,
    summarise,
    tail,
)
from simulator.stress.study import seeded_state

from protocol_model.wad import WAD


@pytest.fixture(scope="module")
def population() -> ProtocolState:
    return seeded_state(150, 3)


def model(state: ProtocolState, **kw: object) -> PathModel:
    feeds = tuple(state.feeds)
    vols = kw.pop("vols", (1.0,) * len(feeds))
    return PathModel(feeds, tuple(state.feeds[f].answer for f in feeds), vols, **kw)  # type: ignore[arg-type]


# ---------------------------------------------------------------- paths


def test_a_path_depends_on_the_seed_and_its_index_only(population: ProtocolState) -> None:
    pm = model(population, steps=10)
    assert pm.answers(1, 5) == pm.answers(1, 5)
    assert pm.answers(1, 5) != pm.answers(1, 6)
    assert pm.answers(1, 5) != pm.answers(2, 5)
    assert len(pm.answers(1, 0)) == 10 and all(len(row) == len(population.feeds) for row in pm.answers(1, 0))


def test_zero_volatility_without_jumps_keeps_the_price_and_a_shock_is_the_models(population: ProtocolState) -> None:
    eth = resolve_feed(population, "ETH")
    pm = model(population, vols=(0.0, 0.0), jump_rate=0.0, steps=4, shocks=((eth, -23 * 10**16),), shock_step=3)
    start = [population.feeds[f].answer for f in pm.feeds]
    rows = pm.answers(7, 0)
    assert rows[0] == rows[1] == start
    shocked = [moved_answer(a, -23 * 10**16) if f == eth else a for f, a in zip(pm.feeds, start)]
    assert rows[2] == rows[3] == shocked


def test_correlated_paths_move_together(population: ProtocolState) -> None:
    together = model(population, corr=0.99, jump_rate=0.0, steps=40)
    apart = model(population, corr=-0.9, jump_rate=0.0, steps=40)

    def same_direction(pm: PathModel) -> int:
        rows = [[r[j] / pm.start[j] for j in range(2)] for r in pm.answers(3, 0)]
        return sum(1 for a, b in rows if (a > 1) == (b > 1))

    assert same_direction(together) > 30 > 10 > same_direction(apart)


def test_path_options_are_checked(population: ProtocolState) -> None:
    with pytest.raises(ConfigError, match="--corr"):
        model(population, corr=-1.5)
    with pytest.raises(ConfigError, match="--steps"):
        model(population, steps=0)
    with pytest.raises(ConfigError, match="--shock-step"):
        model(population, steps=3, shock_step=4)


def test_a_path_file_gives_exact_answers_per_path(population: ProtocolState, tmp_path: Path) -> None:
    f = tmp_path / "crash.csv"
    f.write_text("path,step,ETH,BTC\n0,1,1900.5,59000\n0,2,1500.25,50000\n1,1,2100,61000\n1,2,2200,62000\n")
    pf = load_path_file(str(f), population)
    eth, btc = resolve_feed(population, "ETH"), resolve_feed(population, "BTC")
    assert pf.feeds == (eth, btc) and len(pf.paths) == 2 and pf.steps == 2
    assert pf.answers(0, 0) == [[190_050_000_000, 5_900_000_000_000], [150_025_000_000, 5_000_000_000_000]]
    bad = tmp_path / "bad.csv"
    bad.write_text("step,DOGE\n1,0.1\n")
    with pytest.raises(ConfigError, match="DOGE"):
        load_path_file(str(bad), population)
    bad.write_text("step,ETH\n1,-5\n")
    with pytest.raises(ConfigError, match="positive"):
        load_path_file(str(bad), population)
    with pytest.raises(ConfigError, match="cannot read"):
        load_path_file(str(tmp_path / "missing.csv"), population)


# ---------------------------------------------------------------- one path


@pytest.mark.parametrize("shock", [{"ETH": -25 * 10**16, "BTC": -15 * 10**16}, {"ETH": 30 * 10**16}, {"BTC": -40 * 10**16}])
def test_zero_volatility_and_one_shock_is_the_models_cascade_exactly(population: ProtocolState, shock: dict[str, int]) -> None:
    impact = 2 * 10**16
    shocks = tuple((resolve_feed(population, k), v) for k, v in shock.items())
    pm = model(population, vols=(0.0, 0.0), jump_rate=0.0, steps=3, shocks=shocks)
    keepers = KeeperSettings(policy="reference", impact_per_notional=impact, max_rounds=50)
    got = run_path(population, pm, keepers, seed=1, index=0)
    want = cascade(population, shock, impact, max_rounds=50)
    assert want.totals.bad_debt > 0 and want.totals.liquidations > 0   # bad debt to compare, settled at once
    assert got.bad_debt == want.totals.bad_debt
    assert (got.covered, got.socialised) == (want.totals.covered, want.totals.socialised)
    assert got.volume == want.totals.volume
    assert got.liquidations == want.totals.liquidations
    assert got.keeper_rewards == want.totals.keeper_rewards
    assert got.insurance_fund_end == want.insurance_fund_after
    assert got.house_pnl == want.house_equity_after - want.house_equity_before
    assert got.liquidatable == [len(want.still_liquidatable)] * 3


def test_the_bot_policy_settles_what_it_closes_and_latency_leaves_accounts_waiting(population: ProtocolState) -> None:
    shocks = ((resolve_feed(population, "ETH"), -30 * 10**16),)
    pm = model(population, vols=(0.0, 0.0), jump_rate=0.0, steps=4, shocks=shocks)
    free = KeeperSettings(base_fee_wei=0, tip_wei=0, min_profit_usd_wad=0, gas_feed=resolve_feed(population, "ETH"))
    now = run_path(population, pm, free, 1, 0)
    assert now.liquidations > 0 and now.bad_debt > 0
    assert now.bad_debt == now.covered + now.socialised + now.unsettled
    assert now.liquidatable == [0, 0, 0, 0] and now.unsettled == 0
    late = run_path(population, pm, KeeperSettings(**{**free.__dict__, "latency": 2}), 1, 0)
    assert late.liquidatable[0] > 0 and late.liquidatable[1] > 0 and late.liquidatable[2:] == [0, 0]
    assert late.longest_liquidatable == 2
    # Gas that costs more than most rewards leaves accounts liquidatable: nobody closes them at a loss.
    dear = KeeperSettings(base_fee_wei=2000 * 10**9, min_profit_usd_wad=WAD, backstop=False,
                          gas_feed=resolve_feed(population, "ETH"))
    stuck = run_path(population, pm, dear, 1, 0)
    assert stuck.liquidatable[-1] > 0 and stuck.liquidations < now.liquidations


def test_keeper_settings_are_checked() -> None:
    with pytest.raises(ConfigError, match="policy"):
        KeeperSettings(policy="magic", gas_feed="0x")
    with pytest.raises(ConfigError, match="ETH feed"):
        KeeperSettings(policy="bot", gas_feed=None)
    with pytest.raises(ConfigError, match="latency"):
        KeeperSettings(latency=-1, gas_feed="0x")


# ---------------------------------------------------------------- figures


def test_var_and_cvar_take_the_worst_tail() -> None:
    values = list(range(1, 201))          # 200 paths: 1 .. 200
    assert tail(values, 95) == (191, sum(range(191, 201)) // 10)
    assert tail(values, 99) == (199, (199 + 200) // 2)
    assert tail([5], 99) == (5, 5)


def test_summary_figures(population: ProtocolState) -> None:
    results = [PathResult(index=i, bad_debt=b, socialised=s, depleted=s > 0, liquidatable=[i, 0])
               for i, (b, s) in enumerate([(0, 0), (10, 0), (30, 5), (100, 40)])]
    f = summarise(results, open_interest(population))
    assert f["var95"] == f["var99"] == "100" and f["mean"] == str(140 // 4)
    assert f["p_depleted"] == 0.5 and f["p_bad_debt"] == 0.75
    assert f["liquidatable_mean_by_step"] == [1.5, 0.0] and f["liquidatable_max_by_step"] == [3, 0]
    assert int(f["open_interest"]) > 0


def test_sweeps_targets_and_the_cheapest_set(population: ProtocolState) -> None:
    sw = parse_sweep("imf=5%:20%:5%")
    assert sw == Sweep("imf", (Decimal("0.05"), Decimal("0.10"), Decimal("0.15"), Decimal("0.20")))
    lat = parse_sweep("latency=0:2:1")
    for bad in ("foo=1:2:1", "imf=0.2:0.1:0.05", "imf=0.1", "latency=0:1:0.5", "imf=a:b:c"):
        with pytest.raises(ConfigError):
            parse_sweep(bad)
    target = parse_target("var99<1%")
    assert target.metric == "var99" and target.limit == Decimal("0.01")
    with pytest.raises(ConfigError):
        parse_target("var42<1%")
    # Dear: a high imf, a low latency.
    assert cost({"imf": Decimal("0.05"), "latency": Decimal(2)}, [sw, lat]) == 0
    assert cost({"imf": Decimal("0.20"), "latency": Decimal(0)}, [sw, lat]) == 2
    rows = [{"params": {"imf": str(v)}, "figures": {"var99": str(var), "open_interest": "1000"}}
            for v, var in ((Decimal("0.05"), 50), (Decimal("0.10"), 9), (Decimal("0.15"), 2))]
    assert recommend(rows, [sw], target)["params"] == {"imf": "0.10"}
    assert recommend(rows, [sw], parse_target("var99<0.1%")) is None


def test_a_parameter_set_is_applied_to_a_copy_through_the_engines_checks(population: ProtocolState) -> None:
    keepers = KeeperSettings(policy="reference")
    s, k = apply_set(population, keepers, {"mmf": Decimal("0.07"), "insurance": Decimal(5), "latency": Decimal(3)})
    assert all(m.mmf == 7 * 10**16 for m in s.markets) and s.insurance_fund == 5 * WAD and k.latency == 3
    assert all(m.mmf == 5 * 10**16 for m in population.markets)
    with pytest.raises(ConfigError, match="refuses"):
        apply_set(population, keepers, {"mmf": Decimal("0.5")})
