"""MarginEngine.liquidate_many and preview_liquidate_many: a batch executed in order, each order
as the single action would; every skip reason (``LiquidationSkipped`` with its code); the events,
``BadDebtSettled`` and the fund and house values they carry; a malformed order or a failed
transfer reverting the whole call; who may call it; the per-order preview. And
set_market_price_age / set_collateral_price_age: success, every revert, events, owner only.

The model (``protocol_model.actions.liquidate_many``, ``preview_liquidate_many``,
``set_*_price_age``) runs on the state loaded from the chain before each call and must agree with
it exactly: the count returned, every order's outcome and event values, the resulting state.
"""

from __future__ import annotations

import pytest
from eth_tester.exceptions import TransactionFailed
from web3.exceptions import ContractLogicError

import protocol_model as pm
from engine_helpers import BTC, ETH, IMF, LIQ_FEE, MAX_UINT, MMF, WAD, contract_events, deploy_source, events, reverts, \
    set_next_timestamp, updated_at
from protocol_model.chain import revert_reason
from protocol_model.errors import Revert
from protocol_model.loader import load_state
from test_engine_collateral_liquidation import realise_eth_loss
from test_engine_liquidate import SETTABLE_FEED_SOURCE

ZERO = "0x" + "00" * 20
SKIP = {reason: code for code, reason in pm.SKIP_REASONS.items()}


# ---------------------------------------------------------------- helpers


def pos(account: str, market: int, max_size: int = MAX_UINT) -> pm.LiquidationOrder:
    return pm.LiquidationOrder.position(account, market, max_size)


def col(account: str, token: str, max_repay: int = MAX_UINT) -> pm.LiquidationOrder:
    return pm.LiquidationOrder.collateral(account, token, max_repay)


def pending_timestamp(p) -> int:
    return int(p.w3.provider.ethereum_tester.get_block_by_number("pending")["timestamp"]) \
        if hasattr(p.w3.provider, "ethereum_tester") else int(p.w3.eth.get_block("latest")["timestamp"]) + 1


def model(p, accounts: list[str]) -> pm.ProtocolState:
    """The state the next transaction sees, as the model reads it."""
    state = load_state(p.w3, p.dep, accounts)
    state.timestamp = pending_timestamp(p)
    return state


def same_state(a: pm.ProtocolState, b: pm.ProtocolState) -> None:
    assert (a.accounts, a.house, a.insurance_fund, a.total_collateral) == (b.accounts, b.house, b.insurance_fund, b.total_collateral)


def call_reason(fn, sender: str) -> str | None:
    try:
        fn.call({"from": sender})
    except (ContractLogicError, TransactionFailed) as exc:
        return revert_reason(exc)
    return None


def batch(p, caller, orders: list[pm.LiquidationOrder], accounts: list[str]) -> tuple[object, pm.BatchResult]:
    """Send liquidate_many and check it against the model: what it returns, each order's events in
    order (the executed ones' values, the skipped ones' codes), the transfers, the state after."""
    state = model(p, accounts)
    expected = pm.liquidate_many(state, caller.address, orders)
    fn = p.engine.functions.liquidate_many([tuple(o) for o in orders])
    assert fn.call({"from": caller.address}) == expected.executed
    wallet0 = p.quote.functions.balanceOf(caller.address).call()
    receipt = caller.send(fn)
    logs = [log for log in receipt["logs"] if log["address"] == p.engine.address]
    got = []
    for log in logs:
        for name in ("Liquidation", "CollateralLiquidation", "LiquidationSkipped", "BadDebtSettled"):
            try:
                got.append((name, dict(getattr(p.engine.events, name)().process_log(log).args)))
                break
            except Exception:
                continue
    want = []
    for index, (o, out) in enumerate(zip(orders, expected.outcomes)):
        if not out.executed:
            want.append(("LiquidationSkipped", {"account": o.account, "liquidator": caller.address, "index": index,
                                                 "reason": out.status}))
            continue
        if o.is_collateral:
            fields = {k: getattr(out.plan, k) for k in ("repay", "seized", "price", "subsidy", "cash", "collateral",
                                                        "insurance_fund", "house_cash")}
            want.append(("CollateralLiquidation", {"account": o.account, "token": o.token, "liquidator": caller.address, **fields}))
        else:
            fields = {k: getattr(out.plan, k) for k in ("size_delta", "price", "quote_delta", "penalty", "charged",
                                                        "keeper_reward", "insurance_fund", "house_size", "house_quote",
                                                        "house_cash", "size", "quote", "cash")}
            want.append(("Liquidation", {"account": o.account, "market": o.market, "liquidator": caller.address, **fields}))
        if out.settlement is not None:
            want.append(("BadDebtSettled", {"account": o.account, **out.settlement._asdict()}))
    assert got == want
    # One transfer each way: the rewards to the caller, the repayments from it.
    transfers = [list(t.args.values()) for t in contract_events(p.quote, receipt, "Transfer") if t.address == p.quote.address]
    assert transfers == [[caller.address, p.engine.address, expected.repays]] * (expected.repays > 0) + \
        [[p.engine.address, caller.address, expected.rewards]] * (expected.rewards > 0)
    assert p.quote.functions.balanceOf(caller.address).call() == wallet0 + expected.rewards - expected.repays
    same_state(model(p, accounts), state)
    return receipt, expected


def preview_matches_model(p, orders: list[pm.LiquidationOrder], accounts: list[str]) -> list[tuple]:
    got = [tuple(v) for v in p.engine.functions.preview_liquidate_many([tuple(o) for o in orders]).call()]
    assert got == [tuple(v) for v in pm.preview_liquidate_many(model(p, accounts), orders)]
    return got


@pytest.fixture
def book(protocol, actors):
    """trader: 1,000 USDC and 4 ETH long; trader2: 10 WETH and a realised ETH loss (cash < 0);
    rival: 50,000 USDC and 1 ETH long (healthy). Then ETH 1,800: trader and trader2 are
    liquidatable, neither bankrupt."""
    p, t, t2, r = protocol, actors.trader, actors.trader2, actors.rival
    p.deposit(t, "USDC", p.units("USDC", 1_000))
    p.trade(t, "ETH-PERP", 4 * WAD)
    p.deposit(t2, "WETH", p.units("WETH", 10))
    realise_eth_loss(p, t2, 50 * WAD, "1900")            # about -5,100 USD of cash
    p.set_price("ETH", 2000)
    p.trade(t2, "ETH-PERP", 40 * WAD)
    p.deposit(r, "USDC", p.units("USDC", 50_000))
    p.trade(r, "ETH-PERP", WAD)
    p.set_price("ETH", 1800)
    for a in (t, t2):
        assert p.engine.functions.liquidation_health(a.address).call()[2] < 0 < p.health(a.address)[0]
    assert p.health(r.address)[2] > 0
    p.fund(actors.liquidator, "USDC", p.units("USDC", 1_000_000))
    return p, [t.address, t2.address, r.address]


# ---------------------------------------------------------------- liquidate_many


def test_liquidate_many_executes_in_order_and_skips_what_a_single_call_would_reject(book, actors):
    p, accounts = book
    t, t2, r = accounts
    weth, wbtc = p.token("WETH").address, p.token("WBTC").address
    orders = [
        pos(t, ETH),            # executes: closes what restores the initial margin
        pos(t, ETH),            # the same again: healthy now, skipped
        col(t2, weth),          # executes: repays the debt for WETH
        pos(t2, ETH, WAD),      # executes on what the collateral order left
        pos(r, ETH),            # healthy
        col(t2, wbtc),          # healthy by now, or no collateral
        pos(t2, BTC),           # no position or healthy
    ]
    preview = preview_matches_model(p, orders, accounts)
    # The preview reads each order against the current state: the repeated order shows as executed.
    assert [v[0] for v in preview[:3]] == [0, 0, 0]
    receipt, result = batch(p, actors.liquidator, orders, accounts)
    statuses = [o.status for o in result.outcomes]
    assert statuses[0] == 0 and statuses[1] == SKIP["healthy"] and statuses[2] == 0 and statuses[4] == SKIP["healthy"]
    assert result.executed == statuses.count(0) >= 3 and result.rewards > 0 and result.repays > 0


def test_every_skip_reason(protocol, actors, tester):
    """Each state-dependent reason of the single actions is a skip with its code in a batch: the
    single call reverts with that reason, the batch logs LiquidationSkipped and goes on."""
    p, t, t2, r, liq = protocol, actors.trader, actors.trader2, actors.rival, actors.liquidator
    weth, wbtc = p.token("WETH"), p.token("WBTC")
    # trader: liquidatable, cash > 0, no WETH; trader2: liquidatable, cash < 0, WETH and 1 satoshi
    # of WBTC; rival: a position in a market whose feed answers 0 (a bad price).
    feed = deploy_source(p, SETTABLE_FEED_SOURCE, 100 * 10**8)
    p.owner.send(p.engine.functions.list_market(feed.address, IMF, MMF, LIQ_FEE, 0, 0))
    p.deposit(t, "USDC", p.units("USDC", 1_000))
    p.trade(t, "ETH-PERP", 4 * WAD)
    p.deposit(t2, "WETH", p.units("WETH", 10))
    p.deposit(t2, "WBTC", 1)
    realise_eth_loss(p, t2, 50 * WAD, "1900")
    p.set_price("ETH", 2000)
    p.trade(t2, "ETH-PERP", 40 * WAD)
    p.deposit(r, "USDC", p.units("USDC", 1_000))
    r.send(p.engine.functions.trade(2, 50 * WAD, MAX_UINT))
    p.owner.send(feed.functions.set_answer(0))
    p.owner.send(p.engine.functions.set_collateral_price_age(wbtc.address, 60))
    set_next_timestamp(tester, updated_at(p, "BTC") + 3_000)
    p.set_price("ETH", 1800)                                   # ETH fresh, BTC stale for WBTC
    p.fund(liq, "USDC", p.units("USDC", 100_000))
    accounts = [t.address, t2.address, r.address, actors.outsider.address]
    cases = [
        (pos(actors.outsider.address, ETH), "healthy"),
        (col(t.address, weth.address), "no debt"),
        (pos(t2.address, BTC), "no position"),
        (col(t2.address, wbtc.address), "stale price"),
        (pos(r.address, 2), "bad price"),
    ]
    single = {"healthy": p.engine.functions.liquidate(actors.outsider.address, ETH, MAX_UINT),
              "no debt": p.engine.functions.liquidate_collateral(t.address, weth.address, MAX_UINT),
              "no position": p.engine.functions.liquidate(t2.address, BTC, MAX_UINT),
              "stale price": p.engine.functions.liquidate_collateral(t2.address, wbtc.address, MAX_UINT),
              "bad price": p.engine.functions.liquidate(r.address, 2, MAX_UINT)}
    for order, reason in cases:
        assert call_reason(single[reason], liq.address) == reason
    # "no collateral" needs an account with debt and none of the token: test_skip_no_collateral.
    preview = preview_matches_model(p, [o for o, _ in cases], accounts)
    assert [v[0] for v in preview] == [SKIP[reason] for _, reason in cases]
    receipt, result = batch(p, liq, [o for o, _ in cases], accounts)
    assert result.executed == 0 and [o.status for o in result.outcomes] == [SKIP[reason] for _, reason in cases]
    assert p.quote.functions.balanceOf(liq.address).call() == p.units("USDC", 100_000)


def test_skip_no_collateral(book, actors):
    p, accounts = book
    t2 = accounts[1]
    wbtc = p.token("WBTC").address
    assert call_reason(p.engine.functions.liquidate_collateral(t2, wbtc, MAX_UINT), actors.liquidator.address) == "no collateral"
    _, result = batch(p, actors.liquidator, [col(t2, wbtc), pos(accounts[0], ETH)], accounts)
    assert [o.status for o in result.outcomes] == [SKIP["no collateral"], 0]


def test_bankrupt_orders_settle_and_events_carry_the_fund_and_the_house(protocol, actors):
    """Two bankrupt accounts in one batch: each keeper reward paid by the fund, each bad debt
    settled in the same call (BadDebtSettled), the second beyond what the fund has left, so the
    house's cash absorbs the rest; every event carries the resulting fund and house cash."""
    p, t, t2, liq = protocol, actors.trader, actors.trader2, actors.liquidator
    p.deposit(t, "USDC", p.units("USDC", 100_000))
    p.trade(t, "ETH-PERP", 480 * WAD)
    p.deposit(t2, "USDC", p.units("USDC", 10_000))
    p.trade(t2, "ETH-PERP", 48 * WAD)
    p.set_price("ETH", 1500)                                  # -240,000 and -24,000 USD of upnl
    fund0 = p.engine.functions.insurance_fund().call()
    accounts = [t.address, t2.address]
    receipt, result = batch(p, liq, [pos(t2.address, ETH), pos(t.address, ETH)], accounts)
    assert result.executed == 2
    settled = events(p, receipt, "BadDebtSettled")
    assert len(settled) == 2 and all(o.plan.charged == 0 and o.plan.keeper_reward > 0 for o in result.outcomes)
    assert settled[0].args["socialised"] == 0 and settled[1].args["socialised"] > 0   # the fund ran out
    assert settled[1].args["insurance_fund"] == 0 == p.engine.functions.insurance_fund().call()
    assert settled[1].args["house_cash"] == p.cash(p.engine.address)
    assert fund0 < sum(s.args["deficit"] for s in settled) + result.rewards * 10**12
    assert p.cash(t.address) == p.cash(t2.address) == 0


@pytest.mark.parametrize("bad", ["bad order", "not listed market", "not listed token", "zero amount", "house"])
def test_a_malformed_order_reverts_the_whole_batch(book, actors, bad):
    p, accounts = book
    t = accounts[0]
    malformed = {
        "bad order": pm.LiquidationOrder(t, 1, p.token("WETH").address, 1),
        "not listed market": pos(t, 2),
        "not listed token": col(t, p.quote.address),
        "zero amount": pos(t, ETH, 0),
        "house": col(p.engine.address, p.token("WETH").address),
    }[bad]
    reason = bad.removesuffix(" market").removesuffix(" token")
    orders = [pos(t, ETH), malformed, col(accounts[1], p.token("WETH").address)]
    before = model(p, accounts)
    with pytest.raises(Revert) as exc:
        pm.liquidate_many(before, actors.liquidator.address, orders)
    assert exc.value.reason == reason
    same_state(before, model(p, accounts))                  # the model undid the first order too
    fn = p.engine.functions.liquidate_many([tuple(o) for o in orders])
    assert reverts(actors.liquidator, fn) == reason
    assert call_reason(p.engine.functions.preview_liquidate_many([tuple(o) for o in orders]), actors.liquidator.address) == reason
    same_state(before, model(p, accounts))


def test_a_failed_repay_transfer_reverts_the_whole_batch(book, actors):
    """The caller's quote for collateral orders is pulled in one transfer after the orders; without
    an allowance it fails and nothing of the batch stays."""
    p, accounts = book
    outsider = actors.outsider
    p.owner.send(p.quote.functions.mint(outsider.address, p.units("USDC", 100_000)))
    before = model(p, accounts)
    fn = p.engine.functions.liquidate_many([tuple(pos(accounts[0], ETH)), tuple(col(accounts[1], p.token("WETH").address))])
    assert reverts(outsider, fn) != ""
    same_state(before, model(p, accounts))


def test_anyone_may_batch_also_while_paused(book, actors):
    p, accounts = book
    p.owner.send(p.engine.functions.pause())
    outsider = actors.outsider
    _, result = batch(p, outsider, [pos(accounts[0], ETH)], accounts)
    assert result.executed == 1 and p.quote.functions.balanceOf(outsider.address).call() == result.rewards > 0


def test_an_empty_batch_does_nothing(book, actors):
    p, accounts = book
    assert p.engine.functions.liquidate_many([]).call() == 0
    assert p.engine.functions.preview_liquidate_many([]).call() == []
    receipt = actors.liquidator.send(p.engine.functions.liquidate_many([]))
    assert [log for log in receipt["logs"]] == []


def test_the_batch_preview_checks_ages_unlike_the_single_previews(book, actors, tester):
    """preview_liquidate_many checks ages as the action does (a stale order shows SKIP stale
    price); preview_liquidate, the single twin, reads a stale price (docs/protocol.md)."""
    p, accounts = book
    set_next_timestamp(tester, updated_at(p, "ETH") + 3_601)
    p.set_price("BTC", 60_000)                                # a block at the new time; ETH stale
    [v] = preview_matches_model(p, [pos(accounts[0], ETH)], accounts)
    assert v[0] == SKIP["stale price"]
    assert p.engine.functions.preview_liquidate(accounts[0], ETH, MAX_UINT).call()[0] != 0


# ---------------------------------------------------------------- per-feed max price ages


def test_set_market_and_collateral_price_age(protocol, actors, tester):
    p, owner = protocol, protocol.owner
    weth = p.token("WETH").address
    state = model(p, [])
    r = owner.send(p.engine.functions.set_market_price_age(BTC, 86_400))
    [ev] = events(p, r, "MarketPriceAgeSet")
    assert dict(ev.args) == {"market": BTC, "max_price_age": 86_400}
    assert p.engine.functions.market(BTC).call()[7] == 86_400
    r = owner.send(p.engine.functions.set_collateral_price_age(weth, 2**32 - 1))
    [ev] = events(p, r, "CollateralPriceAgeSet")
    assert dict(ev.args) == {"token": weth, "max_price_age": 2**32 - 1}
    assert p.engine.functions.collateral_config(weth).call()[9] == 2**32 - 1
    pm.set_market_price_age(state, owner.address, BTC, 86_400)
    pm.set_collateral_price_age(state, owner.address, weth, 2**32 - 1)
    after = model(p, [])
    assert (after.markets, after.collaterals) == (state.markets, state.collaterals)
    # The engine's own default for later listings is unchanged.
    assert p.engine.functions.max_price_age().call() == 3_600


@pytest.mark.parametrize("case", ["not owner", "market not listed", "token not listed", "market too old", "token too old"])
def test_set_price_age_reverts(protocol, actors, case):
    p = protocol
    weth = p.token("WETH").address
    sender = actors.outsider if case == "not owner" else p.owner
    market_call = {"market not listed": (2, 60), "market too old": (ETH, 2**32)}.get(case, (ETH, 60))
    token_call = {"token not listed": (p.quote.address, 60), "token too old": (weth, 2**32)}.get(case, (weth, 60))
    reason = {"not owner": "not owner", "market not listed": "not listed", "token not listed": "not listed",
              "market too old": "bad params", "token too old": "bad params"}[case]
    state = model(p, [])
    if not case.startswith("token"):
        assert reverts(sender, p.engine.functions.set_market_price_age(*market_call)) == reason
        with pytest.raises(Revert) as exc:
            pm.set_market_price_age(state, sender.address, *market_call)
        assert exc.value.reason == reason
    if not case.startswith("market"):
        assert reverts(sender, p.engine.functions.set_collateral_price_age(*token_call)) == reason
        with pytest.raises(Revert) as exc:
            pm.set_collateral_price_age(state, sender.address, *token_call)
        assert exc.value.reason == reason


def test_each_feed_has_its_own_age(protocol, actors, tester):
    """A market with a 24 h age liquidates on a 2 h old answer; one with a 1 h age does not."""
    p, t, liq = protocol, actors.trader, actors.liquidator
    p.deposit(t, "USDC", p.units("USDC", 1_000))
    p.trade(t, "ETH-PERP", 4 * WAD)
    p.set_price("ETH", 1800)
    set_next_timestamp(tester, updated_at(p, "ETH") + 7_200)
    assert reverts(liq, p.engine.functions.liquidate(t.address, ETH, MAX_UINT)) == "stale price"
    p.owner.send(p.engine.functions.set_market_price_age(ETH, 86_400))
    receipt = liq.send(p.engine.functions.liquidate(t.address, ETH, MAX_UINT))
    assert len(events(p, receipt, "Liquidation")) == 1
