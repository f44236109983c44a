"""MarginEngine owner-only functions and the constructor: effects, events, "not owner" and every
validation reason (docs/protocol.md, "Parameter validation")."""

from __future__ import annotations

import pytest

from protocol_model.deploy import compile_contracts, deploy_contract
from protocol_model.errors import Revert

from engine_helpers import (
    IMF,
    LIQ_FEE,
    MAX_AMOUNT,
    MAX_PRICE,
    MMF,
    TAKER,
    WAD,
    contract_events as events,
    deploy_source,
    new_feed,
    new_token,
    quote_scale,
    reverts,
)

ZERO = "0x0000000000000000000000000000000000000000"

# A contract whose decimals() answers 19: neither the repo's Token nor its PriceFeed can be
# deployed with more than 18, so this stands in for a foreign token or feed.
DECIMALS_19_SOURCE = """
# pragma version 0.4.3

@view
@external
def decimals() -> uint8:
    return 19
"""


def deploy_decimals_19(p):
    return deploy_source(p, DECIMALS_19_SOURCE).address


# ---------------------------------------------------------------- helpers


def owner_calls(p, outsider_address: str) -> dict:
    e = p.engine.functions
    weth = p.token("WETH").address
    feed = p.feed("ETH").address
    return {
        "list_collateral": e.list_collateral(weth, feed, 1, 2, 3, 0),
        "set_collateral_params": e.set_collateral_params(weth, 1, 2, 3, 0),
        "list_market": e.list_market(feed, IMF, MMF, LIQ_FEE, TAKER, 0),
        "set_market_params": e.set_market_params(0, IMF, MMF, LIQ_FEE, TAKER, 0),
        "set_params": e.set_params(WAD // 2, 3600, 10 * WAD),
        "seed_house": e.seed_house(1),
        "seed_insurance": e.seed_insurance(1),
        "pause": e.pause(),
        "unpause": e.unpause(),
        "transfer_ownership": e.transfer_ownership(outsider_address),
    }


# ---------------------------------------------------------------- access control


@pytest.mark.parametrize(
    "name",
    ["list_collateral", "set_collateral_params", "list_market", "set_market_params", "set_params",
     "seed_house", "seed_insurance", "pause", "unpause", "transfer_ownership"],
)
def test_owner_only_functions_reject_others(protocol, actors, name):
    p = protocol
    if name == "unpause":
        p.owner.send(p.engine.functions.pause())
    call = owner_calls(p, actors.outsider.address)[name]
    for who in (actors.outsider, actors.trader, actors.liquidator):
        assert reverts(who, call) == "not owner"


def test_initial_owner_and_params(protocol, actors):
    p = protocol
    e = p.engine.functions
    assert e.owner().call() == actors.owner.address
    assert e.pending_owner().call() == ZERO
    assert e.paused().call() is False
    assert e.quote_token().call() == p.quote.address
    assert e.quote_scale().call() == 10**12
    assert (e.keeper_share().call(), e.max_price_age().call(), e.dust_notional().call()) == (WAD // 2, 3600, 10 * WAD)


# ---------------------------------------------------------------- constructor


@pytest.mark.parametrize("quote_decimals", [0, 6, 18])
def test_constructor_sets_quote_scale_and_emits(protocol, actors, quote_decimals):
    p = protocol
    quote = new_token(p, quote_decimals, "Q")
    art = compile_contracts()["MarginEngine"]
    factory = p.w3.eth.contract(abi=art.abi, bytecode=art.bytecode)
    receipt = actors.owner.send(factory.constructor(quote.address, WAD // 3, 60, 5 * WAD))
    engine = p.w3.eth.contract(address=receipt["contractAddress"], abi=art.abi)
    assert engine.functions.quote_scale().call() == 10 ** (18 - quote_decimals)
    assert engine.functions.owner().call() == actors.owner.address
    [ot] = events(engine, receipt, "OwnershipTransferred")
    assert (ot.args.previous, ot.args.owner) == (ZERO, actors.owner.address)
    [qt] = events(engine, receipt, "QuoteTokenSet")
    assert (qt.args.token, qt.args.quote_scale) == (quote.address, 10 ** (18 - quote_decimals))
    [ps] = events(engine, receipt, "ParamsSet")
    assert (ps.args.keeper_share, ps.args.max_price_age, ps.args.dust_notional) == (WAD // 3, 60, 5 * WAD)


def test_constructor_rejects_zero_quote(protocol, actors):
    with pytest.raises(Revert) as exc:
        deploy_contract(protocol.w3, actors.owner, "MarginEngine", ZERO, WAD // 2, 3600, 10 * WAD)
    assert exc.value.reason == "zero address"


def test_constructor_rejects_quote_with_19_decimals(protocol, actors):
    bad = deploy_decimals_19(protocol)
    with pytest.raises(Revert) as exc:
        deploy_contract(protocol.w3, actors.owner, "MarginEngine", bad, WAD // 2, 3600, 10 * WAD)
    assert exc.value.reason == "bad decimals"


@pytest.mark.parametrize("share,dust", [(WAD + 1, 0), (0, MAX_PRICE + 1)])
def test_constructor_rejects_bad_params(protocol, actors, share, dust):
    with pytest.raises(Revert) as exc:
        deploy_contract(protocol.w3, actors.owner, "MarginEngine", protocol.quote.address, share, 3600, dust)
    assert exc.value.reason == "bad params"


# ---------------------------------------------------------------- list_collateral


def test_list_collateral_success(protocol, actors):
    p = protocol
    token, feed = new_token(p, 12, "NEW"), new_feed(p, 6, 250 * 10**6)
    receipt = p.owner.send(p.engine.functions.list_collateral(token.address, feed.address, 6 * 10**17, 7 * 10**17, 10**17, 123))

    [listed] = events(p.engine, receipt, "CollateralListed")
    assert dict(listed.args) == {"token": token.address, "feed": feed.address, "index": 2, "decimals": 12, "price_scale": 10**12}
    [params] = events(p.engine, receipt, "CollateralParamsSet")
    assert dict(params.args) == {
        "token": token.address, "init_weight": 6 * 10**17, "maint_weight": 7 * 10**17,
        "liquidation_discount": 10**17, "deposit_cap": 123,
    }
    assert tuple(p.engine.functions.collateral_config(token.address).call()) == (
        feed.address, 10**12, 12, 10**12, 6 * 10**17, 7 * 10**17, 10**17, 123, 2, 3600,
    )
    assert p.engine.functions.collateral_count().call() == 3
    assert p.engine.functions.collateral_tokens(2).call() == token.address
    # It counts in health at its own decimals and its feed's: 100 units at 250 USD.
    p.owner.send(token.functions.mint(actors.trader.address, 123))
    actors.trader.send(token.functions.approve(p.engine.address, 123))
    actors.trader.send(p.engine.functions.deposit(token.address, 123))
    value = 123 * 250 * WAD // 10**12
    assert p.health(actors.trader.address) == (value, value * 6 // 10, value * 7 // 10)
    assert p.engine.functions.held_collaterals(actors.trader.address).call() == 1 << 2


def test_list_collateral_rejects_zero_token(protocol):
    p = protocol
    call = p.engine.functions.list_collateral(ZERO, p.feed("ETH").address, 1, 2, 3, 0)
    assert reverts(p.owner, call) == "zero address"


def test_list_collateral_rejects_zero_feed(protocol):
    p = protocol
    call = p.engine.functions.list_collateral(new_token(p).address, ZERO, 1, 2, 3, 0)
    assert reverts(p.owner, call) == "zero address"


def test_list_collateral_rejects_quote_token(protocol):
    p = protocol
    call = p.engine.functions.list_collateral(p.quote.address, p.feed("ETH").address, 1, 2, 3, 0)
    assert reverts(p.owner, call) == "quote token"


def test_list_collateral_rejects_already_listed(protocol):
    p = protocol
    call = p.engine.functions.list_collateral(p.token("WBTC").address, p.feed("ETH").address, 1, 2, 3, 0)
    assert reverts(p.owner, call) == "already listed"


def test_list_collateral_rejects_token_with_19_decimals(protocol):
    p = protocol
    call = p.engine.functions.list_collateral(deploy_decimals_19(p), p.feed("ETH").address, 1, 2, 3, 0)
    assert reverts(p.owner, call) == "bad decimals"


def test_list_collateral_rejects_feed_with_19_decimals(protocol):
    p = protocol
    call = p.engine.functions.list_collateral(new_token(p).address, deploy_decimals_19(p), 1, 2, 3, 0)
    assert reverts(p.owner, call) == "bad decimals"


@pytest.mark.parametrize(
    "iw,mw,disc",
    [(8 * 10**17 + 1, 8 * 10**17, 0), (5 * 10**17, 9 * 10**17, 10**17), (0, WAD, 0)],
)
def test_list_collateral_rejects_bad_params(protocol, iw, mw, disc):
    p = protocol
    token = new_token(p)
    call = p.engine.functions.list_collateral(token.address, p.feed("ETH").address, iw, mw, disc, 0)
    assert reverts(p.owner, call) == "bad params"
    assert p.engine.functions.collateral_count().call() == 2


def test_too_many_collaterals(protocol):
    p = protocol
    feed = p.feed("ETH").address
    for i in range(6):
        p.owner.send(p.engine.functions.list_collateral(new_token(p, 18, f"T{i}").address, feed, 1, 2, 3, 0))
    assert p.engine.functions.collateral_count().call() == 8
    call = p.engine.functions.list_collateral(new_token(p, 18, "T9").address, feed, 1, 2, 3, 0)
    assert reverts(p.owner, call) == "too many collaterals"


# ---------------------------------------------------------------- set_collateral_params


def test_set_collateral_params_success_and_bounds(protocol):
    p = protocol
    weth = p.token("WETH").address
    # The extremes allowed: init == maint and maint + discount == WAD - 1.
    receipt = p.owner.send(p.engine.functions.set_collateral_params(weth, 9 * 10**17, 9 * 10**17, 10**17 - 1, 77))
    [ev] = events(p.engine, receipt, "CollateralParamsSet")
    assert dict(ev.args) == {
        "token": weth, "init_weight": 9 * 10**17, "maint_weight": 9 * 10**17,
        "liquidation_discount": 10**17 - 1, "deposit_cap": 77,
    }
    cfg = p.engine.functions.collateral_config(weth).call()
    assert tuple(cfg[4:9]) == (9 * 10**17, 9 * 10**17, 10**17 - 1, 77, 0)
    assert tuple(cfg[:4]) == (p.feed("ETH").address, 10**10, 18, 10**18)


@pytest.mark.parametrize("iw,mw,disc", [(2, 1, 0), (0, 9 * 10**17, 10**17), (0, 0, WAD)])
def test_set_collateral_params_rejects_bad_params(protocol, iw, mw, disc):
    p = protocol
    weth = p.token("WETH").address
    assert reverts(p.owner, p.engine.functions.set_collateral_params(weth, iw, mw, disc, 0)) == "bad params"


def test_set_collateral_params_rejects_unlisted(protocol):
    p = protocol
    for token in (new_token(p).address, p.quote.address, ZERO):
        assert reverts(p.owner, p.engine.functions.set_collateral_params(token, 1, 2, 3, 0)) == "not listed"


# ---------------------------------------------------------------- list_market / set_market_params


def test_list_market_success(protocol, actors):
    p = protocol
    feed = new_feed(p, 18, 5 * WAD)
    call = p.engine.functions.list_market(feed.address, WAD, WAD - 1, 1, WAD - 1, 9 * WAD)
    assert call.call({"from": p.owner.address}) == 2
    receipt = p.owner.send(call)
    [listed] = events(p.engine, receipt, "MarketListed")
    assert dict(listed.args) == {"market": 2, "feed": feed.address, "price_scale": 1}
    [params] = events(p.engine, receipt, "MarketParamsSet")
    assert dict(params.args) == {"market": 2, "imf": WAD, "mmf": WAD - 1, "liquidation_fee": 1, "taker_fee": WAD - 1, "oi_cap": 9 * WAD}
    assert tuple(p.engine.functions.market(2).call()) == (feed.address, 1, WAD, WAD - 1, 1, WAD - 1, 9 * WAD, 3600)
    assert p.engine.functions.market_count().call() == 3
    # Tradeable at its 18-decimal price.
    p.deposit(actors.trader, "USDC", 1000 * 10**6)
    actors.trader.send(p.engine.functions.trade(2, WAD, 2**256 - 1))
    assert tuple(p.engine.functions.position(actors.trader.address, 2).call()) == (WAD, -5 * WAD)


def test_list_market_rejects_zero_feed(protocol):
    p = protocol
    assert reverts(p.owner, p.engine.functions.list_market(ZERO, IMF, MMF, LIQ_FEE, TAKER, 0)) == "zero address"


def test_list_market_rejects_feed_with_19_decimals(protocol):
    p = protocol
    call = p.engine.functions.list_market(deploy_decimals_19(p), IMF, MMF, LIQ_FEE, TAKER, 0)
    assert reverts(p.owner, call) == "bad decimals"


BAD_MARKET_PARAMS = [
    (WAD + 1, MMF, LIQ_FEE, TAKER),   # imf > WAD
    (MMF, MMF, LIQ_FEE, TAKER),       # imf == mmf
    (IMF, LIQ_FEE, LIQ_FEE, TAKER),   # mmf == liquidation_fee
    (IMF, MMF, 0, TAKER),             # liquidation_fee == 0
    (IMF, MMF, LIQ_FEE, WAD),         # taker_fee == WAD
]


@pytest.mark.parametrize("imf,mmf,fee,taker", BAD_MARKET_PARAMS)
def test_list_market_rejects_bad_params(protocol, imf, mmf, fee, taker):
    p = protocol
    call = p.engine.functions.list_market(p.feed("ETH").address, imf, mmf, fee, taker, 0)
    assert reverts(p.owner, call) == "bad params"
    assert p.engine.functions.market_count().call() == 2


def test_too_many_markets(protocol):
    p = protocol
    feed = p.feed("BTC").address
    for _ in range(14):
        p.owner.send(p.engine.functions.list_market(feed, IMF, MMF, LIQ_FEE, TAKER, 0))
    assert p.engine.functions.market_count().call() == 16
    assert reverts(p.owner, p.engine.functions.list_market(feed, IMF, MMF, LIQ_FEE, TAKER, 0)) == "too many markets"


def test_set_market_params_success(protocol):
    p = protocol
    receipt = p.owner.send(p.engine.functions.set_market_params(1, 2 * IMF, IMF, MMF, 0, 5 * WAD))
    [ev] = events(p.engine, receipt, "MarketParamsSet")
    assert dict(ev.args) == {"market": 1, "imf": 2 * IMF, "mmf": IMF, "liquidation_fee": MMF, "taker_fee": 0, "oi_cap": 5 * WAD}
    assert tuple(p.engine.functions.market(1).call()) == (p.feed("BTC").address, 10**10, 2 * IMF, IMF, MMF, 0, 5 * WAD, 3600)


@pytest.mark.parametrize("imf,mmf,fee,taker", BAD_MARKET_PARAMS)
def test_set_market_params_rejects_bad_params(protocol, imf, mmf, fee, taker):
    p = protocol
    assert reverts(p.owner, p.engine.functions.set_market_params(0, imf, mmf, fee, taker, 0)) == "bad params"
    assert tuple(p.engine.functions.market(0).call())[2:] == (IMF, MMF, LIQ_FEE, TAKER, 0, 3600)


@pytest.mark.parametrize("market", [2, 16, 2**256 - 1])
def test_set_market_params_rejects_unlisted(protocol, market):
    p = protocol
    assert reverts(p.owner, p.engine.functions.set_market_params(market, IMF, MMF, LIQ_FEE, TAKER, 0)) == "not listed"


# ---------------------------------------------------------------- set_params


def test_set_params_success_at_bounds(protocol):
    p = protocol
    receipt = p.owner.send(p.engine.functions.set_params(WAD, 0, MAX_PRICE))
    [ev] = events(p.engine, receipt, "ParamsSet")
    assert dict(ev.args) == {"keeper_share": WAD, "max_price_age": 0, "dust_notional": MAX_PRICE}
    e = p.engine.functions
    assert (e.keeper_share().call(), e.max_price_age().call(), e.dust_notional().call()) == (WAD, 0, MAX_PRICE)


@pytest.mark.parametrize("share,dust", [(WAD + 1, 10 * WAD), (WAD // 2, MAX_PRICE + 1)])
def test_set_params_rejects_bad_params(protocol, share, dust):
    p = protocol
    assert reverts(p.owner, p.engine.functions.set_params(share, 3600, dust)) == "bad params"
    assert p.engine.functions.keeper_share().call() == WAD // 2


# ---------------------------------------------------------------- seeding


@pytest.mark.parametrize("what", ["house", "insurance"])
def test_seed_success(any_protocol, what):
    p = any_protocol
    qs = quote_scale(p)
    amount = p.units("USDC", "1234.5")
    p.fund(p.owner, "USDC", amount)
    engine0 = p.quote.functions.balanceOf(p.engine.address).call()
    if what == "house":
        cash0 = p.cash(p.engine.address)
        receipt = p.owner.send(p.engine.functions.seed_house(amount))
        [ev] = events(p.engine, receipt, "HouseSeeded")
        assert dict(ev.args) == {"amount": amount, "cash": cash0 + amount * qs}
        assert p.cash(p.engine.address) == cash0 + amount * qs
    else:
        fund0 = p.engine.functions.insurance_fund().call()
        receipt = p.owner.send(p.engine.functions.seed_insurance(amount))
        [ev] = events(p.engine, receipt, "InsuranceSeeded")
        assert dict(ev.args) == {"amount": amount, "insurance_fund": fund0 + amount * qs}
        assert p.engine.functions.insurance_fund().call() == fund0 + amount * qs
    assert p.quote.functions.balanceOf(p.engine.address).call() == engine0 + amount
    assert p.quote.functions.balanceOf(p.owner.address).call() == 0


@pytest.mark.parametrize("fn", ["seed_house", "seed_insurance"])
def test_seed_rejects_zero_and_too_large(protocol, fn):
    p = protocol
    p.fund(p.owner, "USDC", MAX_AMOUNT + 1)
    seed = getattr(p.engine.functions, fn)
    assert reverts(p.owner, seed(0)) == "zero amount"
    assert reverts(p.owner, seed(MAX_AMOUNT + 1)) == "amount too large"
    p.owner.send(seed(MAX_AMOUNT))


@pytest.mark.parametrize("fn", ["seed_house", "seed_insurance"])
def test_seed_without_allowance_reverts(protocol, fn):
    p = protocol
    p.owner.send(p.quote.functions.mint(p.owner.address, 10))
    assert reverts(p.owner, getattr(p.engine.functions, fn)(10)) == "insufficient allowance"


# ---------------------------------------------------------------- pause


def test_pause_and_unpause(protocol, actors):
    p = protocol
    receipt = p.owner.send(p.engine.functions.pause())
    [ev] = events(p.engine, receipt, "Paused")
    assert ev.args.by == actors.owner.address
    assert p.engine.functions.paused().call() is True
    assert reverts(p.owner, p.engine.functions.pause()) == "paused"
    receipt = p.owner.send(p.engine.functions.unpause())
    [ev] = events(p.engine, receipt, "Unpaused")
    assert ev.args.by == actors.owner.address
    assert p.engine.functions.paused().call() is False
    assert reverts(p.owner, p.engine.functions.unpause()) == "not paused"


def test_admin_functions_work_while_paused(protocol):
    p = protocol
    p.owner.send(p.engine.functions.pause())
    p.owner.send(p.engine.functions.set_params(WAD // 4, 60, WAD))
    p.owner.send(p.engine.functions.set_market_params(0, IMF, MMF, LIQ_FEE, 0, 0))
    assert p.engine.functions.keeper_share().call() == WAD // 4


# ---------------------------------------------------------------- ownership


def test_two_step_ownership_transfer(protocol, actors):
    p, new_owner = protocol, actors.rival
    receipt = p.owner.send(p.engine.functions.transfer_ownership(new_owner.address))
    [ev] = events(p.engine, receipt, "OwnershipTransferStarted")
    assert (ev.args.owner, ev.args.pending_owner) == (actors.owner.address, new_owner.address)
    assert p.engine.functions.pending_owner().call() == new_owner.address
    assert p.engine.functions.owner().call() == actors.owner.address  # nothing changes yet
    assert reverts(actors.outsider, p.engine.functions.accept_ownership()) == "not pending owner"
    assert reverts(actors.owner, p.engine.functions.accept_ownership()) == "not pending owner"

    receipt = new_owner.send(p.engine.functions.accept_ownership())

    [ev] = events(p.engine, receipt, "OwnershipTransferred")
    assert (ev.args.previous, ev.args.owner) == (actors.owner.address, new_owner.address)
    assert p.engine.functions.owner().call() == new_owner.address
    assert p.engine.functions.pending_owner().call() == ZERO
    assert reverts(actors.owner, p.engine.functions.pause()) == "not owner"
    new_owner.send(p.engine.functions.pause())
    assert reverts(new_owner, p.engine.functions.accept_ownership()) == "not pending owner"


def test_transfer_ownership_can_be_redirected_and_cancelled(protocol, actors):
    p = protocol
    p.owner.send(p.engine.functions.transfer_ownership(actors.rival.address))
    p.owner.send(p.engine.functions.transfer_ownership(actors.outsider.address))
    assert reverts(actors.rival, p.engine.functions.accept_ownership()) == "not pending owner"
    p.owner.send(p.engine.functions.transfer_ownership(ZERO))
    assert reverts(actors.outsider, p.engine.functions.accept_ownership()) == "not pending owner"
    assert p.engine.functions.owner().call() == actors.owner.address


def test_accept_without_pending_owner_reverts(protocol, actors):
    assert reverts(actors.outsider, protocol.engine.functions.accept_ownership()) == "not pending owner"
