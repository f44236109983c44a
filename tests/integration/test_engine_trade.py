"""MarginEngine.trade: exact execution arithmetic, the house as counterparty, margin rules and
every revert reason.

Buys pay ``mul_up(size, P)``, sells receive ``mul_down(size, P)``: both are
``mul_down(-size_delta, P)``. The fee is ``mul_up(mul_up(|size_delta|, P), taker_fee)``.
"""

from __future__ import annotations

import pytest

from engine_helpers import (
    BTC,
    ETH,
    IMF,
    MAX_SIZE,
    MAX_UINT,
    MMF,
    TAKER,
    WAD,
    ceil_div,
    events,
    fee_of,
    largest_passing,
    mul_down,
    mul_up,
    new_feed,
    perp_term,
    reverts,
    set_next_timestamp,
    updated_at,
)

# ---------------------------------------------------------------- helpers


def trade_call(p, market: int, delta: int, limit: int | None = None):
    if limit is None:
        limit = MAX_UINT if delta > 0 else 0
    return p.engine.functions.trade(market, delta, limit)


def send_trade(actor, p, market: int, delta: int, limit: int | None = None):
    return actor.send(trade_call(p, market, delta, limit))


def trade_reverts(actor, p, market: int, delta: int, limit: int | None = None) -> str:
    return reverts(actor, trade_call(p, market, delta, limit))


# ---------------------------------------------------------------- execution


def test_buy_pays_rounded_up_and_emits_exact_event(protocol, actors):
    p, trader = protocol, actors.trader
    p.deposit(trader, "USDC", 10_000 * 10**6)
    p.set_price("ETH", "2000.12345678")
    price = 2000_12345678 * 10**10
    assert p.price("ETH") == price
    delta = 1_234567890123456789
    assert (delta * price) % WAD != 0  # the product is fractional: rounding is exercised

    receipt = send_trade(trader, p, ETH, delta)

    quote_delta = -ceil_div(delta * price, WAD)  # a buy pays rounded up
    assert quote_delta == mul_down(-delta, price)
    fee = fee_of(delta, price)
    cash = 10_000 * WAD - fee
    [ev] = events(p, receipt, "Trade")
    assert dict(ev.args) == {
        "account": trader.address, "market": ETH, "size_delta": delta, "price": price,
        "quote_delta": quote_delta, "fee": fee, "size": delta, "quote": quote_delta, "cash": cash,
        "house_size": -delta, "house_quote": -quote_delta, "house_cash": p.cash(p.engine.address),
    }
    assert p.position(trader.address, "ETH-PERP") == (delta, quote_delta)
    assert p.cash(trader.address) == cash
    assert p.engine.functions.active_markets(trader.address).call() == 1 << ETH


def test_sell_receives_rounded_down_and_emits_exact_event(protocol, actors):
    p, trader = protocol, actors.trader
    p.deposit(trader, "USDC", 10_000 * 10**6)
    p.set_price("BTC", "60000.87654321")
    price = 60000_87654321 * 10**10
    delta = -123456789012345679
    assert (delta * price) % WAD != 0

    receipt = send_trade(trader, p, BTC, delta)

    quote_delta = (-delta * price) // WAD  # a sell receives rounded down
    assert quote_delta == mul_down(-delta, price) > 0
    fee = fee_of(delta, price)
    [ev] = events(p, receipt, "Trade")
    assert dict(ev.args) == {
        "account": trader.address, "market": BTC, "size_delta": delta, "price": price,
        "quote_delta": quote_delta, "fee": fee, "size": delta, "quote": quote_delta,
        "cash": 10_000 * WAD - fee, "house_size": -delta, "house_quote": -quote_delta,
        "house_cash": p.cash(p.engine.address),
    }
    assert p.engine.functions.active_markets(trader.address).call() == 1 << BTC


def test_tiny_trade_fee_rounds_up_to_one_wei(protocol, actors):
    p, trader = protocol, actors.trader
    p.deposit(trader, "USDC", 10**6)
    receipt = send_trade(trader, p, ETH, 1)
    [ev] = events(p, receipt, "Trade")
    assert ev.args.quote_delta == -2000
    assert ev.args.fee == 1  # ceil(2000 * 5e14 / 1e18) = ceil(0.001)
    receipt = send_trade(trader, p, ETH, -1)
    [ev] = events(p, receipt, "Trade")
    assert ev.args.quote_delta == 2000
    assert (ev.args.size, ev.args.quote, ev.args.cash) == (0, 0, WAD - 2)


def test_house_books_the_exact_opposite_and_receives_fees(protocol, actors):
    p = protocol
    house = p.engine.address
    assert p.engine.functions.house().call() == house
    house_cash0 = p.cash(house)
    p.deposit(actors.trader, "USDC", 10_000 * 10**6)
    p.deposit(actors.trader2, "USDC", 10_000 * 10**6)
    p.set_price("ETH", "1999.99999999")
    price = p.price("ETH")
    buy, sell = 3_333333333333333333, -1_111111111111111111

    send_trade(actors.trader, p, ETH, buy)
    send_trade(actors.trader2, p, ETH, sell)

    q_buy, q_sell = mul_down(-buy, price), mul_down(-sell, price)
    assert p.position(house, "ETH-PERP") == (-(buy + sell), -(q_buy + q_sell))
    assert p.cash(house) == house_cash0 + fee_of(buy, price) + fee_of(sell, price)
    assert p.engine.functions.active_markets(house).call() == 1 << ETH
    # Sizes of all accounts including the house sum to zero.
    sizes = [p.position(a, "ETH-PERP")[0] for a in (actors.trader.address, actors.trader2.address, house)]
    assert sum(sizes) == 0


def test_increase_accumulates_and_partial_reduce_keeps_cost_basis(protocol, actors):
    p, trader = protocol, actors.trader
    p.deposit(trader, "USDC", 10_000 * 10**6)
    p1 = p.price("ETH")
    send_trade(trader, p, ETH, 2 * WAD)
    p.set_price("ETH", "2100.5")
    p2 = p.price("ETH")
    send_trade(trader, p, ETH, WAD // 3)
    quote = mul_down(-2 * WAD, p1) + mul_down(-(WAD // 3), p2)
    assert p.position(trader.address, "ETH-PERP") == (2 * WAD + WAD // 3, quote)

    p.set_price("ETH", "2200.25")
    p3 = p.price("ETH")
    receipt = send_trade(trader, p, ETH, -WAD)
    quote += mul_down(WAD, p3)  # the reduce's proceeds go to quote, not cash
    cash = 10_000 * WAD - fee_of(2 * WAD, p1) - fee_of(WAD // 3, p2) - fee_of(WAD, p3)
    assert p.position(trader.address, "ETH-PERP") == (WAD + WAD // 3, quote)
    assert p.cash(trader.address) == cash
    assert events(p, receipt, "Trade")[0].args.quote == quote


def test_closing_moves_quote_into_cash_for_trader_and_house(protocol, actors):
    p, trader = protocol, actors.trader
    house = p.engine.address
    house_cash0 = p.cash(house)
    p.deposit(trader, "USDC", 5_000 * 10**6)
    p1 = p.price("ETH")
    size = 1_500000000000000001
    send_trade(trader, p, ETH, size)
    p.set_price("ETH", "2345.6789")
    p2 = p.price("ETH")

    receipt = send_trade(trader, p, ETH, -size)

    realised = mul_down(-size, p1) + mul_down(size, p2)
    fees = fee_of(size, p1) + fee_of(size, p2)
    cash = 5_000 * WAD + realised - fees
    [ev] = events(p, receipt, "Trade")
    assert (ev.args.size, ev.args.quote, ev.args.cash) == (0, 0, cash)
    assert p.position(trader.address, "ETH-PERP") == (0, 0)
    assert p.cash(trader.address) == cash
    assert p.engine.functions.active_markets(trader.address).call() == 0
    assert p.health(trader.address) == (cash, cash, cash)
    # The house was the counterparty of both legs and is flat again: its quote moved to its cash.
    assert p.position(house, "ETH-PERP") == (0, 0)
    assert p.engine.functions.active_markets(house).call() == 0
    assert p.cash(house) == house_cash0 - realised + fees


# ---------------------------------------------------------------- margin


@pytest.mark.parametrize("side", [1, -1])
def test_insufficient_margin_exact_boundary(protocol, actors, side):
    p, trader = protocol, actors.trader
    p.deposit(trader, "USDC", 1_000 * 10**6)
    p.set_price("ETH", "1987.65432109")
    price = p.price("ETH")

    def init_after(size: int) -> int:
        delta = side * size
        return 1_000 * WAD - fee_of(delta, price) + perp_term(delta, mul_down(-delta, price), price, IMF)

    lo = largest_passing(lambda size: init_after(size) >= 0, 0, 100 * WAD)  # init_after(0) >= 0 > init_after(100 WAD)
    assert trade_reverts(trader, p, ETH, side * (lo + 1)) == "insufficient margin"
    send_trade(trader, p, ETH, side * lo)
    assert p.health(trader.address)[1] == init_after(lo) >= 0


def test_side_flip_needs_margin(protocol, actors):
    p, trader = protocol, actors.trader
    p.deposit(trader, "USDC", 300 * 10**6)
    send_trade(trader, p, ETH, WAD)  # long 1: init 300 - 1 - 200 = 99
    assert p.health(trader.address)[1] == 99 * WAD
    # Long 1 -> short 2 needs 400 of initial margin.
    assert trade_reverts(trader, p, ETH, -3 * WAD) == "insufficient margin"
    # Long 1 -> short 1 needs 200: fine.
    send_trade(trader, p, ETH, -2 * WAD)
    price = p.price("ETH")
    cash = 300 * WAD - fee_of(WAD, price) - fee_of(2 * WAD, price)
    assert p.position(trader.address, "ETH-PERP") == (-WAD, mul_down(-WAD, price) + mul_down(2 * WAD, price))
    assert p.health(trader.address)[1] == cash + perp_term(-WAD, 2000 * WAD, price, IMF)


def test_reduce_only_allowed_while_under_margined(protocol, actors):
    p, trader = protocol, actors.trader
    p.deposit(trader, "USDC", 300 * 10**6)
    send_trade(trader, p, ETH, 14 * WAD // 10)  # notional 2800, init 300 - 1.4 - 280 = 18.6
    p.set_price("ETH", 1900)
    equity, init, maint = p.health(trader.address)
    assert (equity, init, maint) == (1586 * WAD // 10, -1074 * WAD // 10, 256 * WAD // 10)

    assert trade_reverts(trader, p, ETH, WAD // 100) == "insufficient margin"
    assert trade_reverts(trader, p, ETH, -3 * WAD) == "insufficient margin"  # flip to short 1.6
    send_trade(trader, p, ETH, -4 * WAD // 10)  # reduce: allowed although init stays < 0
    assert p.position(trader.address, "ETH-PERP")[0] == WAD
    assert p.health(trader.address)[1] < 0
    # Closing entirely is also a reduce.
    send_trade(trader, p, ETH, -WAD)
    assert p.position(trader.address, "ETH-PERP") == (0, 0)


def test_reduce_only_allowed_even_when_liquidatable(protocol, actors):
    p, trader = protocol, actors.trader
    p.deposit(trader, "USDC", 300 * 10**6)
    send_trade(trader, p, ETH, 14 * WAD // 10)
    p.set_price("ETH", 1800)
    assert p.health(trader.address)[2] < 0
    send_trade(trader, p, ETH, -WAD // 10)
    assert p.position(trader.address, "ETH-PERP")[0] == 13 * WAD // 10


def test_margin_counts_collateral_and_other_markets(protocol, actors):
    p, trader = protocol, actors.trader
    p.deposit(trader, "WBTC", 10**8)  # 60_000 at 0.75: 45_000 of initial margin
    send_trade(trader, p, BTC, -WAD)  # 60_000 notional: 6_000 required
    p_eth, p_btc = p.price("ETH"), p.price("BTC")
    cash = -fee_of(-WAD, p_btc)
    base = mul_down(60_000 * WAD, 75 * 10**16) + cash + perp_term(-WAD, mul_down(WAD, p_btc), p_btc, IMF)
    assert p.health(trader.address)[1] == base

    def init_after(size: int) -> int:
        return base - fee_of(size, p_eth) + perp_term(size, mul_down(-size, p_eth), p_eth, IMF)

    lo = largest_passing(lambda size: init_after(size) >= 0, 0, 1_000 * WAD)
    assert trade_reverts(trader, p, ETH, lo + 1) == "insufficient margin"
    send_trade(trader, p, ETH, lo)
    assert p.health(trader.address)[1] == init_after(lo)


# ---------------------------------------------------------------- price limit


def test_buy_price_limit(protocol, actors):
    p, trader = protocol, actors.trader
    p.deposit(trader, "USDC", 10_000 * 10**6)
    price = p.price("ETH")
    assert trade_reverts(trader, p, ETH, WAD, price - 1) == "price limit"
    assert trade_reverts(trader, p, ETH, WAD, 0) == "price limit"
    send_trade(trader, p, ETH, WAD, price)
    assert p.position(trader.address, "ETH-PERP")[0] == WAD


def test_sell_price_limit(protocol, actors):
    p, trader = protocol, actors.trader
    p.deposit(trader, "USDC", 10_000 * 10**6)
    price = p.price("ETH")
    assert trade_reverts(trader, p, ETH, -WAD, price + 1) == "price limit"
    assert trade_reverts(trader, p, ETH, -WAD, MAX_UINT) == "price limit"
    send_trade(trader, p, ETH, -WAD, price)
    assert p.position(trader.address, "ETH-PERP")[0] == -WAD


# ---------------------------------------------------------------- guards


def test_trade_paused_reverts_then_works_after_unpause(protocol, actors):
    p, trader = protocol, actors.trader
    p.deposit(trader, "USDC", 10_000 * 10**6)
    send_trade(trader, p, ETH, WAD)
    p.owner.send(p.engine.functions.pause())
    assert trade_reverts(trader, p, ETH, WAD) == "paused"
    assert trade_reverts(trader, p, ETH, -WAD) == "paused"  # even reduce-only
    p.owner.send(p.engine.functions.unpause())
    send_trade(trader, p, ETH, -WAD)
    assert p.position(trader.address, "ETH-PERP") == (0, 0)


@pytest.mark.parametrize("market", [2, 15, 2**256 - 1])
def test_trade_unlisted_market_reverts(protocol, actors, market):
    p = protocol
    p.deposit(actors.trader, "USDC", 10**6)
    assert trade_reverts(actors.trader, p, market, WAD) == "not listed"


def test_trade_zero_amount_reverts(protocol, actors):
    p = protocol
    p.deposit(actors.trader, "USDC", 10**6)
    assert trade_reverts(actors.trader, p, ETH, 0) == "zero amount"


@pytest.mark.parametrize("delta", [MAX_SIZE + 1, -(MAX_SIZE + 1), 2**255 - 1, -(2**255)])
def test_trade_size_delta_too_large_reverts(protocol, actors, delta):
    p = protocol
    p.deposit(actors.trader, "USDC", 10**6)
    assert trade_reverts(actors.trader, p, ETH, delta) == "size too large"


@pytest.mark.parametrize("side", [1, -1])
def test_trade_resulting_size_too_large_reverts(protocol, actors, side):
    p, trader = protocol, actors.trader
    p.set_price("ETH", 1)  # 2**100 base units are then worth about 1.27e12 USD
    p.deposit(trader, "USDC", 10**12 * 10**6)
    send_trade(trader, p, ETH, side * MAX_SIZE)
    assert p.position(trader.address, "ETH-PERP")[0] == side * MAX_SIZE
    assert trade_reverts(trader, p, ETH, side) == "size too large"
    send_trade(trader, p, ETH, -side)  # reducing from the bound is fine


def test_oi_cap_bounds_the_house_position(protocol, actors):
    p = protocol
    cap = 5 * WAD
    receipt = p.owner.send(p.engine.functions.set_market_params(ETH, IMF, MMF, 2 * 10**16, TAKER, cap))
    assert events(p, receipt, "MarketParamsSet")[0].args.oi_cap == cap
    p.deposit(actors.trader, "USDC", 10_000 * 10**6)
    p.deposit(actors.trader2, "USDC", 10_000 * 10**6)
    send_trade(actors.trader, p, ETH, 3 * WAD)
    send_trade(actors.trader2, p, ETH, 2 * WAD)  # the house is short exactly the cap
    assert p.position(p.engine.address, "ETH-PERP")[0] == -cap
    assert trade_reverts(actors.trader2, p, ETH, 1) == "oi cap"
    # Selling reduces the house's exposure and is always accepted ...
    send_trade(actors.trader, p, ETH, -WAD)
    # ... and so is a trade that flips the house within the cap.
    send_trade(actors.trader2, p, ETH, -8 * WAD)
    assert p.position(p.engine.address, "ETH-PERP")[0] == 4 * WAD
    assert trade_reverts(actors.trader2, p, ETH, -WAD - 1) == "oi cap"


def test_oi_cap_lowered_below_house_position_still_allows_reducing(protocol, actors):
    p = protocol
    p.deposit(actors.trader, "USDC", 10_000 * 10**6)
    send_trade(actors.trader, p, ETH, 3 * WAD)
    p.owner.send(p.engine.functions.set_market_params(ETH, IMF, MMF, 2 * 10**16, TAKER, WAD))
    assert trade_reverts(actors.trader, p, ETH, 1) == "oi cap"
    send_trade(actors.trader, p, ETH, -WAD)
    assert p.position(p.engine.address, "ETH-PERP")[0] == -2 * WAD


def test_taker_fee_follows_market_params(protocol, actors):
    p, trader = protocol, actors.trader
    p.owner.send(p.engine.functions.set_market_params(BTC, IMF, MMF, 2 * 10**16, 10**15 + 1, 0))
    p.deposit(trader, "USDC", 10_000 * 10**6)
    receipt = send_trade(trader, p, BTC, WAD // 7)
    price = p.price("BTC")
    assert events(p, receipt, "Trade")[0].args.fee == mul_up(mul_up(WAD // 7, price), 10**15 + 1)


# ---------------------------------------------------------------- prices


def test_trade_stale_price_reverts_after_max_age(protocol, actors, tester):
    p, trader = protocol, actors.trader
    p.deposit(trader, "USDC", 10_000 * 10**6)
    p.set_price("ETH", 2000)
    t0 = updated_at(p, "ETH")
    set_next_timestamp(tester, t0 + 3600)
    send_trade(trader, p, ETH, WAD)
    set_next_timestamp(tester, t0 + 3601)
    assert trade_reverts(trader, p, ETH, WAD) == "stale price"
    assert trade_reverts(trader, p, ETH, -WAD) == "stale price"  # reduce-only needs the price too
    p.set_price("ETH", 2000)
    send_trade(trader, p, ETH, -WAD)
    assert p.position(trader.address, "ETH-PERP") == (0, 0)


def test_stale_feed_of_another_holding_blocks_risk_increase_only(protocol, actors, tester):
    """A risk-increasing trade checks health, which reads every held feed; a reduce-only trade
    reads only its own market's price."""
    p, trader = protocol, actors.trader
    p.deposit(trader, "USDC", 10_000 * 10**6)
    send_trade(trader, p, BTC, WAD // 10)
    send_trade(trader, p, ETH, WAD)
    set_next_timestamp(tester, updated_at(p, "BTC") + 3601)
    p.set_price("ETH", 2000)  # ETH fresh, BTC stale
    assert trade_reverts(trader, p, ETH, WAD) == "stale price"
    send_trade(trader, p, ETH, -WAD // 2)
    assert p.position(trader.address, "ETH-PERP")[0] == WAD // 2


def test_trade_bad_price_reverts(protocol, actors):
    p, trader = protocol, actors.trader
    feed = new_feed(p, 8, 0, 2**120)
    p.owner.send(p.engine.functions.list_market(feed.address, IMF, MMF, 2 * 10**16, TAKER, 0))
    p.deposit(trader, "USDC", 10_000 * 10**6)
    assert trade_reverts(trader, p, 2, WAD) == "bad price"
    p.owner.send(feed.functions.set_answer(2**100 // 10**10 + 1))  # above MAX_PRICE once in WAD
    assert trade_reverts(trader, p, 2, WAD) == "bad price"
    p.owner.send(feed.functions.set_answer(10 * 10**8))
    send_trade(trader, p, 2, WAD)
    assert tuple(p.engine.functions.position(trader.address, 2).call()) == (WAD, -10 * WAD)
