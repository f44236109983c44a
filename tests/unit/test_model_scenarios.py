"""protocol_model.scenarios on small hand-built states, every number worked out by hand below.

The listing used throughout (the default deployment's):
  ETH/USD and BTC/USD feeds with 8 decimals; USDC quote with 6 decimals (quote_scale = 10**12);
  ETH-PERP and BTC-PERP: imf 10 %, mmf 5 %, liquidation fee 2 %, no taker fee;
  WETH (18 decimals, ETH feed): init weight 80 %, maint weight 85 %, liquidation discount 5 %;
  keeper_share 50 %, dust_notional 10 USD, max_price_age 3600 s.
Formulas (SPEC 5 and 6): maint = coll_maint + cash + upnl - 5 % notional, init likewise with 10 %;
need = (-init) / (imf - fee) / P; penalty = 2 % of the closed notional, capped at the equity left.
"""

from __future__ import annotations

import copy
import json

import pytest

from protocol_model.errors import ConfigError
from protocol_model.health import health
from protocol_model.scenarios import (
    cascade,
    impact_fraction,
    moved_answer,
    price_shock,
    resolve_feed,
)
from protocol_model.state import Account, Collateral, Feed, Market, Params, Position, ProtocolState

WAD = 10**18
USD = WAD                       # 1 USD in WAD
ETH_FEED = "0x00000000000000000000000000000000000E7Ee0"
BTC_FEED = "0x00000000000000000000000000000000000B7cc0"
USDC = "0x000000000000000000000000000000000000Dc00"
WETH = "0x000000000000000000000000000000000000E700"
ENGINE = "0x00000000000000000000000000000000000E9901"
QS = 10**12                     # USDC quote_scale
A, B, C, E, W = (f"0x{'0' * 39}{i}" for i in "abcef")
X, Y, Z = (f"0x{'0' * 38}{i}" for i in ("a1", "b1", "c1"))


def usd(x: str | int) -> int:
    """Exact USD WAD from a decimal string."""
    from decimal import Decimal

    v = Decimal(str(x)) * WAD
    if v != v.to_integral_value():
        raise ValueError(x)
    return int(v)


def eth(x: str | int) -> int:
    return usd(x)               # base units WAD: same scaling


def make_state(eth_price: int = 2_000, btc_price: int = 60_000, insurance: str = "0") -> ProtocolState:
    params = Params(quote_token=USDC, quote_scale=QS, keeper_share=WAD // 2, max_price_age=3_600,
                    dust_notional=10 * USD, owner="0x" + "11" * 20)
    markets = [
        Market(0, ETH_FEED, 10**10, WAD // 10, WAD // 20, WAD // 50, 0, name="ETH-PERP"),
        Market(1, BTC_FEED, 10**10, WAD // 10, WAD // 20, WAD // 50, 0, name="BTC-PERP"),
    ]
    collaterals = [Collateral(WETH, ETH_FEED, 10**10, 18, 10**18, 80 * 10**16, 85 * 10**16, 5 * 10**16,
                              index=0, symbol="WETH")]
    feeds = {
        ETH_FEED: Feed(ETH_FEED, 8, eth_price * 10**8, 1_000, round_id=1),
        BTC_FEED: Feed(BTC_FEED, 8, btc_price * 10**8, 1_000, round_id=1),
    }
    state = ProtocolState(ENGINE, params, markets, collaterals, feeds, insurance_fund=usd(insurance),
                          total_collateral={WETH: 0}, timestamp=1_000, block=7)
    state.house = Account(ENGINE, cash=10_000_000 * USD)
    return state


def open_position(state: ProtocolState, address: str, cash: str | int, market: int, size: int,
                  entry: int, weth: int = 0) -> None:
    """An account with ``cash`` and a position of ``size`` entered at ``entry`` USD; the house
    books the opposite (quote = -size * entry), as a trade would."""
    acc = state.accounts.setdefault(address, Account(address))
    acc.cash = usd(cash)
    quote = -size * entry
    acc.positions[market] = Position(size, quote)
    if weth:
        acc.collateral[WETH] = weth
        state.total_collateral[WETH] += weth
    hp = state.house.positions.get(market, Position())
    state.house.positions[market] = Position(hp.size - size, hp.quote - quote)


# ---------------------------------------------------------------- helpers


def test_moved_answer_rounds_in_the_direction_of_the_move():
    # 3 * 0.5 = 1.5 -> a fall rounds down to 1; 3 * 1.5 = 4.5 -> a rise rounds up to 5.
    assert moved_answer(3, -WAD // 2) == 1
    assert moved_answer(3, WAD // 2) == 5
    assert moved_answer(2_000 * 10**8, -2 * 10**17) == 1_600 * 10**8     # exact: no rounding
    assert moved_answer(7, 0) == 7


def test_impact_fraction_is_signed_and_rounds_away_from_zero():
    # 1,000,000 USD sold at 1 % per 1M USD -> -1 %.
    assert impact_fraction(-1_000_000 * USD, 10**16) == -(10**16)
    # 110,880 USD sold -> -0.11088 % = -1.1088e15 exactly.
    assert impact_fraction(-110_880 * USD, 10**16) == -1_108_800_000_000_000
    # 1 wei of flow still moves the price by 1 wei of fraction, in its direction.
    assert impact_fraction(1, 1) == 1
    assert impact_fraction(-1, 1) == -1
    assert impact_fraction(0, 10**16) == 0


def test_resolve_feed_accepts_addresses_market_names_and_symbols():
    s = make_state()
    assert resolve_feed(s, ETH_FEED.lower()) == ETH_FEED
    assert resolve_feed(s, "ETH-PERP") == ETH_FEED
    assert resolve_feed(s, "eth") == ETH_FEED
    assert resolve_feed(s, "WETH") == ETH_FEED
    assert resolve_feed(s, "BTC") == BTC_FEED
    with pytest.raises(ConfigError, match="unknown price 'DOGE'"):
        resolve_feed(s, "DOGE")


def test_bad_shocks_are_rejected():
    s = make_state()
    with pytest.raises(ConfigError, match="100%"):
        price_shock(s, {"ETH": -WAD})
    with pytest.raises(ConfigError, match="two shocks"):
        price_shock(s, {"ETH": -1, "WETH": -2})
    with pytest.raises(ConfigError, match="integer"):
        price_shock(s, {"ETH": -0.2})  # type: ignore[dict-item]
    with pytest.raises(ConfigError):
        cascade(s, {}, -1)


# ---------------------------------------------------------------- price shock


def shock_state() -> ProtocolState:
    """ETH at 2,000, BTC at 61,000, insurance fund 250 USD.

    A: cash 1,000, long 4 ETH from 2,000 (quote -8,000).   At 2,000: maint = 1,000 - 400 = 600.
    B: cash 4,500, long 10 ETH from 2,000 (quote -20,000). At 2,000: maint = 4,500 - 1,000 = 3,500.
    C: cash 10,000, long 1 ETH from 2,000.                  Healthy throughout.
    E: cash 1,000, short 1 BTC from 60,000 (quote 60,000). At 61,000: upnl -1,000, equity 0,
       maint = 0 - 3,050 = -3,050: liquidatable before any shock.
    """
    s = make_state(btc_price=61_000, insurance="250")
    open_position(s, A, 1_000, 0, eth(4), 2_000)
    open_position(s, B, 4_500, 0, eth(10), 2_000)
    open_position(s, C, 10_000, 0, eth(1), 2_000)
    open_position(s, E, 1_000, 1, -eth(1), 60_000)
    return s


def test_price_shock_eth_minus_20_percent_hand_checked():
    state = shock_state()
    original = copy.deepcopy(state)
    r = price_shock(state, {"ETH": -2 * 10**17})
    assert state == original                              # the caller's state is untouched

    # ETH 2,000 * 0.8 = 1,600 exactly.
    (move,) = r.moves
    assert (move.feed, move.old_answer, move.new_answer) == (ETH_FEED, 2_000 * 10**8, 1_600 * 10**8)
    assert (move.old_price, move.new_price, move.clamped) == (2_000 * USD, 1_600 * USD, False)
    assert move.label == "ETH-PERP, WETH"
    assert r.refreshed_feeds == []

    # After the shock, at 1,600:
    #   A: upnl 6,400 - 8,000 = -1,600; equity -600; maint = 1,000 - 1,600 - 320 = -920.
    #   B: upnl 16,000 - 20,000 = -4,000; equity 500; maint = 500 - 800 = -300.
    #   C: maint = 10,000 - 400 - 80 > 0.   E: -3,050 as before.
    # Worst maint first: E, A, B. Only A and B are new.
    assert r.liquidatable == [E, A, B]
    assert r.newly_liquidatable == [A, B]
    out = {o.address: o for o in r.accounts}

    # E (BTC at 61,000): init = 0 - 6,100; need = 6,100 / 0.08 / 61,000 = 1.25 BTC > 1 -> closed
    # whole: buys 1 BTC for 61,000, quote 60,000 - 61,000 = -1,000 moves to cash: 1,000 - 1,000 = 0.
    # Penalty 2 % * 61,000 = 1,220; the account pays max(equity 0, 0) = 0 of it; the keeper is paid
    # half of it all the same, 610: the fund's 250, then the house's 360. No bad debt.
    e = out[E]
    assert (e.liquidations, e.volume, e.penalty, e.keeper_reward_native, e.bad_debt) == (1, 61_000 * USD, 1_220 * USD, 610_000_000, 0)
    assert e.insurance == -250 * USD
    assert e.equity_after == 0 and e.maint_health_after == 0

    # A: init = 1,000 - 1,600 - 640 = -1,240; need = 1,240 / 0.08 / 1,600 = 9.6875 > 4 -> whole.
    # Sells 4 ETH for 6,400: volume 6,400. Penalty 128; equity after the close -600 -> the account
    # pays 0; the keeper's 64 come from the house (the fund is empty after E).
    # cash = 1,000 + (-8,000 + 6,400) = -600 and nothing left: settled in the same call, all of it
    # socialised to the house.
    a = out[A]
    assert (a.liquidations, a.volume, a.penalty, a.keeper_reward_native, a.insurance) == (1, 6_400 * USD, 128 * USD, 64_000_000, 0)
    assert (a.bad_debt, a.covered, a.socialised) == (600 * USD, 0, 600 * USD)
    assert a.equity_after == 0 and a.errors == []

    # B: init = 500 - 1,600 = -1,100; need = 1,100 / 0.08 / 1,600 = 8.59375 ETH (exact).
    # Leftover 1.40625 ETH is worth 2,250 > dust: a partial close of 8.59375 ETH for 13,750 USD.
    # Penalty 2 % * 13,750 = 275 (<= equity 500); keeper 137.5 USD = 137,500,000 native units,
    # insurance 137.5. Afterwards: cash 4,225, quote -20,000 + 13,750 = -6,250, size 1.40625:
    # equity 4,225 + 2,250 - 6,250 = 225; init = 225 - 225 = 0; maint = 225 - 112.5 = 112.5.
    b = out[B]
    assert b.liquidations == 1
    assert b.volume == 13_750 * USD
    assert b.penalty == 275 * USD
    assert b.keeper_reward_native == 137_500_000
    assert b.insurance == usd("137.5")
    assert (b.equity_after, b.maint_health_after, b.bad_debt) == (225 * USD, usd("112.5"), 0)

    t = r.totals
    assert r.liquidation_volume == t.volume == (61_000 + 6_400 + 13_750) * USD
    assert t.penalties == (1_220 + 128 + 275) * USD
    assert (t.keeper_rewards_native, t.keeper_rewards) == (811_500_000, usd("811.5"))
    assert t.insurance_inflow == usd("-112.5")
    assert r.bad_debt == t.bad_debt == 600 * USD
    assert (t.covered, t.socialised, t.unsettled_bad_debt) == (0, 600 * USD, 0)
    # The fund: 250 - 250 (E's keeper) + 137.5 (B) = 137.5.
    assert (r.insurance_fund_before, r.insurance_fund_after) == (250 * USD, usd("137.5"))

    # The house, before (ETH 2,000, BTC 61,000): short 15 ETH with quote 30,000 -> 0;
    # long 1 BTC with quote -60,000 -> 1,000; equity 10,001,000.
    # After: it bought 4 + 8.59375 ETH (size -2.40625, quote 30,000 - 6,400 - 13,750 = 9,850), sold
    # 1 BTC (closed: quote -60,000 + 61,000 = 1,000 into cash), paid 360 of E's keeper, 64 of A's
    # and 600 of A's debt: cash 10,000,000 + 1,000 - 1,024 = 9,999,976; ETH upnl -3,850 + 9,850 =
    # 6,000; equity 10,005,976.
    assert r.house_equity_before == 10_001_000 * USD
    assert r.house_equity_after == 10_005_976 * USD

    doc = json.loads(json.dumps(r.to_json()))
    assert doc["totals"]["volume"] == 81_150 * USD
    assert doc["newly_liquidatable"] == [A, B]


def test_price_shock_collateral_liquidation_and_settlement_hand_checked():
    # W: 2 WETH, cash 0, long 10 ETH from 2,000; fund 100. ETH -15% -> 1,700 (WETH moves with it).
    # At 1,700: WETH worth 3,400 (maint 2,890, init 2,720); upnl 17,000 - 20,000 = -3,000;
    # equity 400; maint = 2,890 - 3,000 - 850 = -960; init = 2,720 - 3,000 - 1,700 = -1,980;
    # need = 1,980 / 0.08 / 1,700 = 14.56 > 10 -> closed whole, volume 17,000, penalty 340 (<= 400):
    # keeper 170 USD = 170,000,000 native, insurance 170. cash = -340 - 3,000 = -3,340;
    # maint = 2,890 - 3,340 = -450 < 0 with cash < 0 -> collateral liquidation at
    # 1,700 * 0.95 = 1,615: the 2 WETH cover at most 3,230 < 3,340 -> repay 3,230, seize both.
    # Equity 60 would fall to 60 + 3,230 - 3,400 = -110: the fund credits 110 of the discount to the
    # account (equity never below min(60, 0) = 0), so the cash ends at 0: no bad debt.
    state = make_state(insurance="100")
    open_position(state, W, 0, 0, eth(10), 2_000, weth=2 * 10**18)
    r = price_shock(state, {"WETH": -15 * 10**16})
    assert r.moves[0].new_price == 1_700 * USD
    (w,) = r.accounts
    assert (w.liquidations, w.volume, w.penalty, w.keeper_reward_native) == (1, 17_000 * USD, 340 * USD, 170_000_000)
    assert (w.collateral_liquidations, w.collateral_repaid, w.collateral_seized) == (1, 3_230 * USD, {WETH: 2 * 10**18})
    assert (w.bad_debt, w.covered, w.socialised, w.insurance) == (0, 0, 0, 60 * USD)
    assert r.insurance_fund_after == (100 + 170 - 110) * USD
    assert r.newly_liquidatable == [W]


def test_price_shock_refreshes_stale_feeds():
    state = shock_state()
    state.timestamp = 1_000 + 3_601           # every feed is stale: strict liquidations would revert
    r = price_shock(state, {ETH_FEED: -2 * 10**17})
    assert sorted(r.refreshed_feeds) == sorted([ETH_FEED, BTC_FEED])
    assert r.totals.liquidations == 3 and all(not o.errors for o in r.accounts)


def test_price_shock_clamps_to_what_the_feed_can_publish():
    state = shock_state()
    state.feeds[ETH_FEED].min_answer = 1_900 * 10**8
    r = price_shock(state, {"ETH": -2 * 10**17})
    assert r.moves[0].new_answer == 1_900 * 10**8 and r.moves[0].clamped


def test_no_shock_reports_what_is_already_liquidatable():
    r = price_shock(shock_state(), {})
    assert r.moves == [] and r.liquidatable == [E] and r.newly_liquidatable == []


# ---------------------------------------------------------------- cascade


def cascade_state() -> ProtocolState:
    """ETH at 2,000; insurance fund 1,000. All three are long ETH-PERP from 2,000.

    X: cash 260,000, long 625 ETH (quote -1,250,000).
    Y: cash 48,569.6, long 100 ETH (quote -200,000).
    Z: cash 6,000, long 10 ETH (quote -20,000).
    """
    s = make_state(insurance="1000")
    open_position(s, X, 260_000, 0, eth(625), 2_000)
    open_position(s, Y, "48569.6", 0, eth(100), 2_000)
    open_position(s, Z, 6_000, 0, eth(10), 2_000)
    return s


def test_cascade_second_account_falls_in_round_two_third_never():
    state = cascade_state()
    original = copy.deepcopy(state)
    # ETH -20% -> 1,600; impact 1 % per 1,000,000 USD of net notional liquidated.
    r = cascade(state, {"ETH": -2 * 10**17}, impact_per_notional=10**16)
    assert state == original

    # Round 1 at 1,600:
    #   X: upnl 1,000,000 - 1,250,000 = -250,000; equity 10,000; maint = 10,000 - 50,000 < 0.
    #      init = 10,000 - 100,000 = -90,000; need = 90,000 / 0.08 / 1,600 = 703.125 > 625 -> whole:
    #      sells 625 ETH = 1,000,000 USD; penalty 20,000, the account pays equity 10,000 of it:
    #      keeper 10,000, insurance 0; cash 260,000 - 10,000 - 250,000 = 0.
    #   Y: upnl -40,000; maint = 48,569.6 - 40,000 - 8,000 = 569.6 >= 0: safe this round.
    #   Z: maint = 6,000 - 4,000 - 800 = 1,200.
    # Impact: 1,000,000 USD sold -> -1 %: ETH 1,600 * 0.99 = 1,584.
    r1, r2 = r.rounds
    assert r1.round == 1 and r1.liquidated == [X] and r1.newly_liquidatable == [X]
    assert r1.prices[ETH_FEED] == 1_600 * USD
    assert r1.totals.volume == 1_000_000 * USD
    assert r1.totals.penalties == 20_000 * USD
    assert r1.totals.keeper_rewards == 10_000 * USD and r1.totals.keeper_rewards_native == 10_000 * 10**6
    assert r1.totals.bad_debt == 0
    assert r1.net_flow == {ETH_FEED: -1_000_000 * USD}
    (m1,) = r1.moves
    assert (m1.fraction, m1.new_answer, m1.new_price) == (-(10**16), 1_584 * 10**8, 1_584 * USD)
    assert r1.insurance_fund == 1_000 * USD                     # 1,000 + 10,000 - 10,000

    # Round 2 at 1,584:
    #   Y: upnl 158,400 - 200,000 = -41,600; equity 6,969.6; maint = 6,969.6 - 7,920 = -950.4 < 0.
    #      init = 6,969.6 - 15,840 = -8,870.4; need = 8,870.4 / 0.08 / 1,584 = 70 ETH exactly.
    #      Sells 70 ETH = 110,880 USD; penalty 2,217.6 (<= 6,969.6): keeper 1,108.8 (1,108,800,000
    #      native), insurance 1,108.8. Left: 30 ETH, quote -89,120, cash 46,352:
    #      equity 46,352 + 47,520 - 89,120 = 4,752; init = 4,752 - 4,752 = 0; maint 2,376.
    #   Z: upnl -4,160; maint = 6,000 - 4,160 - 792 = 1,048: safe.
    # Impact: 110,880 USD sold -> -0.11088 %: 158,400,000,000 - 175,633,920 = 158,224,366,080
    # (1,582.2436608 USD).
    assert r2.liquidated == [Y] and r2.newly_liquidatable == [Y]
    assert r2.prices[ETH_FEED] == 1_584 * USD
    assert r2.totals.volume == 110_880 * USD
    assert r2.totals.penalties == usd("2217.6")
    assert r2.totals.keeper_rewards_native == 1_108_800_000
    assert r2.totals.insurance_inflow == usd("1108.8")
    (m2,) = r2.moves
    assert m2.fraction == -1_108_800_000_000_000
    assert m2.new_answer == 158_224_366_080
    assert r2.insurance_fund == usd("2108.8")                   # 1,000 + 1,108.8

    # Round 3 at 1,582.2436608: Y's 30 ETH lose 30 * 1.7563392 = 52.690176, its requirement falls
    # by 2.6345088: maint 2,376 - 52.690176 + 2.6345088 > 0. Z: maint about 1,031. Nobody: done.
    assert r.converged and r.still_liquidatable == []
    assert r.ever_liquidated == [X, Y]                          # Z never
    assert r.final_prices[ETH_FEED] == 158_224_366_080 * 10**10
    assert r.totals.volume == 1_110_880 * USD
    assert r.totals.penalties == usd("22217.6")
    assert r.totals.bad_debt == 0
    assert r.insurance_fund_after == usd("2108.8")

    # Cross-check the simulated end state of Y with the health function on a copy.
    sim = copy.deepcopy(state)
    sim.feeds[ETH_FEED].answer = 1_584 * 10**8
    sim.accounts[Y].positions[0] = Position(eth(30), -89_120 * USD)
    sim.accounts[Y].cash = 46_352 * USD
    assert health(sim, sim.accounts[Y]) == (4_752 * USD, 0, 2_376 * USD)

    json.dumps(r.to_json())


def test_cascade_stops_at_max_rounds():
    r = cascade(cascade_state(), {"ETH": -2 * 10**17}, impact_per_notional=10**16, max_rounds=1)
    assert len(r.rounds) == 1 and not r.converged
    assert r.still_liquidatable == [Y]


def test_cascade_without_impact_is_one_round():
    r = cascade(cascade_state(), {"ETH": -2 * 10**17}, impact_per_notional=0)
    assert [rd.liquidated for rd in r.rounds] == [[X]]
    assert r.rounds[0].moves == [] and r.converged
    assert r.final_prices[ETH_FEED] == 1_600 * USD


def test_cascade_short_liquidations_push_the_price_up():
    # S: cash 1,000, short 1 BTC from 60,000; BTC +1.5 % -> 60,900: upnl -900, equity 100,
    # maint = 100 - 3,045 < 0; init = 100 - 6,090; need = 5,990 / 0.08 / 60,900 > 1 -> whole:
    # buys 60,900 USD; impact 1 % per 1M -> +0.0609 %: 60,900 * 1.000609 = 60,937.0881.
    s = make_state()
    open_position(s, A, 1_000, 1, -eth(1), 60_000)
    r = cascade(s, {"BTC": 15 * 10**15}, impact_per_notional=10**16)
    (rd,) = r.rounds
    assert rd.net_flow == {BTC_FEED: 60_900 * USD}
    assert rd.moves[0].fraction == 609_000_000_000_000
    assert rd.moves[0].new_price == usd("60937.0881")
    assert rd.moves[0].new_price > rd.prices[BTC_FEED]


def test_dust_collateral_never_loops():
    # D: no position, cash -100, 1 wei of WETH (worth 2e-15 USD): liquidatable with cash < 0.
    # Whether a keeper can take the dust (and the debt then settles) or the engine rejects the
    # collateral liquidation, both scenarios terminate and the bad-debt books balance.
    state = make_state(insurance="1000")
    state.accounts[A] = Account(A, cash=-100 * USD, collateral={WETH: 1})
    state.total_collateral[WETH] = 1
    r = price_shock(state, {})
    (d,) = r.accounts
    # Equity -100 USD + 2,000 wei (1 wei * 2,000 USD); a keeper takes the dust for a repay of 0 and
    # the fund credits its 2,000 wei (equity may not fall), so the debt settled is 100 USD - 2,000.
    assert d.settled and d.bad_debt == 100 * USD - 2_000
    t = r.totals
    assert t.bad_debt == t.covered + t.socialised + t.unsettled_bad_debt
    assert (r.stuck == [A]) == (not d.settled) == bool(d.errors)

    c = cascade(state, {}, impact_per_notional=10**16)
    assert c.converged or (c.stuck and c.still_liquidatable == [A])
    assert len(c.rounds) <= 1
