"""Load a :class:`ProtocolState` from the chain through the Lens, in a few ``eth_call`` requests.

* :func:`load_protocol` reads every parameter, market, collateral, feed reading, the insurance
  fund and the block number and time in **one** ``eth_call`` to ``Lens.protocol``.
* :func:`load_accounts` reads cash, collateral and positions of up to ``batch_size`` accounts per
  ``eth_call`` to ``Lens.accounts`` (never one call per account per field), the house included.
* :func:`load_state` does both, every call pinned to the same block number so the snapshot is
  consistent even while the chain moves on.
* :func:`discover_accounts` finds every address that ever deposited (the only way an account gets
  state) from ``Deposit`` logs, with the adaptive log scanner (:mod:`protocol_model.logscan`).

Market names and collateral symbols come from the deployment file; everything else from the chain.
Feed ``min_answer`` / ``max_answer`` are not read (the engine does not use them); they keep the
:class:`Feed` defaults.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Sequence
from typing import Any

from eth_utils import to_checksum_address
from web3 import Web3
from web3.types import BlockIdentifier

from .chain import decimals_of_scale, resolve_block
from .deploy import Deployment, contract_at
from .errors import ChainError, ConfigError
from .health import Health
from .logs import engine_topic
from .logscan import DEFAULT_LOG_CHUNK, fetch_logs
from .state import Account, Collateral, Feed, Market, Params, Position, ProtocolState
from .wad import BaseWad, Native, Wad

log = logging.getLogger(__name__)

LENS_MAX_BATCH = 200           # contracts/Lens.vy MAX_BATCH: accounts per Lens.accounts call
DEFAULT_BATCH = 200            # accounts per call; well inside a node's eth_call gas cap
ZERO_ADDRESS = "0x0000000000000000000000000000000000000000"


# ---------------------------------------------------------------- helpers


def _chunks(seq: Sequence[str], size: int) -> Iterable[Sequence[str]]:
    for i in range(0, len(seq), size):
        yield seq[i:i + size]


def _names_by_id(deployment: Deployment) -> dict[int, str]:
    return {int(m["id"]): name for name, m in deployment.markets.items()}


def _symbols_by_token(deployment: Deployment) -> dict[str, str]:
    return {to_checksum_address(c["token"]): sym for sym, c in deployment.collaterals.items()}


def _w3_of(w3: Web3 | None, deployment: Deployment) -> Web3:
    if w3 is not None:
        return w3
    if deployment.w3 is not None:
        return deployment.w3
    raise ConfigError("no chain connection: pass a Web3 or bind the deployment to one")


# ---------------------------------------------------------------- protocol


def load_protocol(w3: Web3, deployment: Deployment, block_identifier: BlockIdentifier = "latest") -> ProtocolState:
    """The protocol configuration, feeds, insurance fund, block number and time at one block.

    One ``eth_call`` to ``Lens.protocol`` (plus one header read when ``block_identifier`` is a tag
    rather than a number). The returned state has the house but no trader accounts.
    """
    w3 = _w3_of(w3, deployment)
    block = resolve_block(w3, block_identifier)
    lens = contract_at(w3, "Lens", deployment.lens)
    engine = to_checksum_address(deployment.engine)
    v = lens.functions.protocol(engine).call(block_identifier=block)
    (quote_token, quote_scale, keeper_share, max_price_age, dust_notional, insurance_fund, paused, owner,
     market_count, markets_v, market_feeds_v, collateral_count, collateral_tokens_v, collaterals_v,
     collateral_feeds_v, total_collateral_v, block_number, block_timestamp) = v
    if int(block_number) != block:
        log.warning("lens ran at block %d for a call pinned to block %d; using the lens's block", block_number, block)
    if to_checksum_address(quote_token) == ZERO_ADDRESS:
        raise ChainError(f"no engine at {engine} at block {block}: is the deployment file for this chain and block?")

    params = Params(
        quote_token=to_checksum_address(quote_token),
        quote_scale=int(quote_scale),
        keeper_share=Wad(int(keeper_share)),
        max_price_age=int(max_price_age),
        dust_notional=Wad(int(dust_notional)),
        paused=bool(paused),
        owner=to_checksum_address(owner),
    )

    feeds: dict[str, Feed] = {}

    def add_feed(fv: Sequence[Any], price_scale: int) -> str:
        address, round_id, answer, updated_at = fv
        address = to_checksum_address(address)
        if address not in feeds:
            feeds[address] = Feed(
                address=address, decimals=decimals_of_scale(int(price_scale)), answer=int(answer),
                updated_at=int(updated_at), round_id=int(round_id),
            )
        return address

    names = _names_by_id(deployment)
    markets: list[Market] = []
    for m in range(int(market_count)):
        feed, price_scale, imf, mmf, liquidation_fee, taker_fee, oi_cap, max_price_age = markets_v[m]
        markets.append(Market(
            id=m, feed=add_feed(market_feeds_v[m], price_scale), price_scale=int(price_scale), imf=Wad(int(imf)),
            mmf=Wad(int(mmf)), liquidation_fee=Wad(int(liquidation_fee)), taker_fee=Wad(int(taker_fee)),
            oi_cap=BaseWad(int(oi_cap)), name=names.get(m, f"MARKET-{m}"), max_price_age=int(max_price_age),
        ))

    symbols = _symbols_by_token(deployment)
    collaterals: list[Collateral] = []
    total_collateral: dict[str, int] = {}
    for i in range(int(collateral_count)):
        token = to_checksum_address(collateral_tokens_v[i])
        (feed, price_scale, decimals, unit, init_weight, maint_weight, liquidation_discount, deposit_cap,
         index, max_price_age) = collaterals_v[i]
        collaterals.append(Collateral(
            token=token, feed=add_feed(collateral_feeds_v[i], price_scale), price_scale=int(price_scale),
            decimals=int(decimals), unit=int(unit), init_weight=Wad(int(init_weight)),
            maint_weight=Wad(int(maint_weight)), liquidation_discount=Wad(int(liquidation_discount)),
            deposit_cap=Native(int(deposit_cap)), index=int(index), symbol=symbols.get(token, token[:10]),
            max_price_age=int(max_price_age),
        ))
        total_collateral[token] = int(total_collateral_v[i])

    state = ProtocolState(
        engine=engine, params=params, markets=markets, collaterals=collaterals, feeds=feeds,
        insurance_fund=Wad(int(insurance_fund)), total_collateral=total_collateral,
        timestamp=int(block_timestamp), block=int(block_number),
    )
    log.debug("loaded protocol %s at block %d: %d markets, %d collaterals", engine, state.block,
              len(markets), len(collaterals))
    return state


# ---------------------------------------------------------------- accounts


def _account_from_view(state: ProtocolState, av: Sequence[Any]) -> tuple[Account, Health]:
    (address, cash, active_markets, held_collaterals, sizes, quotes, collateral, equity, init_health,
     maint_health) = av
    acc = Account(to_checksum_address(address), cash=Wad(int(cash)))
    mask = int(active_markets)
    m = 0
    while mask:
        if mask & 1 and int(sizes[m]) != 0:
            acc.positions[m] = Position(BaseWad(int(sizes[m])), Wad(int(quotes[m])))
        mask >>= 1
        m += 1
    mask = int(held_collaterals)
    i = 0
    while mask:
        if mask & 1 and int(collateral[i]) != 0:
            acc.collateral[state.collaterals[i].token] = int(collateral[i])
        mask >>= 1
        i += 1
    return acc, Health(Wad(int(equity)), Wad(int(init_health)), Wad(int(maint_health)))


def load_accounts(
    w3: Web3,
    deployment: Deployment,
    state: ProtocolState,
    addresses: Iterable[str],
    batch_size: int = DEFAULT_BATCH,
    block_identifier: BlockIdentifier | None = None,
) -> dict[str, Health]:
    """Load ``addresses`` and the house into ``state`` (replacing what it had for them).

    One ``eth_call`` to ``Lens.accounts`` per ``batch_size`` accounts, at ``block_identifier``
    (default: ``state.block``, so accounts match the protocol snapshot). Every requested address
    gets an entry in ``state.accounts``, empty or not; the engine's address fills ``state.house``.
    Returns the engine's own ``health()`` of each loaded account, as read in the same calls, for
    cross-checking the model.
    """
    if not 1 <= batch_size <= LENS_MAX_BATCH:
        raise ConfigError(f"batch size {batch_size} is out of range: give 1 to {LENS_MAX_BATCH} accounts per call")
    w3 = _w3_of(w3, deployment)
    block = resolve_block(w3, state.block if block_identifier is None else block_identifier)
    engine = state.engine
    ordered: list[str] = []
    seen: set[str] = set()
    for a in addresses:
        try:
            addr = to_checksum_address(a)
        except ValueError as exc:
            raise ConfigError(f"{a!r} is not an address: give 0x-prefixed 20-byte hex") from exc
        if addr not in seen:
            seen.add(addr)
            ordered.append(addr)
    if engine not in seen:
        ordered.append(engine)

    lens = contract_at(w3, "Lens", deployment.lens)
    healths: dict[str, Health] = {}
    calls = 0
    for batch in _chunks(ordered, batch_size):
        views = lens.functions.accounts(engine, list(batch)).call(block_identifier=block)
        calls += 1
        for av in views:
            acc, h = _account_from_view(state, av)
            healths[acc.address] = h
            if acc.address == engine:
                state.house = acc
            else:
                state.accounts[acc.address] = acc
    log.debug("loaded %d accounts at block %d in %d calls", len(ordered), block, calls)
    return healths


def load_state(
    w3: Web3,
    deployment: Deployment,
    addresses: Iterable[str],
    batch_size: int = DEFAULT_BATCH,
    block_identifier: BlockIdentifier = "latest",
) -> ProtocolState:
    """The whole protocol and the given accounts (and the house) at one block number."""
    state = load_protocol(w3, deployment, block_identifier)
    load_accounts(w3, deployment, state, addresses, batch_size=batch_size, block_identifier=state.block)
    return state


# ---------------------------------------------------------------- discovery


def discover_accounts(
    w3: Web3,
    deployment: Deployment,
    from_block: int | None = None,
    to_block: BlockIdentifier = "latest",
    chunk: int = DEFAULT_LOG_CHUNK,
) -> list[str]:
    """Every address that deposited into the engine in ``[from_block, to_block]``, in order of
    first deposit (``from_block`` defaults to the deployment block). ``eth_getLogs`` filtered by
    the engine address and the ``Deposit`` topic, in adaptive chunks (:mod:`protocol_model.logscan`)
    starting at ``chunk`` blocks per request."""
    w3 = _w3_of(w3, deployment)
    if chunk < 1:
        raise ConfigError(f"log chunk {chunk} must be at least 1 block")
    start = deployment.block if from_block is None else from_block
    end = resolve_block(w3, to_block)
    topic = engine_topic("Deposit")
    out: list[str] = []
    seen: set[str] = set()
    for entry in fetch_logs(w3, deployment.engine, [topic], start, end, chunk):
        addr = to_checksum_address("0x" + bytes(entry["topics"][1])[-20:].hex())
        if addr not in seen:
            seen.add(addr)
            out.append(addr)
    log.debug("discovered %d accounts in blocks %d..%d", len(out), start, end)
    return out


__all__ = [
    "DEFAULT_BATCH",
    "LENS_MAX_BATCH",
    "discover_accounts",
    "load_accounts",
    "load_protocol",
    "load_state",
]
