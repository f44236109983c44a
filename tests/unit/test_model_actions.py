"""protocol_model.actions: every transition on hand-built states, every revert reason of the engine.

Each revert is checked with the engine's reason and with the state (and wallets) left untouched;
successful transitions are checked against numbers worked out by hand in the comments.
"""

from __future__ import annotations

import copy
from typing import Any, Callable

import pytest

import protocol_model as pm
from protocol_model import WAD, Revert
from protocol_model.wad import MAX_AMOUNT, MAX_PRICE, MAX_SIZE, UINT256_MAX

ENGINE = "0x00000000000000000000000000000000000000E0"
USDC = "0x0000000000000000000000000000000000000001"
WETH = "0x0000000000000000000000000000000000000002"
WBTC = "0x0000000000000000000000000000000000000003"
UNLISTED = "0x0000000000000000000000000000000000000004"
ETH_FEED = "0x00000000000000000000000000000000000000F1"
BTC_FEED = "0x00000000000000000000000000000000000000F2"
OWNER = "0x000000000000000000000000000000000000000A"
TRADER = "0x000000000000000000000000000000000000000B"
KEEPER = "0x000000000000000000000000000000000000000C"
T0 = 1_000_000
SCALE = 10**10
QS = 10**12          # USDC, 6 decimals
BIG = 10**40


def make_state(eth: int = 2_000, btc: int = 60_000) -> pm.ProtocolState:
    """The default listing (docs/protocol.md), prices in whole USD, feeds fresh at T0."""
    feeds = {
        ETH_FEED: pm.Feed(ETH_FEED, 8, eth * 10**8, T0, 1, 1, MAX_PRICE // SCALE),
        BTC_FEED: pm.Feed(BTC_FEED, 8, btc * 10**8, T0, 1, 1, MAX_PRICE // SCALE),
    }
    markets = [
        pm.Market(0, ETH_FEED, SCALE, WAD // 10, WAD // 20, WAD // 50, 5 * 10**14),
        pm.Market(1, BTC_FEED, SCALE, WAD // 10, WAD // 20, WAD // 50, 5 * 10**14),
    ]
    collaterals = [
        pm.Collateral(WETH, ETH_FEED, SCALE, 18, 10**18, 80 * 10**16, 85 * 10**16, 5 * 10**16, 0, 0),
        pm.Collateral(WBTC, BTC_FEED, SCALE, 8, 10**8, 75 * 10**16, 80 * 10**16, 5 * 10**16, 0, 1),
    ]
    state = pm.ProtocolState(ENGINE, pm.Params(USDC, QS, WAD // 2, 3_600, 10 * WAD, owner=OWNER),
                             markets, collaterals, feeds, timestamp=T0)
    state.insurance_fund = 100_000 * WAD
    state.house.cash = 10_000_000 * WAD
    return state


def with_position(state: pm.ProtocolState, cash: int, market: int, size: int, quote: int,
                  address: str = TRADER, **collateral: int) -> pm.Account:
    """An account holding a position whose counterparty (the house) is booked consistently."""
    acc = state.account(address)
    acc.cash = cash
    acc.positions[market] = pm.Position(size, quote)
    house = state.house.positions.setdefault(market, pm.Position())
    house.size -= size
    house.quote -= quote
    for symbol, amount in collateral.items():
        token = {"weth": WETH, "wbtc": WBTC}[symbol]
        acc.collateral[token] = amount
        state.total_collateral[token] = state.total_collateral.get(token, 0) + amount
    return acc


def funded_wallets(*holders: str, allowance: int = UINT256_MAX) -> pm.Wallets:
    w = pm.Wallets()
    for token in (USDC, WETH, WBTC):
        w.mint(token, ENGINE, BIG)
        for h in holders:
            w.mint(token, h, BIG)
            w.approve(token, h, ENGINE, allowance)
    return w


def reverts(reason: str, state: pm.ProtocolState, fn: Callable[[], Any], wallets: pm.Wallets | None = None) -> None:
    """``fn`` raises Revert(reason) and leaves the state (and the wallets) exactly as they were."""
    before = copy.deepcopy((state, wallets))
    with pytest.raises(Revert) as exc:
        fn()
    assert exc.value.reason == reason
    assert (state, wallets) == before, "a reverted action changed the model"


# ---------------------------------------------------------------- deposit


def test_deposit_quote_and_collateral() -> None:
    state = make_state()
    w = funded_wallets(TRADER)
    assert pm.deposit(state, TRADER, USDC, 1_500_000, w) == (1_500_000, 3 * WAD // 2, 0)   # 1.5 USDC
    assert pm.deposit(state, TRADER, WETH, 2 * WAD, w) == (2 * WAD, 3 * WAD // 2, 2 * WAD)
    acc = state.accounts[TRADER]
    assert acc.collateral == {WETH: 2 * WAD} and state.total_collateral[WETH] == 2 * WAD
    assert state.held_mask(acc) == 0b01
    assert w.balance(USDC, TRADER) == BIG - 1_500_000 and w.balance(USDC, ENGINE) == BIG + 1_500_000
    assert w.allowance(USDC, TRADER, ENGINE) == UINT256_MAX        # an infinite allowance stays


def test_deposit_reverts() -> None:
    state = make_state()
    reverts("zero amount", state, lambda: pm.deposit(state, TRADER, UNLISTED, 0))     # before "not listed"
    reverts("amount too large", state, lambda: pm.deposit(state, TRADER, USDC, MAX_AMOUNT + 1))
    reverts("not listed", state, lambda: pm.deposit(state, TRADER, UNLISTED, 1))
    pm.deposit(state, TRADER, USDC, MAX_AMOUNT)                                         # the bound itself is fine
    state.collaterals[1].deposit_cap = 10
    pm.deposit(state, TRADER, WBTC, 8)
    reverts("deposit cap", state, lambda: pm.deposit(state, TRADER, WBTC, 3))
    pm.deposit(state, TRADER, WBTC, 2)                                                  # exactly the cap
    assert state.total_collateral[WBTC] == 10


def test_deposit_cap_bounds_the_total_in_whole_tokens() -> None:
    # WBTC (8 decimals): at most MAX_TOTAL_COLLATERAL whole tokens held by the engine in total,
    # across accounts; one native unit more reverts "deposit cap" and leaves everything as it was.
    state = make_state()
    w = funded_wallets(TRADER, KEEPER)
    w.mint(WBTC, TRADER, 2**160)
    bound = pm.MAX_TOTAL_COLLATERAL * 10**8
    assert bound < MAX_AMOUNT
    assert pm.deposit(state, TRADER, WBTC, bound - 1, w) == (bound - 1, 0, bound - 1)
    assert pm.deposit(state, KEEPER, WBTC, 1, w) == (1, 0, 1)               # exactly the bound
    assert state.total_collateral[WBTC] == bound
    reverts("deposit cap", state, lambda: pm.deposit(state, TRADER, WBTC, 1, w), w)
    reverts("amount too large", state, lambda: pm.deposit(state, TRADER, WBTC, MAX_AMOUNT + 1, w), w)   # first
    reverts("zero amount", state, lambda: pm.deposit(state, TRADER, WBTC, 0, w), w)
    pm.deposit(state, TRADER, USDC, MAX_AMOUNT, w)                          # the quote token has no cap
    pm.deposit(state, TRADER, WETH, MAX_AMOUNT, w)                          # nor does another token's total
    # a withdrawal makes room again
    pm.withdraw(state, KEEPER, WBTC, 1, w)
    pm.deposit(state, TRADER, WBTC, 1, w)
    assert state.total_collateral[WBTC] == bound


def test_deposit_cap_of_the_owner_applies_below_the_bound_only() -> None:
    state = make_state()
    bound = pm.MAX_TOTAL_COLLATERAL * 10**8
    state.collaterals[1].deposit_cap = bound + 10                           # above the bound: no effect
    pm.deposit(state, TRADER, WBTC, bound)
    reverts("deposit cap", state, lambda: pm.deposit(state, TRADER, WBTC, 1))
    # an 18-decimal token's bound is above MAX_AMOUNT: reached over several deposits
    bound = pm.MAX_TOTAL_COLLATERAL * 10**18
    state.accounts[TRADER].collateral[WETH] = state.total_collateral[WETH] = bound - MAX_AMOUNT
    pm.deposit(state, TRADER, WETH, MAX_AMOUNT)
    assert state.total_collateral[WETH] == bound
    reverts("deposit cap", state, lambda: pm.deposit(state, KEEPER, WETH, 1))


def test_deposit_token_reverts_come_after_the_engine_checks() -> None:
    state = make_state()
    w = funded_wallets(TRADER, allowance=5)
    reverts("insufficient allowance", state, lambda: pm.deposit(state, TRADER, USDC, 6, w), w)
    reverts("not listed", state, lambda: pm.deposit(state, TRADER, UNLISTED, 6, w), w)     # the engine first
    w.balances[USDC][TRADER] = 4
    reverts("insufficient balance", state, lambda: pm.deposit(state, TRADER, USDC, 5, w), w)
    reverts("insufficient allowance", state, lambda: pm.deposit(state, TRADER, USDC, 6, w), w)  # allowance first
    pm.deposit(state, TRADER, USDC, 4, w)
    assert w.allowance(USDC, TRADER, ENGINE) == 1 and w.balance(USDC, TRADER) == 0


# ---------------------------------------------------------------- withdraw


def test_withdraw_reverts_in_the_engine_order() -> None:
    state = make_state()
    with_position(state, 50 * WAD, 0, WAD, -2_000 * WAD, weth=WAD)     # maint 50 + 1700 - 100
    state.params.paused = True
    reverts("paused", state, lambda: pm.withdraw(state, TRADER, USDC, 0))
    state.params.paused = False
    reverts("zero amount", state, lambda: pm.withdraw(state, TRADER, USDC, 0))
    reverts("amount too large", state, lambda: pm.withdraw(state, TRADER, USDC, MAX_AMOUNT + 1))
    reverts("insufficient cash", state, lambda: pm.withdraw(state, TRADER, USDC, 50_000_001))   # 50.000001 USDC
    reverts("not listed", state, lambda: pm.withdraw(state, TRADER, UNLISTED, 1))
    reverts("insufficient collateral", state, lambda: pm.withdraw(state, TRADER, WETH, WAD + 1))
    # all the WETH: init = 50 + 0 - 200 < 0
    reverts("insufficient margin", state, lambda: pm.withdraw(state, TRADER, WETH, WAD))
    state.timestamp = T0 + 3_601
    reverts("stale price", state, lambda: pm.withdraw(state, TRADER, WETH, 1))


def test_withdraw_reads_only_the_prices_it_needs() -> None:
    state = make_state()
    w = funded_wallets(TRADER)
    pm.deposit(state, TRADER, USDC, 10_000_000, w)
    state.timestamp = T0 + 10**6          # every feed stale: a quote-only account reads none
    assert pm.withdraw(state, TRADER, USDC, 10_000_000, w) == (10_000_000, 0, 0)
    assert w.balance(USDC, TRADER) == BIG
    w.balances[USDC][ENGINE] = 0
    pm.deposit(state, TRADER, USDC, 5, w)
    w.balances[USDC][ENGINE] = 4
    reverts("insufficient balance", state, lambda: pm.withdraw(state, TRADER, USDC, 5, w), w)


def test_withdraw_collateral_partially_and_fully() -> None:
    state = make_state()
    pm.deposit(state, TRADER, WETH, 3 * WAD)
    assert pm.withdraw(state, TRADER, WETH, WAD) == (WAD, 0, 2 * WAD)
    assert pm.withdraw(state, TRADER, WETH, 2 * WAD) == (2 * WAD, 0, 0)
    assert state.accounts[TRADER].collateral == {} and state.total_collateral[WETH] == 0


# ---------------------------------------------------------------- trade


def test_trade_books_the_house_and_the_fee() -> None:
    # buy 1 ETH at 2000: quote -2000, fee mul_up(2000, 0.0005) = 1 USD, from cash to the house
    state = make_state()
    state.account(TRADER).cash = 1_000 * WAD
    house_cash = state.house.cash
    r = pm.trade(state, TRADER, 0, WAD, 2_000 * WAD)                      # limit == P: allowed
    assert r == (WAD, 2_000 * WAD, -2_000 * WAD, WAD, WAD, -2_000 * WAD, 999 * WAD, -WAD, 2_000 * WAD, house_cash + WAD)
    assert state.house.positions[0] == pm.Position(-WAD, 2_000 * WAD)
    assert state.house.cash == house_cash + WAD
    # close at 2100: quote_delta +2100, the position closes and its quote (+100) moves to cash
    state.feeds[ETH_FEED].answer = 2_100 * 10**8
    r = pm.trade(state, TRADER, 0, -WAD, 2_100 * WAD)
    fee = 2_100 * WAD * 5 * 10**14 // WAD                                 # 1.05 USD, exact
    assert r.size == 0 and r.quote == 0 and r.cash == 999 * WAD + 100 * WAD - fee
    assert 0 not in state.accounts[TRADER].positions
    assert 0 not in state.house.positions
    assert state.house.cash == house_cash + WAD + fee - 100 * WAD         # the house's quote settles too


def test_trade_rounds_against_the_trader() -> None:
    # P = 1.5 USD: buying 1 wei costs 2 wei (mul_down(-1, 1.5e18) = -2), selling 1 wei earns 1
    state = make_state()
    state.feeds[ETH_FEED].answer = 150_000_000
    state.account(TRADER).cash = WAD
    assert pm.trade(state, TRADER, 0, 1, UINT256_MAX).quote_delta == -2
    assert pm.trade(state, TRADER, 0, -1, 0).quote_delta == 1
    # two fees of mul_up(mul_up(1, 1.5e18) = 2, 0.0005) = 1 wei, and the round trip's -1 wei quote
    assert state.accounts[TRADER].cash == WAD - 3


def test_trade_reverts_in_the_engine_order() -> None:
    state = make_state()
    state.account(TRADER).cash = 1_000 * WAD
    state.params.paused = True
    reverts("paused", state, lambda: pm.trade(state, TRADER, 5, 0, 0))
    state.params.paused = False
    reverts("not listed", state, lambda: pm.trade(state, TRADER, 2, 0, 0))
    reverts("zero amount", state, lambda: pm.trade(state, TRADER, 0, 0, 0))
    state.feeds[ETH_FEED].answer = 0
    reverts("size too large", state, lambda: pm.trade(state, TRADER, 0, MAX_SIZE + 1, UINT256_MAX))
    reverts("size too large", state, lambda: pm.trade(state, TRADER, 0, -MAX_SIZE - 1, 0))
    reverts("bad price", state, lambda: pm.trade(state, TRADER, 0, 1, 0))
    state.feeds[ETH_FEED].answer = 2_000 * 10**8
    reverts("price limit", state, lambda: pm.trade(state, TRADER, 0, 1, 2_000 * WAD - 1))      # buy above the limit
    reverts("price limit", state, lambda: pm.trade(state, TRADER, 0, -1, 2_000 * WAD + 1))     # sell below it
    reverts("insufficient margin", state, lambda: pm.trade(state, TRADER, 0, 5 * WAD, UINT256_MAX))
    state.timestamp = T0 + 3_601
    reverts("stale price", state, lambda: pm.trade(state, TRADER, 0, 1, UINT256_MAX))


def test_trade_resulting_size_bound() -> None:
    state = make_state(eth=1)
    state.account(TRADER).cash = 10**40
    pm.trade(state, TRADER, 0, MAX_SIZE, UINT256_MAX)
    reverts("size too large", state, lambda: pm.trade(state, TRADER, 0, 1, UINT256_MAX))
    pm.trade(state, TRADER, 0, -MAX_SIZE, 0)
    pm.trade(state, TRADER, 0, -MAX_SIZE, 0)                           # to -MAX_SIZE: fine
    reverts("size too large", state, lambda: pm.trade(state, TRADER, 0, -1, 0))


def test_trade_risk_checks_read_every_price_of_the_account() -> None:
    state = make_state()
    with_position(state, 10_000 * WAD, 1, WAD // 10, -6_000 * WAD)
    state.feeds[BTC_FEED].updated_at = T0 - 3_601                      # BTC stale, ETH fresh
    reverts("stale price", state, lambda: pm.trade(state, TRADER, 0, WAD, UINT256_MAX))
    reverts("stale price", state, lambda: pm.trade(state, TRADER, 1, -WAD // 100, 0))   # BTC's own price


def test_reduce_only_trade_is_allowed_when_unhealthy() -> None:
    state = make_state()
    with_position(state, -500 * WAD, 0, WAD, -2_000 * WAD)             # init, maint < 0
    assert pm.health(state, state.accounts[TRADER]).init_health < 0
    pm.trade(state, TRADER, 0, -WAD // 2, 0)                           # reduces: allowed
    reverts("insufficient margin", state, lambda: pm.trade(state, TRADER, 0, -WAD, 0))   # flips: risk


def test_oi_cap_limits_the_house_exposure() -> None:
    state = make_state()
    state.account(TRADER).cash = 10**6 * WAD
    state.account(KEEPER).cash = 10**6 * WAD
    state.markets[0].oi_cap = 2 * WAD
    pm.trade(state, TRADER, 0, 2 * WAD, UINT256_MAX)                   # house -2: at the cap
    reverts("oi cap", state, lambda: pm.trade(state, TRADER, 0, 1, UINT256_MAX))
    pm.trade(state, KEEPER, 0, -WAD, 0)                                # reduces the house's exposure
    pm.trade(state, TRADER, 0, WAD, UINT256_MAX)


# ---------------------------------------------------------------- liquidate


def test_liquidation_by_hand() -> None:
    # cash 50, long 1 ETH at 2000, P = 2000: equity 50, init -150, maint -50.
    # need = div_up(div_up(150, 0.10 - 0.02), 2000) = 0.9375 ETH; the 0.0625 ETH left is worth 125 >= 10.
    # quote_delta = +1875; penalty = mul_up(1875, 0.02) = 37.5 (<= equity 50); cash 12.5;
    # init = -150 - 37.5 + 200 - 12.5 = 0; maint = -50 - 37.5 + 100 - 6.25 = 6.25;
    # keeper = floor(18.75 USD / 1e12) = 18.75 USDC; the fund gets the other 18.75.
    state = make_state()
    with_position(state, 50 * WAD, 0, WAD, -2_000 * WAD)
    w = funded_wallets(KEEPER)
    fund = state.insurance_fund
    preview = pm.preview_liquidate(state, TRADER, 0, UINT256_MAX)
    plan = pm.liquidate(state, KEEPER, TRADER, 0, UINT256_MAX, w)
    assert plan == preview
    assert plan == (
        -9_375 * 10**14, 2_000 * WAD, 1_875 * WAD, 375 * 10**17, 375 * 10**17, 18_750_000, fund + 1_875 * 10**16,
        -625 * 10**14, 125 * WAD, state.house.cash,
        625 * 10**14, -125 * WAD, 125 * 10**17, 125 * 10**17, 0, 625 * 10**16, 0,
    )
    acc = state.accounts[TRADER]
    assert acc.positions[0] == pm.Position(625 * 10**14, -125 * WAD) and acc.cash == 125 * 10**17
    assert pm.health(state, acc) == (plan.equity, plan.init_health, plan.maint_health)
    assert state.house.positions[0] == pm.Position(-625 * 10**14, 125 * WAD)
    assert state.insurance_fund == fund + 1_875 * 10**16
    assert w.balance(USDC, KEEPER) == BIG + 18_750_000


def test_liquidation_closes_a_dust_leftover_whole() -> None:
    # cash 40.64: init -159.36, need = 159.36 / 0.08 / 2000 = 0.996 ETH, leftover 0.004 ETH = 8 USD < 10:
    # the whole position closes; penalty mul_up(2000, 0.02) = 40 <= equity 40.64; cash 0.64
    state = make_state()
    with_position(state, 4_064 * 10**16, 0, WAD, -2_000 * WAD)
    plan = pm.liquidate(state, KEEPER, TRADER, 0, UINT256_MAX)
    assert plan.size == 0 and plan.quote == 0 and plan.penalty == 40 * WAD
    assert plan.cash == 64 * 10**16
    assert 0 not in state.accounts[TRADER].positions
    assert 0 not in state.house.positions


def test_liquidation_max_size_and_penalty_cap() -> None:
    state = make_state()
    with_position(state, 50 * WAD, 0, WAD, -2_000 * WAD)
    assert pm.liquidate(state, KEEPER, TRADER, 0, 1).size_delta == -1
    # bankrupt: the account pays max(equity after the close, 0) = 0 of the 40 USD penalty; the
    # keeper is paid its half all the same, by the insurance fund
    state = make_state()
    with_position(state, -5 * WAD, 0, WAD, -2_000 * WAD)
    fund = state.insurance_fund
    plan = pm.liquidate(state, KEEPER, TRADER, 0, UINT256_MAX)
    assert plan.penalty == 40 * WAD and plan.charged == 0 and plan.keeper_reward == 20_000_000
    assert plan.insurance_fund == fund - 20 * WAD


def test_liquidation_reverts_in_the_engine_order() -> None:
    state = make_state()
    with_position(state, 50 * WAD, 0, WAD, -2_000 * WAD)
    reverts("not listed", state, lambda: pm.liquidate(state, KEEPER, TRADER, 2, 0))
    reverts("zero amount", state, lambda: pm.liquidate(state, KEEPER, TRADER, 0, 0))
    reverts("house", state, lambda: pm.liquidate(state, KEEPER, ENGINE, 0, 1))
    reverts("no position", state, lambda: pm.liquidate(state, KEEPER, TRADER, 1, 1))
    state.timestamp = T0 + 3_601
    reverts("stale price", state, lambda: pm.liquidate(state, KEEPER, TRADER, 0, 1))
    assert pm.preview_liquidate(state, TRADER, 0, 1).size_delta == -1      # previews read stale prices
    state.timestamp = T0
    state.account(TRADER).cash = 150 * WAD
    reverts("healthy", state, lambda: pm.liquidate(state, KEEPER, TRADER, 0, 1))
    reverts("healthy", state, lambda: pm.liquidate(state, KEEPER, "0x" + "77" * 20, 0, 1))  # unknown: empty


def test_liquidation_keeper_reward_needs_engine_tokens() -> None:
    state = make_state()
    with_position(state, 50 * WAD, 0, WAD, -2_000 * WAD)
    w = funded_wallets(KEEPER)
    w.balances[USDC][ENGINE] = 18_749_999
    reverts("insufficient balance", state, lambda: pm.liquidate(state, KEEPER, TRADER, 0, UINT256_MAX, w), w)


@pytest.mark.parametrize("answer", [0, -5, MAX_PRICE // SCALE + 1])
def test_preview_liquidate_rejects_a_bad_price_like_liquidate(answer: int) -> None:
    # A long is wiped out at a price of 0 or below, a short above MAX_PRICE; either way the price is
    # unusable and the preview reverts with liquidate's reason (it used to divide by a loose 0, or
    # to plan at the clamped MAX_PRICE).
    state = make_state()
    size = WAD if answer <= 0 else -WAD
    with_position(state, 0, 0, size, -size * 2_000)
    state.feeds[ETH_FEED].answer = answer
    assert pm.health(state, state.accounts[TRADER]).maint_health < 0      # the health view still clamps
    reverts("bad price", state, lambda: pm.liquidate(state, KEEPER, TRADER, 0, UINT256_MAX))
    reverts("bad price", state, lambda: pm.preview_liquidate(state, TRADER, 0, UINT256_MAX))
    # a bad price and a stale one: "bad price" comes first in both
    state.timestamp = T0 + 3_601
    reverts("bad price", state, lambda: pm.liquidate(state, KEEPER, TRADER, 0, UINT256_MAX))
    reverts("bad price", state, lambda: pm.preview_liquidate(state, TRADER, 0, UINT256_MAX))


def test_a_bad_price_elsewhere_counts_against_the_account_and_never_reverts() -> None:
    # The health read of a liquidation reverts on nothing: a held WBTC with a bad price is worth 0.
    # With it the account (cash 150, long 1 ETH at 2000) is healthy (maint 150 - 100 = 50) either way.
    state = make_state()
    with_position(state, 150 * WAD, 0, WAD, -2_000 * WAD, wbtc=10**8)
    state.feeds[BTC_FEED].answer = 0
    for fn in (lambda *a: pm.liquidate(state, KEEPER, *a), lambda *a: pm.preview_liquidate(state, *a)):
        reverts("not listed", state, lambda: fn(TRADER, 2, 0))
        reverts("zero amount", state, lambda: fn(TRADER, 0, 0))
        reverts("house", state, lambda: fn(ENGINE, 0, 1))
        reverts("healthy", state, lambda: fn(TRADER, 0, 1))
    # cash 50: liquidatable, and the 1 BTC (60,000 USD at its last answer) does not save it
    state.account(TRADER).cash = 50 * WAD
    reverts("no position", state, lambda: pm.liquidate(state, KEEPER, TRADER, 1, 1))
    assert pm.preview_liquidate(state, TRADER, 0, 1).size_delta == -1
    pm.liquidate(state, KEEPER, TRADER, 0, 1)


def test_previews_read_a_stale_price_but_not_a_bad_one() -> None:
    # stale only: the preview plans at the stale price, the action reverts "stale price"
    state = make_state()
    with_position(state, 50 * WAD, 0, WAD, -2_000 * WAD)
    state.timestamp = T0 + 10**9
    reverts("stale price", state, lambda: pm.liquidate(state, KEEPER, TRADER, 0, UINT256_MAX))
    state.timestamp = T0
    fresh = pm.preview_liquidate(state, TRADER, 0, UINT256_MAX)
    state.timestamp = T0 + 10**9
    assert pm.preview_liquidate(state, TRADER, 0, UINT256_MAX) == fresh
    # the answer at the top of the usable range is not bad: the preview plans at it
    state.feeds[ETH_FEED].answer = MAX_PRICE // SCALE
    reverts("healthy", state, lambda: pm.preview_liquidate(state, TRADER, 0, UINT256_MAX))


def test_keeper_reward_in_an_18_decimal_quote() -> None:
    state = make_state()
    state.params.quote_scale = 1
    with_position(state, 50 * WAD, 0, WAD, -2_000 * WAD)
    state.params.keeper_share = WAD // 3
    plan = pm.liquidate(state, KEEPER, TRADER, 0, UINT256_MAX)
    assert plan.keeper_reward == 375 * 10**17 * (WAD // 3) // WAD    # mul_down(37.5, 0.333...), no unit flooring
    assert plan.insurance_fund == state.insurance_fund == 100_000 * WAD + plan.penalty - plan.keeper_reward


# ---------------------------------------------------------------- liquidate_collateral


def debtor(state: pm.ProtocolState, cash: int, weth: int) -> pm.Account:
    acc = state.account(TRADER)
    acc.cash = cash
    acc.collateral[WETH] = weth
    state.total_collateral[WETH] = weth
    return acc


def test_collateral_liquidation_by_hand() -> None:
    # cash -1000, 1 WETH at 1000: maint = 850 - 1000 < 0. Caller's price mul_up(1000, 0.95) = 950;
    # debt 1000 USDC; cap = floor(1 * 950 / 1e12 units) = 950 USDC.
    state = make_state(eth=1_000)
    debtor(state, -1_000 * WAD, WAD)
    w = funded_wallets(KEEPER)
    # repay 100 USDC: seized = floor(100e6 * 1e12 * 1e18 / 950e18) = 0.105263157894736842 WETH
    # It is worth 105.263157894736842 USD: equity 0 would fall to -5.26, so the fund credits that
    # part of the discount to the account (equity never below min(equity before, 0) = 0).
    fund = state.insurance_fund
    plan = pm.liquidate_collateral(state, KEEPER, TRADER, WETH, 100_000_000, w)
    lost = 105_263_157_894_736_842 * 1_000
    subsidy = lost - 100 * WAD
    assert plan == (100_000_000, 105_263_157_894_736_842, 1_000 * WAD, subsidy, -900 * WAD + subsidy,
                    WAD - 105_263_157_894_736_842, fund - subsidy, state.house.cash, 0, 0)
    assert w.balance(WETH, KEEPER) == BIG + 105_263_157_894_736_842
    assert w.balance(USDC, KEEPER) == BIG - 100_000_000
    # repay the whole cap: the whole balance goes (no dust left to block settle_bad_debt)
    left = WAD - 105_263_157_894_736_842
    cap = left * 950 * WAD // WAD // QS
    preview = pm.preview_liquidate_collateral(state, TRADER, WETH, UINT256_MAX)
    plan = pm.liquidate_collateral(state, KEEPER, TRADER, WETH, UINT256_MAX, w)
    assert plan == preview
    assert (plan.repay, plan.seized, plan.collateral, plan.cash, plan.equity, plan.bad_debt) == (cap, left, 0, 0, 0, 0)
    assert state.accounts[TRADER].collateral == {} and state.total_collateral[WETH] == 0


def test_collateral_liquidation_rounds_the_debt_up() -> None:
    # 10 wei of WETH at 1 USD are worth 0 quote units: they go for a repay of 0
    state = make_state()
    debtor(state, -10**6, 10)
    state.feeds[ETH_FEED].answer = 10**8
    plan = pm.preview_liquidate_collateral(state, TRADER, WETH, UINT256_MAX)
    assert plan.repay == 0 and plan.seized == 10            # worth less than one unit: free
    w = funded_wallets()                                    # the caller holds nothing: no transferFrom
    pm.liquidate_collateral(state, KEEPER, TRADER, WETH, UINT256_MAX, w)
    assert w.balance(WETH, KEEPER) == 10
    # cash -1 wei: the debt is one whole quote unit; the account ends at +(1e12 - 1) wei
    state = make_state()
    debtor(state, -1, WAD)
    state.account(TRADER).positions[0] = pm.Position(WAD, -4_000 * WAD)   # liquidatable through a loss
    plan = pm.preview_liquidate_collateral(state, TRADER, WETH, UINT256_MAX)
    assert plan.repay == 1 and plan.cash == QS - 1 + plan.subsidy and plan.equity == -1 and plan.subsidy > 0


@pytest.mark.parametrize("answer", [0, -1, MAX_PRICE // SCALE + 1])
def test_preview_liquidate_collateral_rejects_a_bad_price_like_the_action(answer: int) -> None:
    # A zero answer used to give a plan that seized the whole balance for a repay of 0. The health
    # read rejects the price before "healthy" (at a loose MAX_PRICE the account would be healthy).
    state = make_state(eth=1_000)
    debtor(state, -1_000 * WAD, WAD)
    state.feeds[ETH_FEED].answer = answer
    assert (pm.health(state, state.accounts[TRADER]).maint_health < 0) == (answer <= 0)
    reverts("bad price", state, lambda: pm.liquidate_collateral(state, KEEPER, TRADER, WETH, UINT256_MAX))
    reverts("bad price", state, lambda: pm.preview_liquidate_collateral(state, TRADER, WETH, UINT256_MAX))
    state.timestamp = T0 + 3_601                                          # stale too: still "bad price"
    reverts("bad price", state, lambda: pm.preview_liquidate_collateral(state, TRADER, WETH, UINT256_MAX))
    # the reasons before the health read come first
    reverts("not listed", state, lambda: pm.preview_liquidate_collateral(state, TRADER, USDC, 1))
    reverts("zero amount", state, lambda: pm.preview_liquidate_collateral(state, TRADER, WETH, 0))
    reverts("house", state, lambda: pm.preview_liquidate_collateral(state, ENGINE, WETH, 1))


def test_preview_liquidate_collateral_reads_a_stale_price() -> None:
    state = make_state(eth=1_000)
    debtor(state, -1_000 * WAD, WAD)
    fresh = pm.preview_liquidate_collateral(state, TRADER, WETH, UINT256_MAX)
    state.timestamp = T0 + 3_601
    reverts("stale price", state, lambda: pm.liquidate_collateral(state, KEEPER, TRADER, WETH, UINT256_MAX))
    assert pm.preview_liquidate_collateral(state, TRADER, WETH, UINT256_MAX) == fresh


def test_collateral_liquidation_reverts_in_the_engine_order() -> None:
    state = make_state(eth=1_000)
    debtor(state, -1_000 * WAD, WAD)
    reverts("not listed", state, lambda: pm.liquidate_collateral(state, KEEPER, TRADER, USDC, 0))
    reverts("zero amount", state, lambda: pm.liquidate_collateral(state, KEEPER, TRADER, WETH, 0))
    reverts("house", state, lambda: pm.liquidate_collateral(state, KEEPER, ENGINE, WETH, 1))
    reverts("no collateral", state, lambda: pm.liquidate_collateral(state, KEEPER, TRADER, WBTC, 1))
    state.timestamp = T0 + 3_601
    reverts("stale price", state, lambda: pm.liquidate_collateral(state, KEEPER, TRADER, WETH, 1))
    state.timestamp = T0
    w = funded_wallets(KEEPER, allowance=0)
    reverts("insufficient allowance", state, lambda: pm.liquidate_collateral(state, KEEPER, TRADER, WETH, 1, w), w)
    state.feeds[ETH_FEED].answer = 2_000 * 10**8
    reverts("healthy", state, lambda: pm.liquidate_collateral(state, KEEPER, TRADER, WETH, 1))
    state = make_state()
    with_position(state, 10 * WAD, 0, WAD, -2_000 * WAD, weth=10**15)   # liquidatable, cash >= 0
    reverts("no debt", state, lambda: pm.liquidate_collateral(state, KEEPER, TRADER, WETH, 1))


# ---------------------------------------------------------------- settle_bad_debt


def test_settle_bad_debt() -> None:
    state = make_state()
    state.account(TRADER).cash = -150_000 * WAD
    house = state.house.cash
    assert pm.settle_bad_debt(state, TRADER) == (150_000 * WAD, 100_000 * WAD, 50_000 * WAD, house - 50_000 * WAD, 0)
    assert state.insurance_fund == 0 and state.house.cash == house - 50_000 * WAD
    assert state.accounts[TRADER].cash == 0


def test_settle_bad_debt_reverts() -> None:
    state = make_state()
    reverts("house", state, lambda: pm.settle_bad_debt(state, ENGINE))
    with_position(state, -5 * WAD, 0, WAD, -2_000 * WAD)
    reverts("open positions", state, lambda: pm.settle_bad_debt(state, TRADER))
    state.accounts[TRADER].positions.clear()
    state.accounts[TRADER].collateral[WBTC] = 1
    reverts("has collateral", state, lambda: pm.settle_bad_debt(state, TRADER))
    state.accounts[TRADER].collateral.clear()
    state.accounts[TRADER].cash = 0
    reverts("no bad debt", state, lambda: pm.settle_bad_debt(state, TRADER))


# ---------------------------------------------------------------- feeds


def test_set_answer() -> None:
    state = make_state()
    feed = state.feeds[ETH_FEED]
    assert pm.set_answer(state, ETH_FEED, 1, T0 + 5) == 2
    assert (feed.answer, feed.updated_at, feed.round_id) == (1, T0 + 5, 2)
    reverts("answer out of range", state, lambda: pm.set_answer(state, ETH_FEED, 0, T0))
    reverts("answer out of range", state, lambda: pm.set_answer(state, ETH_FEED, feed.max_answer + 1, T0))
    reverts("not updater", state, lambda: pm.set_answer(state, ETH_FEED, 5, T0, sender=TRADER, updater=OWNER))
    pm.set_answer(state, ETH_FEED, feed.max_answer, T0, sender=OWNER, updater=OWNER)


# ---------------------------------------------------------------- admin


def test_pause_and_unpause() -> None:
    state = make_state()
    reverts("not owner", state, lambda: pm.pause(state, TRADER))
    reverts("not paused", state, lambda: pm.unpause(state, OWNER))
    pm.pause(state, OWNER)
    reverts("paused", state, lambda: pm.pause(state, OWNER))
    reverts("not owner", state, lambda: pm.unpause(state, TRADER))    # the owner check comes first
    pm.deposit(state, TRADER, USDC, 1)                                 # deposits go on while paused
    pm.unpause(state, OWNER)


def test_parameter_validation() -> None:
    state = make_state()
    reverts("not owner", state, lambda: pm.set_params(state, TRADER, WAD + 1, 0, 0))
    reverts("bad params", state, lambda: pm.set_params(state, OWNER, WAD + 1, 0, 0))
    reverts("bad params", state, lambda: pm.set_params(state, OWNER, WAD, 0, MAX_PRICE + 1))
    pm.set_params(state, OWNER, WAD, 60, MAX_PRICE)
    assert (state.params.keeper_share, state.params.max_price_age, state.params.dust_notional) == (WAD, 60, MAX_PRICE)

    reverts("not listed", state, lambda: pm.set_market_params(state, OWNER, 2, WAD // 10, WAD // 20, 1, 0, 0))
    for imf, mmf, fee, taker in ((WAD + 1, WAD // 2, 1, 0), (WAD // 2, WAD // 2, 1, 0), (WAD // 2, 2, 2, 0),
                                 (WAD // 2, 2, 0, 0), (WAD // 2, 2, 1, WAD)):
        reverts("bad params", state, lambda: pm.set_market_params(state, OWNER, 0, imf, mmf, fee, taker, 0))
    pm.set_market_params(state, OWNER, 0, WAD, 2, 1, WAD - 1, 7)
    assert state.markets[0].oi_cap == 7

    reverts("not listed", state, lambda: pm.set_collateral_params(state, OWNER, UNLISTED, 0, 0, 0, 0))
    reverts("bad params", state, lambda: pm.set_collateral_params(state, OWNER, WETH, 2, 1, 0, 0))
    reverts("bad params", state, lambda: pm.set_collateral_params(state, OWNER, WETH, 0, WAD // 2, WAD // 2, 0))
    reverts("", state, lambda: pm.set_collateral_params(state, OWNER, WETH, 0, 1, UINT256_MAX, 0))   # uint overflow
    pm.set_collateral_params(state, OWNER, WETH, 0, 0, WAD - 1, 5)
    assert state.collaterals[0].deposit_cap == 5


def test_seeds() -> None:
    state = make_state()
    w = funded_wallets(OWNER)
    reverts("not owner", state, lambda: pm.seed_house(state, TRADER, 1, w), w)
    reverts("zero amount", state, lambda: pm.seed_insurance(state, OWNER, 0, w), w)
    reverts("amount too large", state, lambda: pm.seed_house(state, OWNER, MAX_AMOUNT + 1, w), w)
    assert pm.seed_house(state, OWNER, 2, w) == 10_000_000 * WAD + 2 * QS
    assert pm.seed_insurance(state, OWNER, 3, w) == 100_000 * WAD + 3 * QS
    w.approve(USDC, OWNER, ENGINE, 0)
    reverts("insufficient allowance", state, lambda: pm.seed_insurance(state, OWNER, 1, w), w)


def test_arguments_outside_their_abi_type_are_config_errors() -> None:
    state = make_state()
    with pytest.raises(pm.ConfigError):
        pm.deposit(state, TRADER, USDC, -1)
    with pytest.raises(pm.ConfigError):
        pm.trade(state, TRADER, 0, 2**255, 0)
    with pytest.raises(pm.ConfigError):
        pm.liquidate(state, KEEPER, TRADER, -1, 1)


def test_cash_overflow_reverts_like_the_engine() -> None:
    state = make_state()
    state.account(TRADER).cash = 2**255 - 1
    reverts("", state, lambda: pm.deposit(state, TRADER, USDC, 1))
