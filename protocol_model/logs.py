"""Decode engine and feed logs and apply them to a :class:`ProtocolState`: a mirror from logs alone.

Every account event of the engine carries the account's *resulting* cash / size / quote /
collateral, so applying one sets those fields (idempotent). What the events do not carry is
derived exactly as the engine computes it, and therefore depends on event order:

* the house (the counterparty of every trade and liquidation) books ``size -= size_delta``,
  ``quote -= quote_delta`` and receives the taker fee into its cash; a position that reaches size 0
  moves its quote into cash (the engine's ``_write_position``); ``BadDebtSettled`` debits it the
  socialised part; ``HouseSeeded`` carries its resulting cash;
* the insurance fund: ``+insurance`` per liquidation, ``-covered`` per settlement, and the
  resulting fund in ``InsuranceSeeded``;
* ``total_collateral``: ``+amount`` per deposit, ``-amount`` per withdrawal, ``-seized`` per
  collateral liquidation.

So logs must be applied in chain order, each once. :func:`apply_logs` guarantees both: it sorts by
``(block, transaction index, log index)`` and applies only blocks after ``state.block`` (the last
block the state reflects), then advances ``state.block``; re-applying a range is a no-op.

Configuration comes from logs too: ``QuoteTokenSet`` (quote scale), ``ParamsSet``,
``MarketListed`` / ``CollateralListed`` (feed price scales, token decimals, collateral index),
``*ParamsSet``, ``Paused`` / ``Unpaused``, ``OwnershipTransferred``. Feeds' ``AnswerUpdated``
gives answer, round and update time. Not in any log: feed ``min_answer`` / ``max_answer`` (left at
their defaults) and market names / collateral symbols (taken from the deployment file).
"""

from __future__ import annotations

import functools
import logging
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

import eth_abi
from eth_hash.auto import keccak
from eth_utils import event_abi_to_log_topic, to_checksum_address
from web3 import Web3
from web3.types import BlockIdentifier, LogReceipt

from .chain import decimals_of_scale, resolve_block
from .deploy import Deployment, compile_contracts
from .errors import ChainError, ConfigError
from .logscan import DEFAULT_LOG_CHUNK, fetch_logs
from .state import Collateral, Feed, Market, Params, Position, ProtocolState
from .wad import BaseWad, Native, Wad

log = logging.getLogger(__name__)

ENGINE = "MarginEngine"
FEED = "PriceFeed"


# ---------------------------------------------------------------- decoding


@dataclass(frozen=True, slots=True)
class Event:
    """One decoded log. ``args`` maps the ABI's argument names to Python values (ints,
    checksummed address strings)."""

    name: str
    contract: str                 # "MarginEngine" or "PriceFeed"
    address: str                  # the emitting contract
    block: int
    tx_index: int
    log_index: int
    tx_hash: str
    args: dict[str, Any]

    @property
    def order(self) -> tuple[int, int, int]:
        return (self.block, self.tx_index, self.log_index)


@dataclass(frozen=True, slots=True)
class _EventSpec:
    name: str
    indexed: tuple[tuple[str, str], ...]   # (name, type) in topic order
    data: tuple[tuple[str, str], ...]      # (name, type) in data order
    # Every type a static 32-byte word (uintN, intN, address, bool): decoded by slicing words,
    # without eth_abi (the start-up path decodes every log since the deployment).
    words: bool = False


_WORD_TYPE = re.compile(r"^(u?int(8|16|24|32|40|48|56|64|72|80|88|96|104|112|120|128|136|144|152|160|168|176|184|192|200|208|216|224|232|240|248|256)?|address|bool)$")


def _is_word(typ: str) -> bool:
    return _WORD_TYPE.match(typ) is not None


_UPPER_NIBBLES = frozenset("89abcdef")


@functools.lru_cache(maxsize=1 << 17)
def _word_address(word: bytes) -> str:
    """The checksummed address in the low 20 bytes of a word (memoised: the same accounts recur).

    EIP-55 directly (keccak of the lower-case hex, a letter upper-cased where the hash's nibble is
    8 or more): ``eth_utils.to_checksum_address`` validates its input first and costs twice as
    much, which shows when a start-up decodes the events of every account since the deployment.
    Equal to it on every address (tests/integration/test_bot_startup.py)."""
    low = word[-20:].hex()
    digest = keccak(low.encode()).hex()
    return "0x" + "".join([c.upper() if d in _UPPER_NIBBLES else c for c, d in zip(low, digest)])


def _word_value(typ: str, word: bytes) -> Any:
    """A static ABI word as eth_abi decodes it (ints, a checksummed address, a bool)."""
    if typ == "address":
        return _word_address(bytes(word))
    if typ == "bool":
        return word[-1] == 1
    if typ[0] == "i":
        return int.from_bytes(word, "big", signed=True)
    return int.from_bytes(word, "big")


@functools.cache
def _specs(contract: str) -> dict[bytes, _EventSpec]:
    """topic0 -> event layout, from the compiled ABI of ``contract``."""
    out: dict[bytes, _EventSpec] = {}
    for item in compile_contracts()[contract].abi:
        if item.get("type") != "event":
            continue
        inputs = item.get("inputs", [])
        indexed = tuple((i["name"], i["type"]) for i in inputs if i.get("indexed"))
        data = tuple((i["name"], i["type"]) for i in inputs if not i.get("indexed"))
        spec = _EventSpec(name=item["name"], indexed=indexed, data=data,
                          words=all(_is_word(t) for _, t in indexed + data))
        out[bytes(event_abi_to_log_topic(item))] = spec
    return out


def event_topic(contract: str, name: str) -> str:
    """The 0x-hex topic0 of event ``name`` of ``contract`` ("MarginEngine" or "PriceFeed")."""
    for topic, spec in _specs(contract).items():
        if spec.name == name:
            return "0x" + topic.hex()
    raise ConfigError(f"{contract} has no event {name!r}")


def engine_topic(name: str) -> str:
    return event_topic(ENGINE, name)


def _norm(typ: str, value: Any) -> Any:
    return to_checksum_address(value) if typ == "address" else value


def _raw(value: Any) -> bytes:
    """Bytes of a log field as web3 formats it (bytes) or as a node sends it (0x hex)."""
    if isinstance(value, str):
        return bytes.fromhex(value[2:] if value.startswith(("0x", "0X")) else value)
    return bytes(value)


def _int(value: Any) -> int:
    return int(value, 16) if isinstance(value, str) else int(value)


def decode_log(entry: LogReceipt | Mapping[str, Any], contract: str) -> Event | None:
    """Decode one log of ``contract``; None for a topic its ABI does not know. ``entry`` is a log
    as web3 returns it or as the node sends it (hex strings: the start-up scan skips web3's
    formatting)."""
    topics = [_raw(t) for t in entry["topics"]]
    if not topics:
        return None
    spec = _specs(contract).get(topics[0])
    if spec is None:
        return None
    if len(topics) != 1 + len(spec.indexed):
        raise ChainError(f"log {spec.name} at block {_int(entry['blockNumber'])} has {len(topics)} topics: "
                         "the ABI does not match the contract; is the deployment file for this chain?")
    args: dict[str, Any] = {}
    data = _raw(entry["data"])
    if spec.words:
        if len(data) != 32 * len(spec.data):
            raise ChainError(f"log {spec.name} at block {_int(entry['blockNumber'])} has {len(data)} data bytes: "
                             "the ABI does not match the contract; is the deployment file for this chain?")
        for (name, typ), topic in zip(spec.indexed, topics[1:]):
            args[name] = _word_value(typ, topic)
        for k, (name, typ) in enumerate(spec.data):
            args[name] = _word_value(typ, data[32 * k:32 * k + 32])
    else:
        for (name, typ), topic in zip(spec.indexed, topics[1:]):
            args[name] = _norm(typ, eth_abi.decode([typ], topic)[0])
        if spec.data:
            values = eth_abi.decode([t for _, t in spec.data], data)
            for (name, typ), value in zip(spec.data, values):
                args[name] = _norm(typ, value)
    tx_hash = entry["transactionHash"]
    return Event(
        name=spec.name,
        contract=contract,
        address=_address(entry["address"]),
        block=_int(entry["blockNumber"]),
        tx_index=_int(entry["transactionIndex"]),
        log_index=_int(entry["logIndex"]),
        tx_hash=tx_hash.lower() if isinstance(tx_hash, str) else "0x" + bytes(tx_hash).hex(),
        args=args,
    )


@functools.lru_cache(maxsize=1024)
def _address(value: Any) -> str:
    return to_checksum_address(value)


def decode_logs(entries: Iterable[LogReceipt], engine: str) -> list[Event]:
    """Decode logs of the engine (at ``engine``) and of feeds (any other address), in chain order."""
    engine = to_checksum_address(engine)
    out: list[Event] = []
    for entry in entries:
        contract = ENGINE if _address(entry["address"]) == engine else FEED
        ev = decode_log(entry, contract)
        if ev is not None:
            out.append(ev)
    out.sort(key=lambda e: e.order)
    return out


# ---------------------------------------------------------------- applying


def empty_state(engine: str) -> ProtocolState:
    """A state with nothing listed, for :func:`apply_event` to build from the deployment's logs."""
    params = Params(quote_token="", quote_scale=1, keeper_share=Wad(0), max_price_age=0, dust_notional=Wad(0))
    return ProtocolState(engine=to_checksum_address(engine), params=params, markets=[], collaterals=[], feeds={})


def _feed(state: ProtocolState, address: str, price_scale: int | None = None) -> Feed:
    f = state.feeds.get(address)
    if f is None:
        # An AnswerUpdated can precede the listing that tells the feed's decimals (the feed's
        # constructor publishes its first answer); 18 until a listing event says otherwise.
        f = state.feeds[address] = Feed(address=address, decimals=18, answer=0, updated_at=0)
    if price_scale is not None:
        f.decimals = decimals_of_scale(price_scale)
    return f


def _set_position(state: ProtocolState, account: str, market: int, size: int, quote: int, cash: int) -> None:
    acc = state.account(account)
    if size == 0:
        acc.positions.pop(market, None)
    else:
        acc.positions[market] = Position(BaseWad(size), Wad(quote))
    acc.cash = Wad(cash)


def _set_collateral(state: ProtocolState, account: str, token: str, balance: int, cash: int) -> None:
    acc = state.account(account)
    if balance == 0:
        acc.collateral.pop(token, None)
    else:
        acc.collateral[token] = balance
    acc.cash = Wad(cash)


def _market(state: ProtocolState, market_id: int) -> Market:
    if market_id >= len(state.markets):
        raise ChainError(f"event for market {market_id} before it was listed: apply logs from the deployment block")
    return state.markets[market_id]


def _collateral(state: ProtocolState, token: str) -> Collateral:
    c = state.collateral_by_token(token)
    if c is None:
        raise ChainError(f"event for collateral {token} before it was listed: apply logs from the deployment block")
    return c


def apply_event(state: ProtocolState, event: Event) -> str | None:
    """Apply one decoded event to ``state``; return the address of the account it changed (the
    engine's address for the house), or None for configuration and price events.

    Account fields, the house and the insurance fund are set from the event's resulting values;
    ``total_collateral`` changes by deltas, so each event must be applied once, in chain order
    (see :func:`apply_logs`).
    """
    a = event.args
    name = event.name

    if event.contract == FEED:
        if name == "AnswerUpdated":
            f = _feed(state, event.address)
            f.answer = int(a["current"])
            f.round_id = int(a["roundId"])
            f.updated_at = int(a["updatedAt"])
        return None

    if event.address != state.engine:
        raise ConfigError(f"event from {event.address} applied to the state of engine {state.engine}")

    # account events ----------------------------------------------------
    if name in ("Trade", "Liquidation"):
        _set_position(state, a["account"], a["market"], a["size"], a["quote"], a["cash"])
        _set_position(state, state.engine, a["market"], a["house_size"], a["house_quote"], a["house_cash"])
        if name == "Liquidation":
            state.insurance_fund = Wad(a["insurance_fund"])
        return a["account"]
    if name in ("Deposit", "Withdraw"):
        token = a["token"]
        if token == state.params.quote_token:
            state.account(a["account"]).cash = Wad(a["cash"])
        else:
            _set_collateral(state, a["account"], token, a["collateral"], a["cash"])
            delta = a["amount"] if name == "Deposit" else -a["amount"]
            state.total_collateral[token] = state.total_collateral.get(token, 0) + delta
        return a["account"]
    if name == "CollateralLiquidation":
        token = a["token"]
        _set_collateral(state, a["account"], token, a["collateral"], a["cash"])
        state.total_collateral[token] = state.total_collateral.get(token, 0) - a["seized"]
        state.account(state.engine).cash = Wad(a["house_cash"])
        state.insurance_fund = Wad(a["insurance_fund"])
        return a["account"]
    if name == "BadDebtSettled":
        state.account(a["account"]).cash = Wad(0)
        state.account(state.engine).cash = Wad(a["house_cash"])
        state.insurance_fund = Wad(a["insurance_fund"])
        return a["account"]
    if name == "LiquidationSkipped":
        return None
    if name == "HouseSeeded":
        state.account(state.engine).cash = Wad(a["cash"])
        return state.engine
    if name == "InsuranceSeeded":
        state.insurance_fund = Wad(a["insurance_fund"])
        return None

    # configuration -----------------------------------------------------
    p = state.params
    if name == "QuoteTokenSet":
        p.quote_token = a["token"]
        p.quote_scale = int(a["quote_scale"])
    elif name == "ParamsSet":
        p.keeper_share = Wad(a["keeper_share"])
        p.max_price_age = int(a["max_price_age"])
        p.dust_notional = Wad(a["dust_notional"])
    elif name == "MarketListed":
        mid = int(a["market"])
        if mid != len(state.markets):
            raise ChainError(f"market {mid} listed out of order (have {len(state.markets)}): logs are missing")
        _feed(state, a["feed"], int(a["price_scale"]))
        state.markets.append(Market(
            id=mid, feed=a["feed"], price_scale=int(a["price_scale"]), imf=Wad(0), mmf=Wad(0),
            liquidation_fee=Wad(0), taker_fee=Wad(0), name=f"MARKET-{mid}",
        ))
    elif name == "MarketParamsSet":
        m = _market(state, int(a["market"]))
        m.imf, m.mmf = Wad(a["imf"]), Wad(a["mmf"])
        m.liquidation_fee, m.taker_fee = Wad(a["liquidation_fee"]), Wad(a["taker_fee"])
        m.oi_cap = BaseWad(a["oi_cap"])
    elif name == "CollateralListed":
        token = a["token"]
        _feed(state, a["feed"], int(a["price_scale"]))
        decimals = int(a["decimals"])
        state.collaterals.append(Collateral(
            token=token, feed=a["feed"], price_scale=int(a["price_scale"]), decimals=decimals,
            unit=10**decimals, init_weight=Wad(0), maint_weight=Wad(0), liquidation_discount=Wad(0),
            index=int(a["index"]), symbol=token[:10],
        ))
        state.collaterals.sort(key=lambda c: c.index)
        state.total_collateral.setdefault(token, 0)
    elif name == "MarketPriceAgeSet":
        _market(state, int(a["market"])).max_price_age = int(a["max_price_age"])
    elif name == "CollateralPriceAgeSet":
        _collateral(state, a["token"]).max_price_age = int(a["max_price_age"])
    elif name == "CollateralParamsSet":
        c = _collateral(state, a["token"])
        c.init_weight, c.maint_weight = Wad(a["init_weight"]), Wad(a["maint_weight"])
        c.liquidation_discount, c.deposit_cap = Wad(a["liquidation_discount"]), Native(a["deposit_cap"])
    elif name == "Paused":
        p.paused = True
    elif name == "Unpaused":
        p.paused = False
    elif name == "OwnershipTransferred":
        p.owner = a["owner"]
    # OwnershipTransferStarted: the pending owner is not part of the mirrored state.
    return None


# ---------------------------------------------------------------- fetching


@dataclass
class AppliedLogs:
    """What :func:`apply_logs` / :func:`apply_events` did: events applied, accounts and feeds
    they touched, and the ``(account, block)`` of each deposit (account discovery)."""

    from_block: int
    to_block: int
    events: int = 0
    accounts: set[str] = field(default_factory=set)
    feeds: set[str] = field(default_factory=set)
    deposits: list[tuple[str, int]] = field(default_factory=list)


_LISTINGS = ("MarketListed", "CollateralListed")


def apply_events(state: ProtocolState, events: Iterable[Event], out: AppliedLogs | None = None) -> tuple[AppliedLogs, list[Event]]:
    """Apply decoded events, in chain order, to ``state``; events of blocks up to ``state.block``
    are skipped (already reflected). Does not move ``state.block``.

    A feed's ``AnswerUpdated`` is applied only for a feed the engine has listed, in ``state`` or in
    ``events`` (a feed publishes its first answer before it is listed); the updates of other feeds
    are returned, the latest per feed, for a caller that reads logs in chunks to pass on with the
    next chunk (its listing may come later). Returns ``(what was applied, those updates)``.
    """
    events = list(events)
    if out is None:
        out = AppliedLogs(from_block=state.block + 1, to_block=max((ev.block for ev in events), default=state.block))
    listed = set(state.feeds)
    for ev in events:
        if ev.name in _LISTINGS and ev.contract == ENGINE:
            listed.add(ev.args["feed"])
    unlisted: dict[str, Event] = {}
    for ev in events:
        if ev.block <= state.block:
            continue
        if ev.contract == FEED:
            if ev.address not in listed:
                unlisted[ev.address] = ev
                continue
            out.feeds.add(ev.address)
        who = apply_event(state, ev)
        out.events += 1
        if who is not None:
            out.accounts.add(who)
            if ev.name == "Deposit":
                out.deposits.append((who, ev.block))
    return out, list(unlisted.values())


def fetch_events(
    w3: Web3,
    engine: str,
    feeds: Iterable[str],
    from_block: int,
    to_block: int,
    chunk: int = DEFAULT_LOG_CHUNK,
) -> list[Event]:
    """Every engine event and every ``AnswerUpdated`` of ``feeds`` and of any feed the engine
    lists in the range, decoded and in chain order. ``eth_getLogs`` in adaptive chunks
    (:mod:`protocol_model.logscan`) starting at ``chunk`` blocks per request."""
    if chunk < 1:
        raise ConfigError(f"log chunk {chunk} must be at least 1 block")
    engine = to_checksum_address(engine)
    engine_logs = fetch_logs(w3, engine, None, from_block, to_block, chunk)
    events = decode_logs(engine_logs, engine)
    feed_set = {to_checksum_address(f) for f in feeds}
    for ev in events:
        if ev.name in ("MarketListed", "CollateralListed"):
            feed_set.add(ev.args["feed"])
    if feed_set:
        topic = event_topic(FEED, "AnswerUpdated")
        feed_logs = fetch_logs(w3, sorted(feed_set), [topic], from_block, to_block, chunk)
        events.extend(decode_logs(feed_logs, engine))
        events.sort(key=lambda e: e.order)
    return events


def fill_names(state: ProtocolState, deployment: Deployment) -> None:
    """Market names and collateral symbols (no log carries them) from the deployment file."""
    for name, m in deployment.markets.items():
        mid = int(m["id"])
        if mid < len(state.markets):
            state.markets[mid].name = name
    for sym, c in deployment.collaterals.items():
        col = state.collateral_by_token(to_checksum_address(c["token"]))
        if col is not None:
            col.symbol = sym


def apply_logs(
    w3: Web3,
    deployment: Deployment,
    state: ProtocolState,
    to_block: BlockIdentifier = "latest",
    chunk: int = DEFAULT_LOG_CHUNK,
) -> AppliedLogs:
    """Bring ``state`` (which reflects blocks up to ``state.block``) forward to ``to_block`` from
    logs alone, and set ``state.block`` / ``state.timestamp`` to that block (one header read)."""
    start = state.block + 1
    end = resolve_block(w3, to_block)
    out = AppliedLogs(from_block=start, to_block=end)
    if end < start:
        return out
    events = fetch_events(w3, state.engine, state.feeds.keys(), start, end, chunk)
    apply_events(state, events, out)
    fill_names(state, deployment)
    state.block = end
    state.timestamp = int(w3.eth.get_block(end)["timestamp"])
    log.debug("applied %d events of blocks %d..%d (%d accounts)", out.events, start, end, len(out.accounts))
    return out


def rebuild_from_logs(
    w3: Web3,
    deployment: Deployment,
    from_block: int | None = None,
    to_block: BlockIdentifier = "latest",
    chunk: int = DEFAULT_LOG_CHUNK,
) -> ProtocolState:
    """The protocol state at ``to_block`` from event logs alone (no state reads; one header read for
    the block time). ``from_block`` (default: the deployment block) must precede the engine's
    deployment, since its constructor's events set the quote token and parameters."""
    start = deployment.block if from_block is None else from_block
    state = empty_state(deployment.engine)
    state.block = start - 1
    apply_logs(w3, deployment, state, to_block, chunk)
    if not state.params.quote_token:
        raise ChainError(
            f"no QuoteTokenSet event of engine {state.engine} in blocks {start}..{state.block}: "
            "start from the engine's deployment block (the deployment file's 'block')"
        )
    return state


__all__ = [
    "AppliedLogs",
    "Event",
    "apply_event",
    "apply_events",
    "apply_logs",
    "decode_log",
    "decode_logs",
    "empty_state",
    "engine_topic",
    "event_topic",
    "fetch_events",
    "fill_names",
    "rebuild_from_logs",
]
