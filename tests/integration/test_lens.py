"""Lens.protocol and Lens.accounts return exactly what the engine's (and the feeds') individual
views return, field by field, for a protocol with extra listings and accounts of every shape."""

from __future__ import annotations

import pytest

from protocol_model.deploy import deploy_contract

WAD = 10**18
MAX_MARKETS = 16
MAX_COLLATERALS = 8
ZERO = "0x0000000000000000000000000000000000000000"
EMPTY_FEED = {"feed": ZERO, "round_id": 0, "answer": 0, "updated_at": 0}


def decode(value, abi_type: dict):
    """A web3 return value as plain Python: structs become dicts keyed by field name."""
    t = abi_type["type"]
    if t.startswith("tuple"):
        if t.endswith("]"):
            return [decode(v, {**abi_type, "type": t[: t.rindex("[")]}) for v in value]
        return {c["name"]: decode(v, c) for c, v in zip(abi_type["components"], value)}
    if t.endswith("]"):
        return [decode(v, {"type": t[: t.rindex("[")]}) for v in value]
    return value


def lens_call(p, fn_name: str, *args):
    fn = getattr(p.lens.functions, fn_name)(p.engine.address, *args)
    return decode(fn.call(), fn.abi["outputs"][0])


def struct(p, fn_name: str, *args) -> dict:
    fn = getattr(p.engine.functions, fn_name)(*args)
    outputs = fn.abi["outputs"]
    value = fn.call()
    if len(outputs) == 1 and outputs[0]["type"] == "tuple":
        return decode(value, outputs[0])
    return {o["name"]: v for o, v in zip(outputs, value)}


def feed_view(p, feed_address: str) -> dict:
    feed = p.w3.eth.contract(address=feed_address, abi=p.feed("ETH").abi)
    round_id, answer, _started, updated, _answered = feed.functions.latestRoundData().call()
    return {"feed": feed_address, "round_id": round_id, "answer": answer, "updated_at": updated}


@pytest.fixture
def busy(any_protocol, actors):
    """Extra listings (market 2 on a fresh 18-decimal feed, collateral index 2 with 12 decimals)
    and accounts of every shape."""
    p = any_protocol
    feed = deploy_contract(p.w3, p.owner, "PriceFeed", 18, "SOL / USD", 150 * WAD, 1, 10**40)
    p.owner.send(p.engine.functions.list_market(feed.address, 2 * 10**17, 10**17, 5 * 10**16, 10**15, 10**24))
    extra = deploy_contract(p.w3, p.owner, "Token", "Extra", "XTR", 12)
    p.owner.send(p.engine.functions.list_collateral(extra.address, feed.address, 5 * 10**17, 6 * 10**17, 10**17, 0))

    t, t2, r, o = actors.trader, actors.trader2, actors.rival, actors.outsider
    p.deposit(t, "USDC", p.units("USDC", 5_000))
    p.deposit(t, "WETH", p.units("WETH", "1.5"))
    p.trade(t, "ETH-PERP", 2 * WAD)
    p.trade(t, "BTC-PERP", -WAD // 20)
    p.owner.send(extra.functions.mint(t2.address, 7 * 10**12))
    t2.send(extra.functions.approve(p.engine.address, 2**256 - 1))
    t2.send(p.engine.functions.deposit(extra.address, 7 * 10**12))
    p.deposit(t2, "WBTC", p.units("WBTC", "0.1"))
    t2.send(p.engine.functions.trade(2, -10 * WAD, 0))
    p.deposit(r, "USDC", p.units("USDC", 1_000))
    p.trade(r, "ETH-PERP", WAD)
    p.set_price("ETH", "2100.5")
    p.trade(r, "ETH-PERP", -WAD)  # closed: inactive market, quote moved to cash
    p.deposit(o, "WBTC", 1)
    p.owner.send(p.engine.functions.pause())
    return p


def test_lens_protocol_matches_engine_views(busy, w3):
    p = busy
    e = p.engine.functions
    v = lens_call(p, "protocol")
    latest = w3.eth.get_block("latest")
    n_markets = e.market_count().call()
    n_cols = e.collateral_count().call()
    assert (n_markets, n_cols) == (3, 3)
    tokens = [e.collateral_tokens(i).call() for i in range(n_cols)]
    expected = {
        "quote_token": e.quote_token().call(),
        "quote_scale": e.quote_scale().call(),
        "keeper_share": e.keeper_share().call(),
        "max_price_age": e.max_price_age().call(),
        "dust_notional": e.dust_notional().call(),
        "insurance_fund": e.insurance_fund().call(),
        "paused": e.paused().call(),
        "owner": e.owner().call(),
        "market_count": n_markets,
        "markets": [struct(p, "market", m) for m in range(n_markets)]
        + [struct(p, "market", 15)] * (MAX_MARKETS - n_markets),
        "market_feeds": [feed_view(p, struct(p, "market", m)["feed"]) for m in range(n_markets)]
        + [EMPTY_FEED] * (MAX_MARKETS - n_markets),
        "collateral_count": n_cols,
        "collateral_tokens": tokens + [ZERO] * (MAX_COLLATERALS - n_cols),
        "collaterals": [struct(p, "collateral_config", tok) for tok in tokens]
        + [struct(p, "collateral_config", ZERO)] * (MAX_COLLATERALS - n_cols),
        "collateral_feeds": [feed_view(p, struct(p, "collateral_config", tok)["feed"]) for tok in tokens]
        + [EMPTY_FEED] * (MAX_COLLATERALS - n_cols),
        "total_collateral": [e.total_collateral(tok).call() for tok in tokens] + [0] * (MAX_COLLATERALS - n_cols),
        "block_number": latest["number"],
        "block_timestamp": latest["timestamp"],
    }
    assert v == expected
    # Spot checks that the comparison is not vacuous.
    assert v["paused"] is True
    assert v["markets"][2]["imf"] == 2 * 10**17 and v["markets"][15]["feed"] == ZERO
    assert v["market_feeds"][0]["answer"] == 2100_50000000
    assert v["collaterals"][2]["decimals"] == 12
    assert v["total_collateral"][2] == 7 * 10**12


def expected_account(p, address: str, n_markets: int, tokens: list[str]) -> dict:
    e = p.engine.functions
    sizes, quotes = [0] * MAX_MARKETS, [0] * MAX_MARKETS
    for m in range(n_markets):
        sizes[m], quotes[m] = e.position(address, m).call()
    collateral = [0] * MAX_COLLATERALS
    for i, tok in enumerate(tokens):
        collateral[i] = e.collateral(address, tok).call()
    equity, init, maint = e.health(address).call()
    return {
        "account": address,
        "cash": e.cash(address).call(),
        "active_markets": e.active_markets(address).call(),
        "held_collaterals": e.held_collaterals(address).call(),
        "sizes": sizes,
        "quotes": quotes,
        "collateral": collateral,
        "equity": equity,
        "init_health": init,
        "maint_health": maint,
    }


def test_lens_accounts_match_engine_views(busy, actors):
    p = busy
    e = p.engine.functions
    tokens = [e.collateral_tokens(i).call() for i in range(e.collateral_count().call())]
    n_markets = e.market_count().call()
    addrs = [
        actors.trader.address,     # cash, WETH, long ETH, short BTC
        actors.trader2.address,    # XTR and WBTC, short market 2, negative cash (fees)
        actors.rival.address,      # flat again: only cash
        actors.liquidator.address,  # never touched the engine
        actors.outsider.address,   # one wei of WBTC
        p.engine.address,          # the house
        actors.trader.address,     # duplicates are answered again
    ]

    views = lens_call(p, "accounts", addrs)

    assert views == [expected_account(p, a, n_markets, tokens) for a in addrs]
    by = {a: v for a, v in zip(addrs, views)}
    assert by[actors.trader.address]["active_markets"] == 0b11
    assert by[actors.trader2.address]["held_collaterals"] == 0b110
    assert by[actors.trader2.address]["cash"] < 0
    assert by[actors.rival.address]["active_markets"] == 0 and by[actors.rival.address]["quotes"] == [0] * 16
    assert by[actors.liquidator.address]["equity"] == 0
    assert sum(by[p.engine.address]["sizes"][m] + sum(by[a]["sizes"][m] for a in addrs[:5]) for m in range(3)) == 0


def test_lens_accounts_empty_batch(protocol):
    assert lens_call(protocol, "accounts", []) == []


def test_lens_reads_stale_prices_like_the_health_view(protocol, actors, tester):
    p = protocol
    p.deposit(actors.trader, "WETH", 10**18)
    p.deposit(actors.trader, "USDC", 10**9)
    p.trade(actors.trader, "ETH-PERP", WAD)
    t0 = p.feed("ETH").functions.latestRoundData().call()[3]
    tester.time_travel(t0 + 10 * 3600)
    [view] = lens_call(p, "accounts", [actors.trader.address])
    assert view == expected_account(p, actors.trader.address, 2, [p.token("WETH").address, p.token("WBTC").address])
    assert view["equity"] > 0
