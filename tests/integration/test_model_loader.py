"""protocol_model.loader against the engine: the Lens snapshot equals the engine's own views,
accounts are read one eth_call per batch, and every call of one load is pinned to one block."""

from __future__ import annotations

from contextlib import contextmanager
from typing import Any, Iterator

import pytest
from conftest import WAD
from web3.middleware import Web3Middleware

from protocol_model.chain import Sender
from protocol_model.errors import ConfigError
from protocol_model.loader import LENS_MAX_BATCH, discover_accounts, load_accounts, load_protocol, load_state


@contextmanager
def recorded_requests(w3: Any) -> Iterator[list[tuple[str, Any]]]:
    """Every JSON-RPC request (method, params) web3 sends while the block runs."""
    seen: list[tuple[str, Any]] = []

    class Recorder(Web3Middleware):
        def request_processor(self, method: Any, params: Any) -> Any:
            seen.append((str(method), params))
            return method, params

    w3.middleware_onion.add(Recorder, name="test-recorder")
    try:
        yield seen
    finally:
        w3.middleware_onion.remove("test-recorder")


def eth_calls(requests: list[tuple[str, Any]]) -> list[Any]:
    return [params for method, params in requests if method == "eth_call"]


@pytest.fixture
def busy(protocol, actors, w3):
    """Several accounts in different shapes: cash + collateral + two positions, collateral only,
    a short, one that deposited and withdrew everything, and one that never deposited."""
    p = protocol
    extra = [Sender.unlocked(w3, i) for i in range(6, 9)]
    p.deposit(actors.trader, "USDC", p.units("USDC", 5_000))
    p.deposit(actors.trader, "WETH", p.units("WETH", 2))
    p.trade(actors.trader, "ETH-PERP", 3 * WAD)
    p.trade(actors.trader, "BTC-PERP", -WAD // 10)

    p.deposit(actors.trader2, "WBTC", p.units("WBTC", "0.5"))
    p.trade(actors.trader2, "BTC-PERP", WAD // 4)

    p.deposit(actors.rival, "USDC", p.units("USDC", 1_000))
    p.trade(actors.rival, "ETH-PERP", -WAD)

    p.deposit(extra[0], "USDC", p.units("USDC", 100))
    extra[0].send(p.engine.functions.withdraw(p.quote.address, p.units("USDC", 100)))

    p.deposit(extra[1], "WETH", p.units("WETH", "0.25"))
    p.deposit(extra[2], "USDC", p.units("USDC", 700))
    p.trade(extra[2], "ETH-PERP", WAD)
    p.trade(extra[2], "ETH-PERP", -WAD)   # opened and closed: quote moved into cash, house too

    p.set_price("ETH", 1_850)
    return [actors.trader.address, actors.trader2.address, actors.rival.address,
            extra[0].address, extra[1].address, extra[2].address, actors.outsider.address]


def check_account_against_engine(p, state, address: str, block: int) -> None:
    e = p.engine.functions
    acc = state.house if address == p.dep.engine else state.accounts[address]
    assert acc.cash == e.cash(address).call(block_identifier=block)
    for m in state.markets:
        size, quote = e.position(address, m.id).call(block_identifier=block)
        pos = acc.positions.get(m.id)
        assert (size, quote) == ((pos.size, pos.quote) if pos else (0, 0)), (address, m.name)
    for c in state.collaterals:
        assert acc.collateral.get(c.token, 0) == e.collateral(address, c.token).call(block_identifier=block)
    assert 0 not in acc.collateral.values()
    assert all(pos.size != 0 for pos in acc.positions.values())


def test_load_state_equals_engine_views(protocol, busy, w3):
    p = protocol
    state = load_protocol(w3, p.dep)
    healths = load_accounts(w3, p.dep, state, busy, batch_size=3)
    block = state.block
    assert block == w3.eth.block_number
    assert state.timestamp == w3.eth.get_block(block)["timestamp"]

    e = p.engine.functions
    # protocol ----------------------------------------------------------
    assert state.engine == p.dep.engine
    assert state.params.quote_token == p.quote.address
    assert state.params.quote_scale == e.quote_scale().call()
    assert state.params.keeper_share == e.keeper_share().call()
    assert state.params.max_price_age == e.max_price_age().call()
    assert state.params.dust_notional == e.dust_notional().call()
    assert state.params.owner == e.owner().call()
    assert state.params.paused is e.paused().call()
    assert state.insurance_fund == e.insurance_fund().call()
    assert [m.name for m in state.markets] == ["ETH-PERP", "BTC-PERP"]
    for m in state.markets:
        assert (m.feed, m.price_scale, m.imf, m.mmf, m.liquidation_fee, m.taker_fee, m.oi_cap, m.max_price_age) == tuple(e.market(m.id).call())
        feed = p.w3.eth.contract(address=m.feed, abi=p.feed("ETH").abi)
        rid, answer, _, updated_at, _ = feed.functions.latestRoundData().call()
        f = state.feeds[m.feed]
        assert (f.round_id, f.answer, f.updated_at) == (rid, answer, updated_at)
        assert f.decimals == feed.functions.decimals().call()
    assert [c.symbol for c in state.collaterals] == ["WETH", "WBTC"]
    for c in state.collaterals:
        cfg = e.collateral_config(c.token).call()
        assert (c.feed, c.price_scale, c.decimals, c.unit, c.init_weight, c.maint_weight,
                c.liquidation_discount, c.deposit_cap, c.index, c.max_price_age) == tuple(cfg)
        assert state.total_collateral[c.token] == e.total_collateral(c.token).call()
    assert state.total_collateral[p.dep.collateral("WETH")["token"]] == p.units("WETH", "2.25")

    # accounts, the house included ---------------------------------------
    assert set(state.accounts) == set(busy)
    assert state.house is not None and state.house.address == p.dep.engine
    for address in [*busy, p.dep.engine]:
        check_account_against_engine(p, state, address, block)
        assert tuple(healths[address]) == tuple(e.health(address).call())
    assert state.accounts[busy[3]].is_empty()            # deposited and withdrew everything
    assert state.accounts[busy[-1]].is_empty()            # never deposited
    assert set(state.house.positions) == {0, 1}
    assert state.house.positions[0].size == -(3 * WAD - WAD)   # trader +3, rival -1, extra +1 -1
    assert state.house.cash > 10_000_000 * WAD              # seed plus taker fees


def test_accounts_are_read_one_eth_call_per_batch(protocol, busy, w3):
    p = protocol
    with recorded_requests(w3) as requests:
        state = load_state(w3, p.dep, busy, batch_size=3)
    calls = eth_calls(requests)
    # 7 accounts + the house = 8 addresses -> batches of 3, 3, 2; plus Lens.protocol.
    assert len(calls) == 1 + 3
    assert {c[0]["to"] for c in calls} == {p.dep.lens}
    # Every call of the load is pinned to the same block number.
    assert {c[1] for c in calls} == {hex(state.block)}

    with recorded_requests(w3) as requests:
        load_state(w3, p.dep, busy)                 # default batch: everything in one call
    assert len(eth_calls(requests)) == 2

    with recorded_requests(w3) as requests:
        load_state(w3, p.dep, busy, batch_size=1)
    assert len(eth_calls(requests)) == 1 + len(busy) + 1


def test_batch_size_does_not_change_the_snapshot(protocol, busy, w3):
    one = load_state(w3, protocol.dep, busy, batch_size=1)
    all_at_once = load_state(w3, protocol.dep, busy, batch_size=LENS_MAX_BATCH)
    assert one == all_at_once


def test_load_is_pinned_to_a_past_block(protocol, busy, actors, w3):
    p = protocol
    before = load_state(w3, p.dep, busy)
    block = before.block
    p.trade(actors.trader, "ETH-PERP", -WAD)
    p.set_price("BTC", 61_000)
    p.deposit(actors.trader2, "USDC", p.units("USDC", 10))
    now = load_state(w3, p.dep, busy)
    assert now != before
    again = load_state(w3, p.dep, busy, block_identifier=block)
    assert again == before
    assert again.block == block


def test_load_accounts_rejects_bad_input(protocol, w3):
    state = load_protocol(w3, protocol.dep)
    with pytest.raises(ConfigError, match="batch size"):
        load_accounts(w3, protocol.dep, state, [], batch_size=0)
    with pytest.raises(ConfigError, match="batch size"):
        load_accounts(w3, protocol.dep, state, [], batch_size=LENS_MAX_BATCH + 1)
    with pytest.raises(ConfigError, match="not an address"):
        load_accounts(w3, protocol.dep, state, ["0x1234"])


def test_house_is_loaded_even_when_not_asked_for(protocol, busy, w3):
    state = load_state(w3, protocol.dep, [])
    assert state.accounts == {}
    assert state.house is not None
    assert state.house.cash == protocol.cash(protocol.dep.engine)
    assert state.house.positions


def test_discover_accounts_finds_every_depositor(protocol, busy, actors, w3):
    p = protocol
    found = discover_accounts(w3, p.dep)
    assert found == busy[:-1]   # in order of first deposit; the outsider never deposited
    assert discover_accounts(w3, p.dep, chunk=2) == found
    assert discover_accounts(w3, p.dep, from_block=w3.eth.block_number + 1) == []
    with pytest.raises(ConfigError):
        discover_accounts(w3, p.dep, chunk=0)


def test_discovery_and_the_logs_rebuild_work_on_a_provider_that_limits_log_ranges(protocol, busy, w3):
    """A provider that refuses eth_getLogs over more than 3 blocks (Infura's -32005): discovery
    (what `xmargin accounts` runs) and the rebuild from logs shrink their range, as the bot does."""
    from web3 import Web3

    from protocol_model.logs import rebuild_from_logs

    refused: list[tuple[int, int]] = []

    class RangeLimit(Web3Middleware):
        def wrap_make_request(self, make_request: Any) -> Any:
            def middleware(method: Any, params: Any) -> Any:
                if method == "eth_getLogs":
                    lo, hi = int(params[0]["fromBlock"], 16), int(params[0]["toBlock"], 16)
                    if hi - lo + 1 > 3:
                        refused.append((lo, hi))
                        return {"jsonrpc": "2.0", "id": 1,
                                "error": {"code": -32005, "message": "query returned more than 10000 results"}}
                return make_request(method, params)
            return middleware

    limited = Web3(w3.provider)
    limited.middleware_onion.inject(RangeLimit, name="range_limit", layer=0)
    assert discover_accounts(limited, protocol.dep) == discover_accounts(w3, protocol.dep)
    assert refused
    assert rebuild_from_logs(limited, protocol.dep) == rebuild_from_logs(w3, protocol.dep)
