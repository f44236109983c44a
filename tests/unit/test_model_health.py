"""protocol_model.health: prices, health, margin ratio, liquidation price and the HealthBook.

Numbers are worked out by hand in the comments (USD amounts in WAD unless said otherwise).
"""

from __future__ import annotations

import random

import pytest
from hypothesis import given
from hypothesis import strategies as st

import protocol_model as pm
from protocol_model import WAD, Revert
from protocol_model.health import UNBOUNDED_RATIO, HealthBook, answer_to_price, overflow_safe
from protocol_model.wad import MAX_AMOUNT, MAX_PRICE

ENGINE = "0x00000000000000000000000000000000000000E0"
USDC = "0x0000000000000000000000000000000000000001"
WETH = "0x0000000000000000000000000000000000000002"
WBTC = "0x0000000000000000000000000000000000000003"
ETH_FEED = "0x00000000000000000000000000000000000000F1"
BTC_FEED = "0x00000000000000000000000000000000000000F2"
OWNER = "0x000000000000000000000000000000000000000A"
TRADER = "0x000000000000000000000000000000000000000B"
T0 = 1_000_000
SCALE = 10**10          # 8-decimal feeds


def make_state(eth: int = 2_000, btc: int = 60_000, weth_decimals: int = 18, wbtc_decimals: int = 8) -> pm.ProtocolState:
    """The default listing (docs/protocol.md), prices in whole USD, feeds fresh at T0."""
    feeds = {
        ETH_FEED: pm.Feed(ETH_FEED, 8, eth * 10**8, T0, 1, 1, MAX_PRICE // SCALE),
        BTC_FEED: pm.Feed(BTC_FEED, 8, btc * 10**8, T0, 1, 1, MAX_PRICE // SCALE),
    }
    markets = [
        pm.Market(0, ETH_FEED, SCALE, WAD // 10, WAD // 20, WAD // 50, 5 * 10**14, name="ETH-PERP"),
        pm.Market(1, BTC_FEED, SCALE, WAD // 10, WAD // 20, WAD // 50, 5 * 10**14, name="BTC-PERP"),
    ]
    collaterals = [
        pm.Collateral(WETH, ETH_FEED, SCALE, weth_decimals, 10**weth_decimals, 80 * 10**16, 85 * 10**16, 5 * 10**16, 0, 0, "WETH"),
        pm.Collateral(WBTC, BTC_FEED, SCALE, wbtc_decimals, 10**wbtc_decimals, 75 * 10**16, 80 * 10**16, 5 * 10**16, 0, 1, "WBTC"),
    ]
    params = pm.Params(USDC, 10**12, WAD // 2, 3_600, 10 * WAD, owner=OWNER)
    state = pm.ProtocolState(ENGINE, params, markets, collaterals, feeds, timestamp=T0)
    state.insurance_fund = 100_000 * WAD
    state.house.cash = 10_000_000 * WAD
    return state


def account(cash: int = 0, positions: dict[int, tuple[int, int]] | None = None, collateral: dict[str, int] | None = None,
            address: str = TRADER) -> pm.Account:
    return pm.Account(address, cash, dict(collateral or {}),
                      {m: pm.Position(s, q) for m, (s, q) in (positions or {}).items()})


# ---------------------------------------------------------------- prices


def test_price_normalises_the_answer() -> None:
    state = make_state()
    assert pm.price(state, ETH_FEED, strict=True) == 2_000 * WAD
    assert pm.price(state, BTC_FEED, strict=False) == 60_000 * WAD


@pytest.mark.parametrize("answer", [0, -5])
def test_non_positive_answer_is_a_bad_price_strictly_and_zero_loosely(answer: int) -> None:
    state = make_state()
    state.feeds[ETH_FEED].answer = answer
    with pytest.raises(Revert) as exc:
        pm.price(state, ETH_FEED, strict=True)
    assert exc.value.reason == "bad price"
    assert pm.price(state, ETH_FEED, strict=False) == 0


def test_answer_above_max_price_is_bad_strictly_and_clamped_loosely() -> None:
    state = make_state()
    top = MAX_PRICE // SCALE
    state.feeds[ETH_FEED].answer = top
    assert pm.price(state, ETH_FEED, strict=True) == top * SCALE      # the largest usable answer
    state.feeds[ETH_FEED].answer = top + 1
    with pytest.raises(Revert) as exc:
        pm.price(state, ETH_FEED, strict=True)
    assert exc.value.reason == "bad price"
    assert pm.price(state, ETH_FEED, strict=False) == MAX_PRICE
    assert answer_to_price(top + 1, SCALE) == MAX_PRICE
    assert answer_to_price(0, SCALE) == 0


def test_staleness_boundary_and_future_updates() -> None:
    state = make_state()
    feed = state.feeds[ETH_FEED]
    state.timestamp = feed.updated_at + 3_600                   # exactly max_price_age old: usable
    assert pm.price(state, ETH_FEED, strict=True) == 2_000 * WAD
    state.timestamp += 1                                        # one second more: stale
    with pytest.raises(Revert) as exc:
        pm.price(state, ETH_FEED, strict=True)
    assert exc.value.reason == "stale price"
    assert pm.price(state, ETH_FEED, strict=False) == 2_000 * WAD   # views ignore the age
    state.timestamp = feed.updated_at - 100                     # an update "in the future": age 0
    assert pm.price(state, ETH_FEED, strict=True) == 2_000 * WAD


@pytest.mark.parametrize("answer", [0, -5, MAX_PRICE // SCALE + 1])
def test_preview_reads_reject_a_bad_price_at_any_age(answer: int) -> None:
    # PREVIEW (the preview views): a bad price reverts as in a strict read, fresh or stale
    state = make_state()
    state.feeds[ETH_FEED].answer = answer
    for t in (T0, T0 + 3_601):
        state.timestamp = t
        with pytest.raises(Revert) as exc:
            pm.price(state, ETH_FEED, pm.PREVIEW)
        assert exc.value.reason == "bad price"
    assert pm.price(state, ETH_FEED, pm.LOOSE) == answer_to_price(answer, SCALE)


def test_preview_reads_ignore_the_age() -> None:
    state = make_state()
    state.timestamp = T0 + 3_601                                # stale for a strict read
    with pytest.raises(Revert) as exc:
        pm.price(state, ETH_FEED, pm.STRICT)
    assert exc.value.reason == "stale price"
    assert pm.price(state, ETH_FEED, pm.PREVIEW) == 2_000 * WAD
    state.timestamp = T0 + 10**15
    assert pm.price(state, ETH_FEED, pm.PREVIEW) == pm.price(state, ETH_FEED, pm.LOOSE) == 2_000 * WAD
    top = MAX_PRICE // SCALE                                    # the top of the range is usable
    state.feeds[ETH_FEED].answer = top
    assert pm.price(state, ETH_FEED, pm.PREVIEW) == top * SCALE


def test_read_feed_reports_instead_of_raising() -> None:
    # _read: the clamped price and its status; only STRICT and LIQUIDATION reads check the age
    state = make_state()
    feed = state.feeds[ETH_FEED]
    stale_at = feed.updated_at + 3_601
    for mode in (pm.STRICT, pm.LIQUIDATION):
        assert pm.read_feed(feed, SCALE, stale_at, 3_600, mode) == (2_000 * WAD, pm.PRICE_STALE)
        assert pm.read_feed(feed, SCALE, stale_at, 3_601, mode) == (2_000 * WAD, pm.PRICE_OK)
    for mode in (pm.LOOSE, pm.PREVIEW):
        assert pm.read_feed(feed, SCALE, stale_at, 3_600, mode) == (2_000 * WAD, pm.PRICE_OK)
    feed.answer = 0
    assert pm.read_feed(feed, SCALE, stale_at, 3_600, pm.STRICT) == (0, pm.PRICE_BAD)   # bad before stale
    with pytest.raises(pm.ConfigError):
        pm.read_feed(feed, SCALE, stale_at, 3_600, 7)


def test_each_market_and_collateral_reads_its_own_max_age() -> None:
    # The WETH collateral under the ETH feed with a one-day age, ETH-PERP with one minute: 2 minutes
    # after the last answer the collateral's price is usable and the market's is not.
    state = make_state()
    state.markets[0].max_price_age = 60
    state.collateral_by_token(WETH).max_price_age = 86_400
    state.timestamp = state.feeds[ETH_FEED].updated_at + 120
    assert pm.term_price(state, state.collateral_by_token(WETH), pm.LIQUIDATION) == (2_000 * WAD, True)
    assert pm.term_price(state, state.markets[0], pm.LIQUIDATION) == (2_000 * WAD, False)
    with pytest.raises(Revert) as exc:
        pm.term_price(state, state.markets[0], pm.STRICT)
    assert exc.value.reason == "stale price"
    assert pm.health(state, account(0, None, {WETH: WAD}), pm.STRICT) == (2_000 * WAD, 1_600 * WAD, 1_700 * WAD)


def test_unknown_feed_is_a_config_error() -> None:
    with pytest.raises(pm.ConfigError):
        pm.price(make_state(), "0x00000000000000000000000000000000000000FF", strict=False)


# ---------------------------------------------------------------- health, by hand


def test_health_of_a_long_with_cash() -> None:
    # cash 1000, long 1 ETH bought at 2000 (quote -2000), P = 2000:
    # upnl 0, notional 2000, req_init 200, req_maint 100
    h = pm.health(make_state(), account(1_000 * WAD, {0: (WAD, -2_000 * WAD)}))
    assert h == (1_000 * WAD, 800 * WAD, 900 * WAD)


def test_health_with_collaterals() -> None:
    # + 1 WETH: value 2000, init +1600, maint +1700; + 0.5 WBTC (8 decimals): value 30000,
    # init +22500 (0.75), maint +24000 (0.80)
    acc = account(1_000 * WAD, {0: (WAD, -2_000 * WAD)}, {WETH: WAD, WBTC: 5 * 10**7})
    b = pm.breakdown(make_state(), acc)
    assert b.collateral_value == 32_000 * WAD
    assert b.collateral_init == 24_100 * WAD
    assert b.collateral_maint == 25_700 * WAD
    assert b.req_init == 200 * WAD and b.req_maint == 100 * WAD and b.upnl == 0
    assert pm.health(make_state(), acc) == (33_000 * WAD, 24_900 * WAD, 26_600 * WAD)


def test_health_rounds_against_the_account() -> None:
    # short 1 wei at P = 1.5 USD: upnl = mul_down(-1, 1.5e18) = -2 (not -1);
    # notional = mul_up(1, 1.5e18) = 2; requirements mul_up(2, 0.1) = mul_up(2, 0.05) = 1
    state = make_state()
    state.feeds[ETH_FEED].answer = 150_000_000
    assert pm.health(state, account(0, {0: (-1, 0)})) == (-2, -3, -3)
    # 3 wei of WETH at 1.5 USD: value floor(4.5) = 4; maint mul_down(4, 0.85) = 3, init 3
    assert pm.health(state, account(0, None, {WETH: 3})) == (4, 3, 3)


def test_health_reads_markets_then_collaterals_and_reports_the_first_bad_price() -> None:
    state = make_state()
    state.feeds[ETH_FEED].answer = 0                  # bad
    state.feeds[BTC_FEED].updated_at = T0 - 3_601     # stale
    # market 1 (BTC, stale) is read before collateral WETH (ETH, bad)
    with pytest.raises(Revert) as exc:
        pm.health(state, account(0, {1: (WAD, -60_000 * WAD)}, {WETH: WAD}), strict=True)
    assert exc.value.reason == "stale price"
    # market 0 (ETH, bad) before market 1 (BTC, stale)
    with pytest.raises(Revert) as exc:
        pm.health(state, account(0, {1: (WAD, 0), 0: (WAD, 0)}), strict=True)
    assert exc.value.reason == "bad price"
    # only the prices an account uses are read
    assert pm.health(state, account(5 * WAD), strict=True) == (5 * WAD, 5 * WAD, 5 * WAD)
    # loosely, nothing reverts: ETH counts 0
    assert pm.health(state, account(0, None, {WETH: WAD})) == (0, 0, 0)


def test_liquidation_health_counts_unusable_prices_against_the_account() -> None:
    # SPEC 6 "Prices a liquidation needs": a collateral with an unusable price is worth 0; a position
    # in a market with an unusable price counts its loss at the last answer and none of its profit,
    # with its requirements at that answer. The views (LOOSE) still read every answer.
    state = make_state()
    state.feeds[ETH_FEED].answer = 0                  # bad
    state.feeds[BTC_FEED].updated_at = T0 - 3_601     # stale
    winner = account(0, {1: (WAD, -50_000 * WAD)}, {WETH: WAD})   # +10,000 on BTC, 1 WETH at a bad price
    loser = account(0, {1: (WAD, -70_000 * WAD)})                 # -10,000 on BTC
    for mode in (pm.LIQUIDATION,):
        assert pm.health(state, winner, mode) == (0, -6_000 * WAD, -3_000 * WAD)
        assert pm.health(state, loser, mode) == (-10_000 * WAD, -16_000 * WAD, -13_000 * WAD)
    # PREVIEW ignores ages: the stale BTC profit counts; the bad WETH still does not
    assert pm.health(state, winner, pm.PREVIEW) == (10_000 * WAD, 4_000 * WAD, 7_000 * WAD)
    assert pm.health(state, winner, pm.LOOSE) == (10_000 * WAD, 4_000 * WAD, 7_000 * WAD)   # ETH clamps to 0
    with pytest.raises(Revert) as exc:
        pm.health(state, winner, pm.STRICT)
    assert exc.value.reason == "stale price"


def test_the_total_collateral_bound_is_exact() -> None:
    # MAX_TOTAL_COLLATERAL whole tokens at P = MAX_PRICE: balance * P fits int256 for 18 decimals,
    # one whole token more does not (the tightest case); for fewer decimals the product is smaller
    # and value * weight < value * WAD is the same bound.
    bound = pm.MAX_TOTAL_COLLATERAL
    assert bound * 10**18 * MAX_PRICE <= 2**255 - 1 < (bound + 1) * 10**18 * MAX_PRICE
    assert 2**95 < bound < 2**96


@pytest.mark.parametrize("decimals", [0, 6, 8, 18])
def test_health_at_the_total_collateral_bound_never_overflows(decimals: int) -> None:
    # The worst case: the whole bound in one account, the loose clamp to exactly MAX_PRICE, the largest
    # weight (WAD - 1), and both collaterals and both markets at their bounds.
    state = make_state(weth_decimals=decimals, wbtc_decimals=decimals)
    for col in state.collaterals:
        col.init_weight = col.maint_weight = WAD - 1
        col.liquidation_discount = 0
    for f in state.feeds.values():
        f.answer = 2**200                             # above the range: read as MAX_PRICE
    bound = pm.MAX_TOTAL_COLLATERAL * 10**decimals
    acc = account(0, {0: (2**100, 0), 1: (-(2**100), 0)}, {WETH: bound, WBTC: bound})
    value = bound * MAX_PRICE // 10**decimals
    upnl = 2**200 // WAD - (-(-(2**200) // WAD))     # the long's floor plus the short's (-ceil): -1
    notional = -(-(2**200) // WAD)                    # mul_up(2**100, MAX_PRICE) = mul_up(|size|, P)
    h = pm.health(state, acc)
    assert h.equity == 2 * value + upnl
    assert h.maint_health == 2 * (value * (WAD - 1) // WAD) + upnl - 2 * -(-notional // 20)
    if decimals == 18:                                # one whole token more overflows balance * P
        acc.collateral[WETH] = bound + 10**18
        with pytest.raises(Revert) as exc:
            pm.health(state, acc)
        assert exc.value.reason == ""


def test_health_overflow_reverts_like_the_engine() -> None:
    # 2**128 - 1 units of a 6-decimal collateral at the largest price: value * weight overflows int256
    state = make_state(weth_decimals=6)
    state.feeds[ETH_FEED].answer = MAX_PRICE // SCALE
    acc = account(0, None, {WETH: MAX_AMOUNT - 1})
    assert not overflow_safe(state, acc)
    with pytest.raises(Revert) as exc:
        pm.health(state, acc)
    assert exc.value.reason == ""
    assert overflow_safe(state, account(0, None, {WETH: 10**30}))


def test_is_liquidatable_and_bankrupt() -> None:
    state = make_state()
    acc = account(50 * WAD, {0: (WAD, -2_000 * WAD)})           # maint = 50 - 100 < 0, equity 50
    assert pm.is_liquidatable(state, acc) and not pm.is_bankrupt(state, acc)
    acc = account(-1, {0: (WAD, -2_000 * WAD)})
    assert pm.is_bankrupt(state, acc)


# ---------------------------------------------------------------- margin ratio


def test_margin_ratio() -> None:
    state = make_state()
    # req_maint 100 over a balance of 1000: 10 %
    assert pm.margin_ratio(state, account(1_000 * WAD, {0: (WAD, -2_000 * WAD)})) == WAD // 10
    # liquidatable: 100 / 50 = 200 %, rounded up
    assert pm.margin_ratio(state, account(50 * WAD, {0: (WAD, -2_000 * WAD)})) == 2 * WAD
    # exactly at the edge (maint_health == 0, not liquidatable): just below 100 %
    acc = account(100 * WAD, {0: (WAD, -2_000 * WAD)})
    assert pm.health(state, acc).maint_health == 0
    assert pm.margin_ratio(state, acc) == WAD - 1
    # no requirement, or no balance
    assert pm.margin_ratio(state, account(-5 * WAD, None, {WETH: WAD})) is None
    assert pm.margin_ratio(state, account(-10 * WAD, {0: (WAD, -2_000 * WAD)})) == UNBOUNDED_RATIO


@given(cash=st.integers(-3_000, 3_000), size=st.integers(-10**19, 10**19).filter(bool), weth=st.integers(0, 10**18))
def test_margin_ratio_is_at_least_one_exactly_when_liquidatable(cash: int, size: int, weth: int) -> None:
    state = make_state()
    acc = account(cash * WAD, {0: (size, -pm.mul_down(size, 1_990 * WAD))}, {WETH: weth} if weth else None)
    ratio = pm.margin_ratio(state, acc)
    assert ratio is not None
    assert (ratio >= WAD) == (pm.health(state, acc).maint_health < 0)


# ---------------------------------------------------------------- liquidation price


def maint_at(state: pm.ProtocolState, acc: pm.Account, feed: str, answer: int) -> int:
    probe = state.copy()
    probe.feeds[feed].answer = answer
    return pm.health(probe, acc).maint_health


def assert_boundary(state: pm.ProtocolState, acc: pm.Account, market_id: int, lp: int) -> None:
    """At the returned price maint_health < 0; one feed unit on the safe side it is >= 0."""
    feed = state.markets[market_id].feed
    a = lp // SCALE
    assert a * SCALE == lp
    assert maint_at(state, acc, feed, a) < 0
    safe = a + 1 if a < state.feeds[feed].answer else a - 1
    assert maint_at(state, acc, feed, safe) >= 0


def test_liquidation_price_of_a_long_by_hand() -> None:
    # cash 200, long 1 ETH at 2000: maint(a) = a * 9.5e9 - 1800e18 in feed units a (8 decimals),
    # negative below a = 189473684210.53: the first liquidatable answer is 189473684210.
    state = make_state()
    acc = account(200 * WAD, {0: (WAD, -2_000 * WAD)})
    lp = pm.liquidation_price(state, acc, 0)
    assert lp == 189_473_684_210 * SCALE
    assert_boundary(state, acc, 0, lp)


def test_liquidation_price_of_a_short_by_hand() -> None:
    # cash 200, short 1 ETH at 2000: maint = 200 - P + 2000 - 0.05 P = 2200 - 1.05 P;
    # in feed units 2200e18 - a * 1.05e10 < 0 above a = 209523809523.8: first bad a = 209523809524
    state = make_state()
    acc = account(200 * WAD, {0: (-WAD, 2_000 * WAD)})
    lp = pm.liquidation_price(state, acc, 0)
    assert lp == 209_523_809_524 * SCALE
    assert_boundary(state, acc, 0, lp)


def test_liquidation_price_moves_shared_feed_collateral() -> None:
    # 1 WETH + short 1 ETH-PERP (quote +2000), cash 0, one ETH/USD feed for both:
    # maint = 0.85 P - P + 2000 - 0.05 P = 2000 - 0.2 P: liquidatable above 10,000 USD
    # (a = 1e12 gives exactly 0, so the first liquidatable answer is 1e12 + 1).
    # Holding WETH at 2000 instead would give 3700 - 1.05 P, about 3524 USD: wrong.
    state = make_state()
    acc = account(0, {0: (-WAD, 2_000 * WAD)}, {WETH: WAD})
    lp = pm.liquidation_price(state, acc, 0)
    assert lp == (10**12 + 1) * SCALE
    assert_boundary(state, acc, 0, lp)
    # long 1 ETH-PERP on 1 WETH: maint = 0.85 P + P - 2000 - 0.05 P = 1.8 P - 2000, below 1111.11
    acc = account(0, {0: (WAD, -2_000 * WAD)}, {WETH: WAD})
    lp = pm.liquidation_price(state, acc, 0)
    assert lp == 111_111_111_111 * SCALE
    assert_boundary(state, acc, 0, lp)


def test_liquidation_price_holds_other_feeds() -> None:
    # an ETH long plus a BTC long and WBTC: only the ETH feed moves
    state = make_state()
    acc = account(100 * WAD, {0: (WAD, -2_000 * WAD), 1: (WAD // 10, -6_000 * WAD)}, {WBTC: 10**6})
    lp = pm.liquidation_price(state, acc, 0)
    assert lp is not None and lp < 2_000 * WAD
    assert_boundary(state, acc, 0, lp)
    lp_btc = pm.liquidation_price(state, acc, 1)
    assert lp_btc is not None
    assert_boundary(state, acc, 1, lp_btc)


def test_liquidation_price_none_cases() -> None:
    state = make_state()
    # fully cash-backed long: never liquidatable at any usable price
    assert pm.liquidation_price(state, account(2_000 * WAD, {0: (WAD, -2_000 * WAD)}), 0) is None
    # already liquidatable
    assert pm.liquidation_price(state, account(50 * WAD, {0: (WAD, -2_000 * WAD)}), 0) is None
    # nothing priced by that feed
    assert pm.liquidation_price(state, account(10 * WAD, {1: (WAD, -60_000 * WAD)}), 0) is None
    with pytest.raises(pm.ConfigError):
        pm.liquidation_price(state, account(), 7)


@given(cash=st.integers(0, 5_000), size=st.integers(-5 * 10**18, 5 * 10**18).filter(bool),
       weth=st.integers(0, 3 * 10**18), entry=st.integers(1_000, 3_000))
def test_liquidation_price_is_an_exact_boundary(cash: int, size: int, weth: int, entry: int) -> None:
    state = make_state()
    acc = account(cash * WAD, {0: (size, -pm.mul_down(size, entry * WAD))}, {WETH: weth} if weth else None)
    lp = pm.liquidation_price(state, acc, 0)
    if lp is None:
        return
    assert_boundary(state, acc, 0, lp)


# ---------------------------------------------------------------- HealthBook


def random_state(n: int, seed: int) -> pm.ProtocolState:
    rng = random.Random(seed)
    state = make_state()
    for i in range(n):
        address = "0x" + f"{i + 0x100:040x}"
        acc = state.account(address)
        acc.cash = rng.randint(-10**22, 10**23)
        for m in rng.sample([0, 1], rng.randint(0, 2)):
            size = rng.choice([1, -1]) * rng.randint(1, 10**20)
            acc.positions[m] = pm.Position(size, -pm.mul_down(size, rng.randint(10**20, 10**23)))
        for token in rng.sample([WETH, WBTC], rng.randint(0, 2)):
            acc.collateral[token] = rng.randint(1, 10**19)
    state.house.positions[0] = pm.Position(-5 * WAD, 10_000 * WAD)
    return state


def assert_book_matches(book: HealthBook, state: pm.ProtocolState) -> None:
    for acc in list(state.accounts.values()) + [state.house]:
        assert book.health(acc.address) == pm.health(state, acc), acc.address
    expected = [a for a, acc in state.accounts.items() if pm.health(state, acc).maint_health < 0]
    assert sorted(book.liquidatable()) == sorted(expected)


@pytest.mark.parametrize("index", [False, True], ids=["scan", "index"])
def test_health_book_equals_health_under_price_moves(index: bool) -> None:
    state = random_state(300, seed=1)
    book = HealthBook(state, index=index)
    assert len(book) == 301 and ENGINE in book
    assert_book_matches(book, state)
    rng = random.Random(2)
    for step in range(30):
        feed = rng.choice([ETH_FEED, BTC_FEED])
        old = {a: pm.health(state, acc) for a, acc in state.accounts.items()}
        answer = max(1, state.feeds[feed].answer * rng.randint(500, 1500) // 1000)
        changed = book.update_price(feed, answer, T0 + step, None)
        assert state.feeds[feed].answer == answer and state.feeds[feed].updated_at == T0 + step
        assert book.price(feed) == answer * SCALE
        moved = {a for a, acc in state.accounts.items() if pm.health(state, acc) != old[a]}
        if index:   # the candidates whose health changed: every account that became or stopped being liquidatable
            flipped = {a for a in moved if (old[a].maint_health < 0) != (pm.health(state, state.accounts[a]).maint_health < 0)}
            assert flipped <= changed - {ENGINE} <= moved
        else:
            assert changed - {ENGINE} == moved
        assert_book_matches(book, state)


def test_health_book_follows_mirrored_actions() -> None:
    state = random_state(50, seed=3)
    book = HealthBook(state)
    trader = next(iter(state.accounts))
    state.accounts[trader].cash = 10**24
    pm.trade(state, trader, 0, WAD, 2**256 - 1)
    for address in (trader, ENGINE):
        assert book.apply_account(state.account(address)) == pm.health(state, state.account(address))
    pm.deposit(state, "0x" + "ab" * 20, WETH, 10**18)          # a new account
    book.apply_account(state.account("0x" + "ab" * 20))
    assert_book_matches(book, state)
    assert book.health("0x" + "cd" * 20) == (0, 0, 0)           # unknown: the engine's zeros


def test_health_book_rebuild_after_parameter_change() -> None:
    state = random_state(40, seed=4)
    book = HealthBook(state)
    pm.set_market_params(state, OWNER, 0, WAD // 5, WAD // 10, WAD // 50, 0, 0)
    book.rebuild()
    assert_book_matches(book, state)


def test_health_book_reverts_where_the_engine_overflows() -> None:
    state = make_state(weth_decimals=6)
    whale = state.account("0x" + "99" * 20)
    whale.collateral[WETH] = MAX_AMOUNT - 1
    book = HealthBook(state)
    assert book.health(whale.address) == pm.health(state, whale)  # fine at 2000 USD
    book.update_price(ETH_FEED, MAX_PRICE // SCALE, T0)
    with pytest.raises(Revert):
        pm.health(state, whale)
    with pytest.raises(Revert) as exc:
        book.health(whale.address)
    assert exc.value.reason == ""
    assert whale.address not in book.liquidatable()
    book.update_price(ETH_FEED, 2_000 * 10**8, T0)
    assert book.health(whale.address) == pm.health(state, whale)


def test_health_book_rejects_inconsistent_scales() -> None:
    state = make_state()
    state.markets[0].price_scale = 1
    with pytest.raises(pm.ConfigError):
        HealthBook(state)


@pytest.mark.slow
@pytest.mark.parametrize("index", [False, True], ids=["scan", "index"])
def test_health_book_reprices_100k_accounts_exactly(index: bool) -> None:
    """The benchmark's shape: 100,000 accounts with 2 positions and 2 collaterals each. Speed is
    measured by bench/health_bench.py, not asserted here."""
    state = make_state()
    for i in range(100_000):
        acc = state.account("0x" + f"{i + 0x1000:040x}")
        acc.cash = 1_000 * WAD + i
        acc.positions[0] = pm.Position(WAD + i, -2_000 * WAD)
        acc.positions[1] = pm.Position(-(WAD // 10) - i, 6_000 * WAD)
        acc.collateral[WETH] = WAD + i
        acc.collateral[WBTC] = 10**7 + i
    book = HealthBook(state, index=index)
    changed = book.update_price(ETH_FEED, 1_900 * 10**8, T0 + 1)
    assert len(changed) == (0 if index else 100_000)     # the index: no account is near liquidation
    sample = random.Random(5).sample(list(state.accounts.values()), 200)
    assert all(book.health(a.address) == pm.health(state, a) for a in sample)
