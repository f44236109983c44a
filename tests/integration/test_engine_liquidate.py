"""MarginEngine.liquidate and preview_liquidate: hand-computed closes, penalties, keeper rewards
and the insurance fund, and every revert reason.

The standard position: the trader deposits ``deposit`` USDC and buys 4 ETH-PERP at 2000
(fee 4 USD), so cash = deposit - 4, quote = -8000. The price then moves against it.
"""

from __future__ import annotations

from dataclasses import dataclass

import pytest
from web3.logs import DISCARD

from engine_helpers import (
    BTC,
    ETH,
    IMF,
    LIQ_FEE,
    MAX_UINT,
    MMF,
    WAD,
    call_struct,
    deploy_source,
    div_up,
    events,
    fee_of,
    mul_down,
    mul_up,
    perp_term,
    quote_scale,
    reverts,
    set_next_timestamp,
    updated_at,
    upnl,
)

KEEPER_SHARE = WAD // 2
DUST = 10 * WAD


# ---------------------------------------------------------------- expected values


@dataclass
class Expected:
    q: int
    size_delta: int
    quote_delta: int
    penalty: int                # the full penalty
    charged: int                # what the account pays
    keeper_reward: int
    insurance: int              # the fund's change (charged - reward), with a fund large enough
    size: int
    quote: int
    cash: int
    equity: int
    init_health: int
    maint_health: int


def expected_liquidation(
    *, cash: int, size: int, quote: int, price: int, max_size: int,
    other_equity: int = 0, other_init: int = 0, other_maint: int = 0,
    dust: int = DUST, keeper_share: int = KEEPER_SHARE, quote_scale: int = 10**12,
) -> Expected:
    """SPEC section 6 liquidate, steps 1 to 5, for an account whose only position in this market
    is (size, quote); ``other_*`` are the terms of the rest of the account (collateral, other
    markets)."""
    equity = cash + other_equity + upnl(size, quote, price)
    init = cash + other_init + perp_term(size, quote, price, IMF)
    s = abs(size)
    need = div_up(div_up(-init, IMF - LIQ_FEE), price)
    q = min(s, need)
    if mul_up(s - q, price) < dust:
        q = s
    q = min(q, max_size)
    size_delta = -q if size > 0 else q
    quote_delta = mul_down(-size_delta, price)
    new_size, new_quote = size + size_delta, quote + quote_delta
    equity_close = equity - upnl(size, quote, price) + upnl(new_size, new_quote, price)
    penalty = mul_up(mul_up(q, price), LIQ_FEE)
    charged = min(penalty, max(equity_close, 0))
    new_cash = cash - charged
    if new_size == 0:
        new_cash += new_quote
        new_quote = 0
    keeper = mul_down(penalty, keeper_share) // quote_scale
    term_init = perp_term(new_size, new_quote, price, IMF)
    term_maint = perp_term(new_size, new_quote, price, MMF)
    return Expected(
        q=q, size_delta=size_delta, quote_delta=quote_delta, penalty=penalty, charged=charged, keeper_reward=keeper,
        insurance=charged - keeper * quote_scale, size=new_size, quote=new_quote, cash=new_cash,
        equity=new_cash + other_equity + upnl(new_size, new_quote, price),
        init_health=new_cash + other_init + term_init, maint_health=new_cash + other_maint + term_maint,
    )


# ---------------------------------------------------------------- helpers


def preview(p, account: str, market: int, max_size: int) -> dict:
    return call_struct(p.engine.functions.preview_liquidate(account, market, max_size))


def liquidate(p, liquidator, account: str, market: int, max_size: int = MAX_UINT):
    return liquidator.send(p.engine.functions.liquidate(account, market, max_size))


def liquidate_reverts(p, liquidator, account: str, market: int, max_size: int = MAX_UINT) -> str:
    return reverts(liquidator, p.engine.functions.liquidate(account, market, max_size))


def open_long_4_eth(p, trader, deposit_usd: int | str = 1000) -> None:
    p.deposit(trader, "USDC", p.units("USDC", deposit_usd))
    p.trade(trader, "ETH-PERP", 4 * WAD)


def assert_liquidation_matches(p, receipt, account: str, liquidator: str, exp: Expected, plan: dict, price: int) -> None:
    """Event, preview and resulting state all equal the hand-computed expectation."""
    [ev] = events(p, receipt, "Liquidation")
    house = p.engine.address
    house_size, house_quote = p.position(house, "ETH-PERP")
    settled = events(p, receipt, "BadDebtSettled")
    fund, house_cash = p.engine.functions.insurance_fund().call(), p.cash(house)
    if settled:   # the Liquidation event's values are before the settlement that follows it
        fund, house_cash = fund + settled[0].args["covered"], house_cash + settled[0].args["socialised"]
    assert dict(ev.args) == {
        "account": account, "market": ETH, "liquidator": liquidator, "size_delta": exp.size_delta,
        "price": price, "quote_delta": exp.quote_delta, "penalty": exp.penalty, "charged": exp.charged,
        "keeper_reward": exp.keeper_reward, "insurance_fund": fund, "house_size": house_size,
        "house_quote": house_quote, "house_cash": house_cash, "size": exp.size,
        "quote": exp.quote, "cash": exp.cash,
    }
    assert plan == {
        "size_delta": exp.size_delta, "price": price, "quote_delta": exp.quote_delta,
        "penalty": exp.penalty, "charged": exp.charged, "keeper_reward": exp.keeper_reward,
        "insurance_fund": fund, "house_size": house_size, "house_quote": house_quote, "house_cash": house_cash,
        "size": exp.size, "quote": exp.quote, "cash": exp.cash, "equity": exp.equity,
        "init_health": exp.init_health, "maint_health": exp.maint_health,
        "bad_debt": settled[0].args["deficit"] if settled else 0,
    }
    assert p.position(account, "ETH-PERP") == (exp.size, exp.quote)
    if not settled:
        assert p.cash(account) == exp.cash
        assert p.health(account) == (exp.equity, exp.init_health, exp.maint_health)


def settled_socialised(p, receipt) -> int:
    settled = events(p, receipt, "BadDebtSettled")
    return settled[0].args["socialised"] if settled else 0


# ---------------------------------------------------------------- success paths


def test_partial_liquidation_closes_what_restores_initial_margin(protocol, actors):
    p, trader, liquidator = protocol, actors.trader, actors.liquidator
    open_long_4_eth(p, trader)
    p.set_price("ETH", 1800)
    price = 1800 * WAD
    # cash 996, upnl 7200 - 8000 = -800: equity 196, init 196 - 720 = -524, maint 196 - 360 = -164
    before = p.health(trader.address)
    assert before == (196 * WAD, -524 * WAD, -164 * WAD)
    house_pos = p.position(p.engine.address, "ETH-PERP")
    house_cash = p.cash(p.engine.address)
    fund0 = p.engine.functions.insurance_fund().call()
    engine_quote0 = p.quote.functions.balanceOf(p.engine.address).call()
    exp = expected_liquidation(cash=996 * WAD, size=4 * WAD, quote=-8000 * WAD, price=price, max_size=MAX_UINT)
    # need = ceil(ceil(524 / 0.08) / 1800) = ceil(6550 / 1800) base units (WAD)
    assert exp.q == 3_638888888888888889 < 4 * WAD
    plan = preview(p, trader.address, ETH, MAX_UINT)

    receipt = liquidate(p, liquidator, trader.address, ETH)

    assert_liquidation_matches(p, receipt, trader.address, liquidator.address, exp, plan, price)
    assert exp.penalty == 131_000000000000000004  # ceil(0.02 * 6550.0000000000000002)
    assert p.quote.functions.balanceOf(liquidator.address).call() == exp.keeper_reward == 65_500000
    assert p.quote.functions.balanceOf(p.engine.address).call() == engine_quote0 - exp.keeper_reward
    assert p.engine.functions.insurance_fund().call() == fund0 + exp.insurance
    assert exp.insurance == exp.penalty - 65_500000 * 10**12
    # The house takes the closed size at P; its cash does not move.
    assert p.position(p.engine.address, "ETH-PERP") == (house_pos[0] - exp.size_delta, house_pos[1] - exp.quote_delta)
    assert p.cash(p.engine.address) == house_cash
    # The account leaves liquidation with its initial margin restored, and is no longer liquidatable.
    assert exp.init_health >= 0
    assert exp.maint_health > before[2]
    assert liquidate_reverts(p, liquidator, trader.address, ETH) == "healthy"


def test_short_position_liquidation(protocol, actors):
    p, trader, liquidator = protocol, actors.trader, actors.liquidator
    p.deposit(trader, "USDC", 1000 * 10**6)
    p.trade(trader, "ETH-PERP", -4 * WAD)  # cash 996, quote +8000
    p.set_price("ETH", "2150.55555555")
    price = p.price("ETH")
    exp = expected_liquidation(cash=996 * WAD, size=-4 * WAD, quote=8000 * WAD, price=price, max_size=MAX_UINT)
    assert 0 < exp.size_delta < 4 * WAD
    before = p.health(trader.address)
    assert before[2] < 0
    plan = preview(p, trader.address, ETH, MAX_UINT)

    receipt = liquidate(p, liquidator, trader.address, ETH)

    assert_liquidation_matches(p, receipt, trader.address, liquidator.address, exp, plan, price)
    assert exp.maint_health > before[2]


def test_dust_rule_boundary(protocol, actors):
    """The leftover is closed whole iff it is worth less than dust_notional."""
    p, trader, liquidator = protocol, actors.trader, actors.liquidator
    open_long_4_eth(p, trader)
    p.set_price("ETH", 1800)
    price = 1800 * WAD
    partial = expected_liquidation(cash=996 * WAD, size=4 * WAD, quote=-8000 * WAD, price=price, max_size=MAX_UINT)
    leftover = mul_up(4 * WAD - partial.q, price)  # 649.9999999999999998 USD

    p.owner.send(p.engine.functions.set_params(KEEPER_SHARE, 3600, leftover))
    assert preview(p, trader.address, ETH, MAX_UINT)["size_delta"] == -partial.q  # not < dust

    p.owner.send(p.engine.functions.set_params(KEEPER_SHARE, 3600, leftover + 1))
    whole = expected_liquidation(
        cash=996 * WAD, size=4 * WAD, quote=-8000 * WAD, price=price, max_size=MAX_UINT, dust=leftover + 1,
    )
    assert whole.q == 4 * WAD
    plan = preview(p, trader.address, ETH, MAX_UINT)
    receipt = liquidate(p, liquidator, trader.address, ETH)
    assert_liquidation_matches(p, receipt, trader.address, liquidator.address, whole, plan, price)
    assert p.engine.functions.active_markets(trader.address).call() == 0
    assert whole.quote == 0 and whole.cash == 996 * WAD - 800 * WAD - whole.penalty


def test_max_size_caps_the_close(protocol, actors):
    p, trader, liquidator = protocol, actors.trader, actors.liquidator
    open_long_4_eth(p, trader)
    p.set_price("ETH", 1800)
    price = 1800 * WAD
    exp = expected_liquidation(cash=996 * WAD, size=4 * WAD, quote=-8000 * WAD, price=price, max_size=WAD)
    assert exp.q == WAD
    before = p.health(trader.address)
    plan = preview(p, trader.address, ETH, WAD)

    receipt = liquidate(p, liquidator, trader.address, ETH, WAD)

    assert_liquidation_matches(p, receipt, trader.address, liquidator.address, exp, plan, price)
    assert exp.maint_health > before[2]
    # Still liquidatable: a second call continues from the new state.
    assert exp.maint_health < 0
    exp2 = expected_liquidation(cash=exp.cash, size=exp.size, quote=exp.quote, price=price, max_size=MAX_UINT)
    plan2 = preview(p, trader.address, ETH, MAX_UINT)
    receipt = liquidate(p, actors.rival, trader.address, ETH)
    assert_liquidation_matches(p, receipt, trader.address, actors.rival.address, exp2, plan2, price)


def test_max_size_applies_after_the_dust_rule(protocol, actors):
    """With a dust threshold that would close the whole position, max_size still caps it."""
    p, trader, liquidator = protocol, actors.trader, actors.liquidator
    open_long_4_eth(p, trader)
    p.set_price("ETH", 1800)
    p.owner.send(p.engine.functions.set_params(KEEPER_SHARE, 3600, 5000 * WAD))
    max_size = 3 * WAD + 1
    exp = expected_liquidation(
        cash=996 * WAD, size=4 * WAD, quote=-8000 * WAD, price=1800 * WAD, max_size=max_size, dust=5000 * WAD,
    )
    assert exp.q == max_size
    plan = preview(p, trader.address, ETH, max_size)
    receipt = liquidate(p, liquidator, trader.address, ETH, max_size)
    assert_liquidation_matches(p, receipt, trader.address, liquidator.address, exp, plan, 1800 * WAD)


def test_penalty_capped_at_equity_after_close(protocol, actors):
    p, trader, liquidator = protocol, actors.trader, actors.liquidator
    open_long_4_eth(p, trader)
    p.set_price("ETH", 1752)  # equity 4P - 7004 = 4 USD; the uncapped penalty would be 140.16
    price = 1752 * WAD
    fund0 = p.engine.functions.insurance_fund().call()
    exp = expected_liquidation(cash=996 * WAD, size=4 * WAD, quote=-8000 * WAD, price=price, max_size=MAX_UINT)
    assert exp.q == 4 * WAD
    assert mul_up(mul_up(exp.q, price), LIQ_FEE) == 140_160000000000000000
    assert exp.charged == 4 * WAD and exp.penalty == 140_160000000000000000
    plan = preview(p, trader.address, ETH, MAX_UINT)

    receipt = liquidate(p, liquidator, trader.address, ETH)

    assert_liquidation_matches(p, receipt, trader.address, liquidator.address, exp, plan, price)
    assert exp.cash == exp.equity == 0
    # The keeper gets half of the full 140.16: the account's 4, then 66.08 from the fund.
    assert p.quote.functions.balanceOf(liquidator.address).call() == 70_080000
    assert p.engine.functions.insurance_fund().call() == fund0 + 4 * WAD - 70_080000 * 10**12


def test_regression_bankrupt_account_pays_its_keeper(protocol, actors):
    """Issue 11: a bankrupt account's penalty was capped at zero, so its keeper was paid 0 and a
    rational keeper left it open while its losses grew. Now the account pays nothing, the keeper
    is paid keeper_share of the full penalty by the insurance fund, and the bad debt the close
    leaves is settled in the same call."""
    p, trader, liquidator = protocol, actors.trader, actors.liquidator
    open_long_4_eth(p, trader)
    p.set_price("ETH", 1700)  # equity 6800 - 7004 = -204
    price = 1700 * WAD
    fund0 = p.engine.functions.insurance_fund().call()
    house_cash0 = p.cash(p.engine.address)
    exp = expected_liquidation(cash=996 * WAD, size=4 * WAD, quote=-8000 * WAD, price=price, max_size=MAX_UINT)
    assert (exp.q, exp.penalty, exp.charged, exp.keeper_reward) == (4 * WAD, 136 * WAD, 0, 68 * 10**6)
    plan = preview(p, trader.address, ETH, MAX_UINT)

    receipt = liquidate(p, liquidator, trader.address, ETH)

    assert_liquidation_matches(p, receipt, trader.address, liquidator.address, exp, plan, price)
    assert exp.cash == -204 * WAD
    assert p.quote.functions.balanceOf(liquidator.address).call() == 68 * 10**6
    [settled] = events(p, receipt, "BadDebtSettled")
    assert dict(settled.args) == {
        "account": trader.address, "deficit": 204 * WAD, "covered": 204 * WAD, "socialised": 0,
        "house_cash": house_cash0 + 1_200 * WAD,   # its short 4 ETH closed: quote 8,000 - 6,800 into cash
        "insurance_fund": fund0 - 68 * WAD - 204 * WAD,
    }
    assert p.cash(trader.address) == 0
    assert p.engine.functions.insurance_fund().call() == fund0 - 68 * WAD - 204 * WAD


def test_bankrupt_liquidation_events_carry_the_resulting_fund_and_house(protocol, actors):
    p, trader, liquidator = protocol, actors.trader, actors.liquidator
    open_long_4_eth(p, trader, 10_000)
    p.trade(trader, "ETH-PERP", 40 * WAD)                      # 44 ETH, cash 9,976
    p.set_price("ETH", 1700)                                   # equity 9,976 + 44 * (1700 - 2000) < 0
    fund0 = p.engine.functions.insurance_fund().call()
    house_cash0 = p.cash(p.engine.address)
    receipt = liquidate(p, liquidator, trader.address, ETH)
    [ev] = events(p, receipt, "Liquidation")
    penalty = mul_up(mul_up(44 * WAD, 1700 * WAD), LIQ_FEE)   # 1,496
    assert ev.args["charged"] == 0 and ev.args["keeper_reward"] == mul_down(penalty, KEEPER_SHARE) // 10**12
    assert fund0 >= ev.args["keeper_reward"] * 10**12          # the fund pays the keeper first
    assert ev.args["insurance_fund"] == fund0 - ev.args["keeper_reward"] * 10**12
    assert ev.args["house_cash"] == p.cash(p.engine.address) + settled_socialised(p, receipt)
    assert ev.args["house_size"] == ev.args["house_quote"] == 0 and house_cash0 < ev.args["house_cash"]
    [settled] = events(p, receipt, "BadDebtSettled")
    assert settled.args["insurance_fund"] == p.engine.functions.insurance_fund().call()
    assert settled.args["house_cash"] == p.cash(p.engine.address)


@pytest.mark.parametrize("keeper_share", [KEEPER_SHARE, 333333333333333333, 0, WAD])
def test_keeper_reward_floored_to_native_quote_units(any_protocol, actors, keeper_share):
    p, trader, liquidator = any_protocol, actors.trader, actors.liquidator
    qs = quote_scale(p)
    p.owner.send(p.engine.functions.set_params(keeper_share, 3600, DUST))
    open_long_4_eth(p, trader)
    p.set_price("ETH", "1800.00000007")
    price = p.price("ETH")
    fund0 = p.engine.functions.insurance_fund().call()
    engine0 = p.quote.functions.balanceOf(p.engine.address).call()
    exp = expected_liquidation(
        cash=996 * WAD, size=4 * WAD, quote=-8000 * WAD, price=price, max_size=MAX_UINT,
        keeper_share=keeper_share, quote_scale=qs,
    )
    plan = preview(p, trader.address, ETH, MAX_UINT)

    receipt = liquidate(p, liquidator, trader.address, ETH)

    assert_liquidation_matches(p, receipt, trader.address, liquidator.address, exp, plan, price)
    assert exp.keeper_reward == mul_down(exp.penalty, keeper_share) // qs
    assert p.quote.functions.balanceOf(liquidator.address).call() == exp.keeper_reward
    assert p.quote.functions.balanceOf(p.engine.address).call() == engine0 - exp.keeper_reward
    assert p.engine.functions.insurance_fund().call() == fund0 + exp.penalty - exp.keeper_reward * qs


def test_liquidation_with_collateral_and_another_market(protocol, actors):
    """need uses the whole account's init_health; only the liquidated market changes."""
    p, trader, liquidator = protocol, actors.trader, actors.liquidator
    p.deposit(trader, "WBTC", 10**7)  # 0.1 BTC = 6000 USD
    p.trade(trader, "BTC-PERP", WAD // 100)  # 600 notional, fee 0.3
    p.trade(trader, "ETH-PERP", 20 * WAD)  # 40_000 notional, fee 20
    p.set_price("ETH", 1780)
    p_eth, p_btc = 1780 * WAD, p.price("BTC")
    cash = -fee_of(WAD // 100, p_btc) - fee_of(20 * WAD, 2000 * WAD)
    value = 10**7 * p_btc // 10**8
    btc_quote = mul_down(-(WAD // 100), p_btc)
    other_equity = value + upnl(WAD // 100, btc_quote, p_btc)
    other_init = mul_down(value, 75 * 10**16) + perp_term(WAD // 100, btc_quote, p_btc, IMF)
    other_maint = mul_down(value, 80 * 10**16) + perp_term(WAD // 100, btc_quote, p_btc, MMF)
    exp = expected_liquidation(
        cash=cash, size=20 * WAD, quote=-40_000 * WAD, price=p_eth, max_size=MAX_UINT,
        other_equity=other_equity, other_init=other_init, other_maint=other_maint,
    )
    before = p.health(trader.address)
    assert before[2] < 0
    plan = preview(p, trader.address, ETH, MAX_UINT)

    receipt = liquidate(p, liquidator, trader.address, ETH)

    assert_liquidation_matches(p, receipt, trader.address, liquidator.address, exp, plan, p_eth)
    assert p.position(trader.address, "BTC-PERP") == (WAD // 100, btc_quote)
    assert exp.maint_health > before[2]


def test_liquidation_allowed_while_paused(protocol, actors):
    p, trader, liquidator = protocol, actors.trader, actors.liquidator
    open_long_4_eth(p, trader)
    p.set_price("ETH", 1800)
    p.owner.send(p.engine.functions.pause())
    exp = expected_liquidation(cash=996 * WAD, size=4 * WAD, quote=-8000 * WAD, price=1800 * WAD, max_size=MAX_UINT)
    plan = preview(p, trader.address, ETH, MAX_UINT)
    receipt = liquidate(p, liquidator, trader.address, ETH)
    assert_liquidation_matches(p, receipt, trader.address, liquidator.address, exp, plan, 1800 * WAD)


# ---------------------------------------------------------------- reverts


def test_healthy_account_cannot_be_liquidated_at_maint_zero(protocol, actors):
    """maint_health == 0 is healthy; one price tick lower makes it liquidatable."""
    p, trader, liquidator = protocol, actors.trader, actors.liquidator
    open_long_4_eth(p, trader, 1164)  # at 1800: cash 1160 - 800 - 360 = 0
    p.set_price("ETH", 1800)
    assert p.health(trader.address)[2] == 0
    assert liquidate_reverts(p, liquidator, trader.address, ETH) == "healthy"
    with pytest.raises(Exception) as exc:
        preview(p, trader.address, ETH, MAX_UINT)
    assert "healthy" in str(exc.value)
    p.set_price("ETH", "1799.99999999")
    assert p.health(trader.address)[2] < 0
    liquidate(p, liquidator, trader.address, ETH)


def test_liquidate_account_without_anything_is_healthy(protocol, actors):
    assert liquidate_reverts(protocol, actors.liquidator, actors.outsider.address, ETH) == "healthy"


def test_liquidate_market_without_position(protocol, actors):
    p = protocol
    open_long_4_eth(p, actors.trader)
    p.set_price("ETH", 1800)
    assert liquidate_reverts(p, actors.liquidator, actors.trader.address, BTC) == "no position"


@pytest.mark.parametrize("market", [2, 16, MAX_UINT])
def test_liquidate_unlisted_market(protocol, actors, market):
    p = protocol
    open_long_4_eth(p, actors.trader)
    p.set_price("ETH", 1800)
    assert liquidate_reverts(p, actors.liquidator, actors.trader.address, market) == "not listed"


def test_liquidate_zero_max_size(protocol, actors):
    p = protocol
    open_long_4_eth(p, actors.trader)
    p.set_price("ETH", 1800)
    assert liquidate_reverts(p, actors.liquidator, actors.trader.address, ETH, 0) == "zero amount"


def test_liquidate_the_house_reverts(protocol, actors):
    p = protocol
    open_long_4_eth(p, actors.trader)
    assert liquidate_reverts(p, actors.liquidator, p.engine.address, ETH) == "house"


def test_liquidate_stale_price_reverts_but_preview_reads_it(protocol, actors, tester):
    p, trader, liquidator = protocol, actors.trader, actors.liquidator
    open_long_4_eth(p, trader)
    p.set_price("ETH", 1800)
    t0 = updated_at(p, "ETH")
    set_next_timestamp(tester, t0 + 3601)
    assert liquidate_reverts(p, liquidator, trader.address, ETH) == "stale price"
    exp = expected_liquidation(cash=996 * WAD, size=4 * WAD, quote=-8000 * WAD, price=1800 * WAD, max_size=MAX_UINT)
    assert preview(p, trader.address, ETH, MAX_UINT)["size_delta"] == exp.size_delta


def test_regression_one_satoshi_of_stale_wbtc_does_not_block_liquidation(protocol, actors, tester):
    """Issue 11: an underwater trader who deposited 1 satoshi of WBTC while the BTC feed was older
    than its max age could not be liquidated at all ("stale price" from both liquidations) while
    his ETH losses ran on. Only the feed of what is closed must be usable now; the stale WBTC counts
    as worth 0."""
    p, trader, liquidator = protocol, actors.trader, actors.liquidator
    open_long_4_eth(p, trader)
    p.deposit(trader, "WBTC", 1)
    t1 = updated_at(p, "BTC")
    set_next_timestamp(tester, max(t1 + 3601, tester.get_block_by_number("pending")["timestamp"]))
    p.set_price("ETH", 1800)                                   # ETH fresh, BTC stale
    assert reverts(trader, p.engine.functions.withdraw(p.quote.address, 1)) == "stale price"
    exp = expected_liquidation(cash=996 * WAD, size=4 * WAD, quote=-8000 * WAD, price=1800 * WAD, max_size=MAX_UINT)
    receipt = liquidate(p, liquidator, trader.address, ETH)
    [ev] = events(p, receipt, "Liquidation")
    assert ev.args["size_delta"] == exp.size_delta
    # The stale WBTC itself cannot be seized: its own feed is the one that must be usable.
    assert p.engine.functions.collateral(trader.address, p.token("WBTC").address).call() == 1


# ---------------------------------------------------------------- preview on unusable prices

# A minimal AggregatorV3 whose answer the test sets freely: a real Chainlink feed can report a
# non-positive answer, which the repo's PriceFeed (min_answer >= 1) never does.
SETTABLE_FEED_SOURCE = """
# pragma version 0.4.3

answer: public(int256)
updated: public(uint256)

@deploy
def __init__(a: int256):
    self.answer = a
    self.updated = block.timestamp

@external
def set_answer(a: int256):
    self.answer = a
    self.updated = block.timestamp

@view
@external
def decimals() -> uint8:
    return 8

@view
@external
def latestRoundData() -> (uint80, int256, uint256, uint256, uint80):
    return (1, self.answer, self.updated, self.updated, 1)
"""


def deploy_settable_feed(p, answer: int):
    return deploy_source(p, SETTABLE_FEED_SOURCE, answer)


@pytest.mark.parametrize("answer", [0, -5, 2**100 // 10**10 + 1])
def test_preview_liquidate_on_bad_price_reverts_like_liquidate(protocol, actors, answer):
    from eth_tester.exceptions import TransactionFailed
    from web3.exceptions import ContractLogicError

    from protocol_model.chain import revert_reason

    p, trader = protocol, actors.trader
    feed = deploy_settable_feed(p, 100 * 10**8)
    p.owner.send(p.engine.functions.list_market(feed.address, IMF, MMF, LIQ_FEE, 0, 0))
    p.deposit(trader, "USDC", 1_000 * 10**6)
    # A long loses everything at a price of 0 or below, a short at a price above MAX_PRICE.
    delta = 50 * WAD if answer <= 0 else -50 * WAD
    trader.send(p.engine.functions.trade(2, delta, MAX_UINT if delta > 0 else 0))
    p.owner.send(feed.functions.set_answer(answer))
    assert p.health(trader.address)[2] < 0
    assert liquidate_reverts(p, actors.liquidator, trader.address, 2) == "bad price"

    with pytest.raises((ContractLogicError, TransactionFailed)) as exc:
        p.engine.functions.preview_liquidate(trader.address, 2, MAX_UINT).call()
    assert revert_reason(exc.value) == "bad price"
