"""Pending transactions: where the bot sees the mempool, and what it reads in it.

Two parts, apart from each other:

* a **source** of pending transactions, behind one protocol, :class:`PendingSource`:
  ``drain() -> list[dict]`` returns the transactions the node accepted into its pool since the
  last call (each once, in arrival order), ``close()`` releases what the source holds on the node.
  :class:`FilterPendingSource` is the HTTP one: ``eth_newPendingTransactionFilter`` once, then per
  drain one ``eth_getFilterChanges`` (the new hashes) and one JSON-RPC batch of
  ``eth_getTransactionByHash`` (the full objects); a filter the node forgot (expired, or a
  restarted node: "filter not found") is created again and the drain goes on from there. The dev
  node and anvil both have the filter. A WebSocket ``newPendingTransactions`` subscription is the
  other implementation (:mod:`bot.ws`).

  Every transaction is a plain dict in one shape, whatever the node's formatting: ``hash``,
  ``input`` (0x hex strings), ``from``, ``to`` (checksummed; ``to`` is None for a creation),
  ``nonce``, ``gas``, ``type``, ``gasPrice``, ``maxFeePerGas``, ``maxPriorityFeePerGas`` (ints;
  the last two are None for a legacy or access-list transaction) (:func:`normalize_tx`).

* **decoders**: a :class:`DecoderRegistry` maps (contract address, 4-byte selector) to a
  :data:`Decoder`, a function of the transaction that returns the :class:`PriceUpdate` it would
  publish (the feed the engine reads and the new answer, in feed units), or None. Built in: the
  project's feeds' ``set_answer(int256)`` (:func:`set_answer_decoder`, registered for each feed by
  :meth:`DecoderRegistry.for_feeds`), which accepts only transactions from the feed's updater
  when it is known (anyone else's ``set_answer`` reverts on chain).

  **Chainlink OCR** plugs in the same way, without any change here: the transmitting contract is
  the aggregator behind the proxy the engine reads, and the call is ``transmit(bytes32[3]
  reportContext, bytes report, bytes32[] rs, bytes32[] ss, bytes32 rawVs)``. A decoder registered
  with ``registry.register(aggregator, selector("transmit(bytes32[3],bytes,bytes32[],bytes32[],bytes32)"),
  decoder)`` would ABI-decode the call, decode ``report`` (OCR2: ``(uint32 observationsTimestamp,
  bytes32 observers, int192[] observations, int192 juelsPerFeeCoin)``), take the median
  observation ``observations[len // 2]`` (the aggregator stores exactly that as the answer) and
  return ``PriceUpdate(proxy, median)``, ``proxy`` being the feed address the engine was
  configured with. Only the transmitters the aggregator lists can transmit: a careful decoder
  checks ``tx["from"]`` against them, as the built-in one checks the updater.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Mapping
from typing import Any, NamedTuple, Protocol, runtime_checkable

from eth_utils import to_checksum_address
from web3 import Web3
from web3.exceptions import TransactionNotFound, Web3RPCError

from protocol_model.calls import decode_call, selector

log = logging.getLogger(__name__)

SET_ANSWER = "set_answer(int256)"          # PriceFeed.vy's update (contracts/PriceFeed.vy)
TX_FIELDS = ("hash", "from", "to", "input", "nonce", "gas", "type", "gasPrice", "maxFeePerGas",
             "maxPriorityFeePerGas")
_INT_FIELDS = ("nonce", "gas", "type", "gasPrice", "maxFeePerGas", "maxPriorityFeePerGas")

# A JSON-RPC batch: (method, params) requests -> raw response objects in request order, or None when
# the provider cannot batch (bot.txs.TxSender._batch is one).
BatchFn = Callable[[list[tuple[str, list[Any]]]], "list[Any] | None"]


# ---------------------------------------------------------------------- sources


@runtime_checkable
class PendingSource(Protocol):
    """New pending transactions since the last :meth:`drain` (see the module docstring)."""

    def drain(self) -> list[dict[str, Any]]: ...

    def close(self) -> None: ...


def _hex(value: Any) -> str:
    if isinstance(value, str):
        return value if value.startswith("0x") else "0x" + value
    return "0x" + bytes(value).hex()


def _int(value: Any) -> int | None:
    if value is None:
        return None
    if isinstance(value, str):
        return int(value, 16) if value.startswith(("0x", "0X")) else int(value)
    return int(value)


def normalize_tx(obj: Mapping[str, Any] | None) -> dict[str, Any] | None:
    """A node's transaction object (raw JSON-RPC, or web3's formatted one) in the one shape of the
    module docstring; None for a missing transaction (mined or dropped meanwhile) or a malformed one."""
    if not obj or obj.get("hash") is None:
        return None
    try:
        to = obj.get("to")
        out: dict[str, Any] = {
            "hash": _hex(obj["hash"]).lower(),
            "from": to_checksum_address(obj["from"]),
            "to": to_checksum_address(to) if to else None,
            "input": _hex(obj.get("input", obj.get("data", "0x"))),
        }
        for name in _INT_FIELDS:
            out[name] = _int(obj.get(name))
    except (KeyError, TypeError, ValueError):
        return None
    if out["type"] is None:
        out["type"] = 2 if out["maxFeePerGas"] is not None else 0
    return out


class FilterPendingSource:
    """:class:`PendingSource` over ``eth_newPendingTransactionFilter`` (HTTP polling).

    ``batch`` fetches the transactions in one JSON-RPC batch (default: one request each through
    web3); ``skip(hash)`` leaves out hashes the caller knows already (its own transactions), so
    that they are not fetched. The filter is created on the first drain (what arrived before is
    not seen) and again whenever the node has forgotten it. A transaction mined before it is
    fetched is left out: it is not pending any more, and the next head carries it.
    """

    def __init__(self, w3: Web3, *, batch: BatchFn | None = None, skip: Callable[[str], bool] | None = None,
                 max_batch: int = 200) -> None:
        self.w3 = w3
        self._batch = batch
        self._skip = skip
        self.max_batch = max(1, max_batch)
        self.filter_id: str | None = None
        self.recreated = 0          # times the node forgot the filter
        self.seen = 0               # hashes the filter returned
        self.fetched = 0            # transactions fetched in full

    def __repr__(self) -> str:
        return f"FilterPendingSource(filter={self.filter_id})"

    def start(self) -> None:
        """Create the filter now (else on the first drain): transactions from here on are seen."""
        if self.filter_id is None:
            self.filter_id = _hex_id(self.w3.eth.filter("pending").filter_id)

    def drain(self) -> list[dict[str, Any]]:
        if self.filter_id is None:
            self.start()
            return []
        try:
            changes = self.w3.eth.get_filter_changes(self.filter_id)  # type: ignore[arg-type]
        except Web3RPCError as exc:
            if "filter not found" not in str(exc).lower():
                raise
            log.warning("the node forgot the pending-transaction filter: creating it again (transactions "
                        "sent meanwhile were not seen)")
            self.recreated += 1
            self.filter_id = None
            self.start()
            return []
        hashes = [_hex(h).lower() for h in changes]
        self.seen += len(hashes)
        if self._skip is not None:
            hashes = [h for h in hashes if not self._skip(h)]
        if not hashes:
            return []
        out: list[dict[str, Any]] = []
        for i in range(0, len(hashes), self.max_batch):
            out.extend(self._fetch(hashes[i:i + self.max_batch]))
        self.fetched += len(out)
        return out

    def _fetch(self, hashes: list[str]) -> list[dict[str, Any]]:
        responses = self._batch([("eth_getTransactionByHash", [h]) for h in hashes]) \
            if self._batch is not None and len(hashes) > 1 else None
        if responses is None:
            objs: list[Any] = []
            for h in hashes:
                try:
                    objs.append(self.w3.eth.get_transaction(h))  # type: ignore[arg-type]
                except TransactionNotFound:
                    continue
        else:
            objs = [r.get("result") if isinstance(r, Mapping) else None for r in responses]
        # Mined since the filter saw it (between two drains): not pending any more, the head has it.
        return [tx for tx in (normalize_tx(o) for o in objs if o and o.get("blockNumber") is None) if tx is not None]

    def close(self) -> None:
        filter_id, self.filter_id = self.filter_id, None
        if filter_id is None:
            return
        try:
            self.w3.eth.uninstall_filter(filter_id)  # type: ignore[arg-type]
        except (Web3RPCError, OSError) as exc:   # the node is gone: nothing left to release
            log.debug("could not uninstall the pending-transaction filter: %s", exc)


def _hex_id(filter_id: Any) -> str:
    return filter_id if isinstance(filter_id, str) else hex(int(filter_id))


# ---------------------------------------------------------------------- decoders


class PriceUpdate(NamedTuple):
    """A price a pending transaction would publish: ``feed`` (the address the engine reads),
    ``answer`` (feed units), and the transaction itself (its fees place a backrun)."""

    feed: str
    answer: int
    tx: dict[str, Any]


# A decoder: the pending transaction (normalized) -> the update it would publish, or None.
Decoder = Callable[[dict[str, Any]], "PriceUpdate | None"]


def set_answer_decoder(feed: str, updater: str | None = None) -> Decoder:
    """The decoder of ``PriceFeed.set_answer(answer)`` sent to ``feed`` (by ``updater`` when given)."""
    feed = to_checksum_address(feed)
    updater = to_checksum_address(updater) if updater else None

    def decode(tx: dict[str, Any]) -> PriceUpdate | None:
        if tx.get("to") != feed or (updater is not None and tx.get("from") != updater):
            return None
        args = decode_call(SET_ANSWER, bytes.fromhex(tx["input"][2:]))
        return PriceUpdate(feed, int(args[0]), tx) if args is not None else None

    return decode


class DecoderRegistry:
    """(contract address, selector) -> :data:`Decoder` (see the module docstring)."""

    def __init__(self) -> None:
        self._decoders: dict[tuple[str, bytes], Decoder] = {}

    @classmethod
    def for_feeds(cls, feeds: Iterable[str] | Mapping[str, str | None]) -> "DecoderRegistry":
        """``set_answer`` of each feed; with a mapping feed -> updater, only the updater's."""
        registry = cls()
        updaters = feeds if isinstance(feeds, Mapping) else dict.fromkeys(feeds)
        for feed, updater in updaters.items():
            registry.register(feed, selector(SET_ANSWER), set_answer_decoder(feed, updater))
        return registry

    def register(self, to: str, sel: bytes, decoder: Decoder) -> None:
        """Decode calls of selector ``sel`` (4 bytes) sent to ``to`` with ``decoder`` (replaces one)."""
        if len(sel) != 4:
            raise ValueError("a selector is 4 bytes")
        self._decoders[(to_checksum_address(to), bytes(sel))] = decoder

    def __len__(self) -> int:
        return len(self._decoders)

    def __contains__(self, key: object) -> bool:
        return key in self._decoders

    def decode(self, tx: dict[str, Any]) -> PriceUpdate | None:
        """The price update ``tx`` would publish, or None (another contract, another function, or
        a call the decoder refuses)."""
        to, data = tx.get("to"), tx.get("input") or "0x"
        if to is None or len(data) < 10:
            return None
        decoder = self._decoders.get((to, bytes.fromhex(data[2:10])))
        return decoder(tx) if decoder is not None else None

    def updates(self, txs: Iterable[dict[str, Any]]) -> list[PriceUpdate]:
        """The decoded price updates among ``txs``, in order."""
        return [u for u in (self.decode(tx) for tx in txs) if u is not None]


__all__ = ["SET_ANSWER", "TX_FIELDS", "BatchFn", "Decoder", "DecoderRegistry", "FilterPendingSource",
           "PendingSource", "PriceUpdate", "normalize_tx", "set_answer_decoder"]
