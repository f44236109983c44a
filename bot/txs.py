"""Sending liquidations: nonces, EIP-1559 fees, preflight, signing, tracking and replacement.

The parts, apart from each other as in auction-keeper's ``gas.py``:

* :class:`NonceManager` hands out consecutive nonces from ``eth_getTransactionCount(addr,
  "pending")``, so several liquidations go out in one block without waiting for each other;
* fee strategies behind one protocol, :class:`FeeStrategy` (``fees(base_fee_wei,
  expected_profit_wei) -> Fees``): :class:`FixedTip` and :class:`ProfitShareTip`. The max fee is
  ``2 * base fee + tip`` (room for two full blocks of base-fee growth), capped at the configured
  cap; :func:`bump_fees` raises both fees by at least 12.5 %, rounded up, for a replacement;
* :class:`TxSender` preflights every transaction with ``eth_call`` (a revert comes back as a
  :class:`Preflight` failure with the reason, nothing is signed), signs locally with an
  ``eth_account`` ``LocalAccount``, sends the raw transaction, records it, and on each block
  (:meth:`TxSender.check_pending`) looks for receipts, replaces a transaction stuck for
  ``stuck_after_blocks`` with the same nonce and bumped fees (or, when the liquidation is no
  longer possible, with a cheap self-transfer that frees the nonce), and reports outcomes;
  :meth:`TxSender.preflight_many` / :meth:`TxSender.send_many` do the same for many transactions
  at once: one JSON-RPC batch of ``eth_call`` preflights, then local signing (libsecp256k1 through
  coincurve when available), then one batch of raw transactions; providers that cannot batch
  (eth-tester) get the requests one by one;
* :func:`classify_revert` tells a lost race (a rival liquidated first: ``"healthy"``,
  ``"no position"``, ``"no debt"``, ``"no collateral"``, ``"no bad debt"``) from an error.

With ``dry_run=True`` the sender preflights and decides, logs what it would send and counts it,
but never signs nor sends.
"""

from __future__ import annotations

import functools
import logging
import threading
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any, Literal, NamedTuple, Protocol, runtime_checkable

import rlp
from eth_account.signers.local import LocalAccount
from eth_utils import keccak
from eth_utils.exceptions import ValidationError as EthUtilsValidationError
from web3 import Web3
from web3._utils.error_formatters_utils import raise_contract_logic_error_on_revert
from web3.exceptions import ContractLogicError, TransactionNotFound, Web3RPCError, Web3TypeError

from protocol_model import calls
from protocol_model.actions import LiquidationOrder
from protocol_model.calls import decode_call
from protocol_model.chain import revert_reason
from protocol_model.wad import GWEI, WAD

from .config import MIN_REPLACEMENT_BUMP_WAD
from .errors import CircuitOpen, RpcError, TxError
from .store import LiquidationRecord, SentTx, Store, normalize_target

if TYPE_CHECKING:
    from web3.contract.contract import ContractFunction
    from web3.types import TxReceipt

    from .config import BotConfig

try:
    from coincurve import PrivateKey as _CoincurveKey
except ImportError:  # eth_account signs (slower)
    _CoincurveKey = None

log = logging.getLogger(__name__)

DEFAULT_MAX_FEE_CAP_WEI = 500 * GWEI
CANCEL_GAS = 21_000
LOST_RACE_REASONS = frozenset({"healthy", "no position", "no debt", "no collateral", "no bad debt"})

RevertClass = Literal["lost_race", "error"]


LIQUIDATE_MANY = "liquidate_many"          # the kind of a batch transaction (SentTx.kind)


@functools.lru_cache(maxsize=256)
def batch_orders(data: str | bytes) -> tuple[LiquidationOrder, ...]:
    """The orders of a ``liquidate_many`` call's data (empty for any other call)."""
    raw = bytes.fromhex(data[2:] if data.startswith("0x") else data) if isinstance(data, str) else bytes(data)
    args = decode_call(calls.LIQUIDATE_MANY, raw)
    return tuple(LiquidationOrder(*o) for o in args[0]) if args is not None else ()


def order_target(order: LiquidationOrder) -> str:
    """An order's target as stored: the market id (decimal) or the collateral token."""
    return normalize_target(order.token if order.is_collateral else int(order.market))


def classify_revert(reason: str | None) -> RevertClass:
    """``"lost_race"`` when the revert means another liquidator got there first, else ``"error"``.

    The engine reverts ``"healthy"`` once a rival's liquidation restored the account,
    ``"no position"`` once the position is closed, ``"no debt"`` / ``"no collateral"`` once a
    rival's collateral liquidation repaid the debt or took the collateral, and ``"no bad debt"``
    once a rival settled it. Anything else (stale price, paused, out of gas, unknown) is an error.
    """
    if not reason:
        return "error"
    text = reason.strip()
    if text.lower().startswith("execution reverted"):
        text = text[len("execution reverted"):].lstrip(": ").strip()
    return "lost_race" if text.lower() in LOST_RACE_REASONS else "error"


# ---------------------------------------------------------------------- fees


class Fees(NamedTuple):
    """EIP-1559 fees per gas, wei."""

    max_fee_per_gas: int
    max_priority_fee_per_gas: int

    def worst_case_cost(self, gas: int) -> int:
        """The most the transaction can cost, wei."""
        return self.max_fee_per_gas * gas


@runtime_checkable
class FeeStrategy(Protocol):
    """Prices a transaction from the current base fee and the expected profit (both wei)."""

    max_fee_cap_wei: int

    def fees(self, base_fee_wei: int, expected_profit_wei: int) -> Fees: ...


def capped_fees(base_fee_wei: int, tip_wei: int, max_fee_cap_wei: int) -> Fees:
    """``max fee = min(2 * base + tip, cap)`` and ``tip = min(tip, max fee)``."""
    if base_fee_wei < 0 or tip_wei < 0:
        raise ValueError("fees cannot be negative")
    max_fee = min(2 * base_fee_wei + tip_wei, max_fee_cap_wei)
    return Fees(max_fee, min(tip_wei, max_fee))


@dataclass(frozen=True)
class FixedTip:
    """The same priority fee every time."""

    tip_wei: int
    max_fee_cap_wei: int = DEFAULT_MAX_FEE_CAP_WEI

    def fees(self, base_fee_wei: int, expected_profit_wei: int = 0) -> Fees:
        return capped_fees(base_fee_wei, self.tip_wei, self.max_fee_cap_wei)


@dataclass(frozen=True)
class ProfitShareTip:
    """A priority fee worth ``share_wad`` of the expected profit over ``gas_estimate`` gas.

    ``tip per gas = floor(expected_profit_wei * share_wad / WAD / gas_estimate)``, at least
    ``min_tip_wei``; a bigger prize buys a better place in the block.
    """

    share_wad: int
    gas_estimate: int
    max_fee_cap_wei: int = DEFAULT_MAX_FEE_CAP_WEI
    min_tip_wei: int = 0

    def __post_init__(self) -> None:
        if not 0 <= self.share_wad <= WAD:
            raise ValueError("share_wad must be between 0 and 10**18")
        if self.gas_estimate <= 0:
            raise ValueError("gas_estimate must be > 0")

    def tip_for(self, expected_profit_wei: int) -> int:
        if expected_profit_wei <= 0:
            return self.min_tip_wei
        return max(self.min_tip_wei, expected_profit_wei * self.share_wad // WAD // self.gas_estimate)

    def fees(self, base_fee_wei: int, expected_profit_wei: int) -> Fees:
        return capped_fees(base_fee_wei, self.tip_for(expected_profit_wei), self.max_fee_cap_wei)


def strategy_from_config(config: "BotConfig") -> FeeStrategy:
    """The fee strategy named by ``config.gas_strategy``, with its parameters and the cap."""
    if config.gas_strategy == "profit_share":
        return ProfitShareTip(config.profit_share_wad, config.liquidation_gas_estimate,
                              config.max_fee_cap_wei, config.min_tip_wei)
    return FixedTip(config.fixed_tip_wei, config.max_fee_cap_wei)


def bump(value: int, bump_wad: int = MIN_REPLACEMENT_BUMP_WAD) -> int:
    """``value * (1 + bump)`` rounded up, with the bump never below 12.5 %."""
    bump_wad = max(bump_wad, MIN_REPLACEMENT_BUMP_WAD)
    return value + -(-value * bump_wad // WAD)


def bump_fees(fees: Fees, bump_wad: int = MIN_REPLACEMENT_BUMP_WAD) -> Fees:
    """Both fees raised by at least ``bump_wad`` (>= 12.5 %), rounded up: what a replacement needs."""
    tip = bump(fees.max_priority_fee_per_gas, bump_wad)
    max_fee = max(bump(fees.max_fee_per_gas, bump_wad), tip)
    return Fees(max_fee, tip)


def replacement_fees(old: Fees, fresh: Fees, bump_wad: int = MIN_REPLACEMENT_BUMP_WAD) -> Fees:
    """Fees of a replacement: the bumped old ones, or the strategy's current ones where higher."""
    bumped = bump_fees(old, bump_wad)
    tip = max(bumped.max_priority_fee_per_gas, fresh.max_priority_fee_per_gas)
    return Fees(max(bumped.max_fee_per_gas, fresh.max_fee_per_gas, tip), tip)


# ---------------------------------------------------------------------- nonces


class NonceManager:
    """Consecutive nonces for one sender, without a round trip per transaction.

    Starts from ``eth_getTransactionCount(address, "pending")`` on first use. A nonce handed out
    but never accepted by the node goes back with :meth:`release` (it is handed out again before
    any new one, so no gap blocks later transactions). :meth:`resync` re-reads the node after a
    "nonce too low" or a transaction that disappeared. Thread-safe.
    """

    def __init__(self, w3: Web3, address: str) -> None:
        self.w3 = w3
        self.address = Web3.to_checksum_address(address)
        self._lock = threading.Lock()
        self._next: int | None = None
        self._released: set[int] = set()

    def next(self) -> int:
        with self._lock:
            if self._next is None:
                self._next = int(self.w3.eth.get_transaction_count(self.address, "pending"))
            if self._released:
                nonce = min(self._released)
                self._released.discard(nonce)
                return nonce
            nonce = self._next
            self._next += 1
            return nonce

    def peek(self) -> int | None:
        """The nonce :meth:`next` would hand out, or None before the first sync."""
        with self._lock:
            if self._released:
                return min(self._released)
            return self._next

    def release(self, nonce: int) -> None:
        """Give back a nonce whose transaction the node never accepted."""
        with self._lock:
            if self._next is None:
                return
            if nonce == self._next - 1:
                self._next -= 1
                while self._next - 1 in self._released:  # collapse released nonces at the top
                    self._next -= 1
                    self._released.discard(self._next)
            elif nonce < self._next:
                self._released.add(nonce)

    def resync(self) -> int:
        """Take the node's pending transaction count as the next nonce; returns it."""
        count = int(self.w3.eth.get_transaction_count(self.address, "pending"))
        with self._lock:
            old = self._next
            self._next = count
            self._released = {n for n in self._released if n < count}
        if old is not None and old != count:
            log.warning("nonce resynced for %s: %d -> %d", self.address, old, count)
        return count


# ---------------------------------------------------------------------- results


@dataclass(frozen=True)
class Preflight:
    """What the ``eth_call`` dry run said: ``ok`` (and the call's ``result``, 0x hex), or the
    revert ``reason`` and its class."""

    ok: bool
    reason: str | None = None
    classification: RevertClass | None = None
    gas_estimate: int | None = None
    result: str | None = None
    skips: tuple[str | None, ...] | None = None   # liquidate_many: each order's skip reason (None: executed), if known

    @property
    def lost_race(self) -> bool:
        return self.classification == "lost_race"


@dataclass(frozen=True)
class TxRequest:
    """One transaction for :meth:`TxSender.send_many`: where, what, and what it is for the store."""

    to: str
    data: str | bytes
    kind: str
    account: str
    target: str | int
    gas: int
    expected_profit_wei: int = 0
    expected_profit_usd_wad: int = 0
    value: int = 0


SendStatus = Literal["sent", "dry_run", "preflight_failed", "fee_too_low", "rejected"]


@dataclass(frozen=True)
class SendResult:
    """The fate of one :meth:`TxSender.send`: only ``"sent"`` put a transaction on the wire."""

    status: SendStatus
    preflight: Preflight
    tx: SentTx | None = None
    fees: Fees | None = None
    error: str | None = None

    @property
    def sent(self) -> bool:
        return self.status == "sent"


OutcomeStatus = Literal["mined", "reverted", "dropped"]


@dataclass(frozen=True)
class TxOutcome:
    """A nonce that got settled: the transaction that was mined (or all dropped) and its result."""

    status: OutcomeStatus
    tx: SentTx                           # the final record of the transaction that settled the nonce
    receipt: Any = None                  # web3 TxReceipt when mined
    revert_reason: str | None = None
    classification: RevertClass | None = None
    superseded: tuple[str, ...] = ()     # other hashes of the same nonce (replaced / dropped)

    @property
    def gas_cost_wei(self) -> int:
        return self.tx.gas_cost_wei or 0

    @property
    def lost_race(self) -> bool:
        return self.classification == "lost_race"


@dataclass(frozen=True)
class ReorgRepair:
    """What :meth:`TxSender.after_reorg` changed."""

    unmined: list[SentTx]                  # recorded as mined, not on the canonical chain
    dropped: list[LiquidationRecord]       # outcomes deleted with them
    gone: list[SentTx]                     # in flight, unknown to the node: dropped


@dataclass
class SenderStats:
    sent: int = 0
    dry_run: int = 0              # transactions a dry run would have sent
    preflight_failed: int = 0
    replacements: int = 0
    cancels: int = 0
    mined: int = 0
    reverted: int = 0
    dropped: int = 0
    gas_spent_wei: int = 0


# ---------------------------------------------------------------------- the sender


def _tester_errors(*names: str) -> tuple[type[BaseException], ...]:
    """eth-tester's exception types (the in-process chain raises them from the provider)."""
    try:
        from eth_tester import exceptions as tester_exceptions
    except ImportError:  # a JSON-RPC node only: web3's own exceptions are enough
        return ()
    return tuple(getattr(tester_exceptions, name) for name in names)


# What a node's refusal of a raw transaction looks like: a JSON-RPC error (any node), or
# eth-tester / py-evm validation errors raised in-process.
# web3's default middleware (RequestManager.get_default_middleware): left out of raw batches.
_WEB3_DEFAULT_LAYERS = frozenset({"gas_price_strategy", "ens_name_to_address", "attrdict", "validation", "gas_estimate"})

_SEND_ERRORS: tuple[type[BaseException], ...] = (
    Web3RPCError, EthUtilsValidationError, ValueError, *_tester_errors("ValidationError", "TransactionFailed"),
)
# What a revert of an eth_call looks like.
_REVERT_ERRORS: tuple[type[BaseException], ...] = (ContractLogicError, *_tester_errors("TransactionFailed"))


def _send_error_kind(exc: BaseException) -> str:
    text = str(exc).lower()
    if "already known" in text or "known transaction" in text or "already imported" in text:
        return "known"
    if "nonce too low" in text or "invalid transaction nonce" in text or "nonce is too low" in text:
        return "nonce_low"
    if "nonce too high" in text:
        return "nonce_high"
    if "underpriced" in text:
        return "underpriced"
    if "max fee per gas less than block base fee" in text or "fee cap less than block base fee" in text:
        return "fee_too_low"
    return "other"


@dataclass
class _Group:
    """Every transaction sent with one nonce, oldest first."""

    nonce: int
    txs: list[SentTx] = field(default_factory=list)
    cap_warned: bool = False

    @property
    def latest(self) -> SentTx:
        return self.txs[-1]


class TxSender:
    """Preflights, prices, signs, sends and follows the bot's transactions.

    ``store`` (optional) persists every transaction and status change, and :meth:`restore` picks
    the in-flight ones up again after a restart. The fee cap for replacements is
    ``max_fee_cap_wei`` (default: the strategy's cap).
    """

    def __init__(
        self,
        w3: Web3,
        account: LocalAccount,
        strategy: FeeStrategy,
        *,
        nonces: NonceManager | None = None,
        store: Store | None = None,
        max_fee_cap_wei: int | None = None,
        bump_wad: int = MIN_REPLACEMENT_BUMP_WAD,
        stuck_after_blocks: int = 3,
        dry_run: bool = False,
        gas_margin_wad: int = 12 * WAD // 10,
        chain_id: int | None = None,
    ) -> None:
        if bump_wad < MIN_REPLACEMENT_BUMP_WAD:
            raise ValueError("bump_wad must be at least 12.5% (125 * 10**15)")
        self.w3 = w3
        self._account = account
        self.address = Web3.to_checksum_address(account.address)
        self.strategy = strategy
        self.nonces = nonces if nonces is not None else NonceManager(w3, self.address)
        self.store = store
        self.max_fee_cap_wei = max_fee_cap_wei if max_fee_cap_wei is not None else strategy.max_fee_cap_wei
        self.bump_wad = bump_wad
        self.stuck_after_blocks = stuck_after_blocks
        self.dry_run = dry_run
        self.gas_margin_wad = gas_margin_wad
        self._chain_id = chain_id
        self.stats = SenderStats()
        self._lock = threading.RLock()
        self._groups: dict[int, _Group] = {}
        self._can_batch: bool | None = None
        self._batch_cache: tuple[tuple[Any, ...], Any] | None = None
        self._fast_key = _fast_signer(account)

    def __repr__(self) -> str:
        return f"TxSender(address={self.address}, dry_run={self.dry_run}, in_flight={len(self._groups)})"

    @classmethod
    def from_config(cls, w3: Web3, account: LocalAccount, config: "BotConfig", **kwargs: Any) -> "TxSender":
        return cls(
            w3, account, strategy_from_config(config),
            max_fee_cap_wei=config.max_fee_cap_wei, bump_wad=config.replacement_bump_wad,
            stuck_after_blocks=config.stuck_after_blocks, dry_run=config.dry_run, **kwargs,
        )

    @property
    def chain_id(self) -> int:
        if self._chain_id is None:
            self._chain_id = int(self.w3.eth.chain_id)
        return self._chain_id

    # in-flight view ----------------------------------------------------------
    @property
    def in_flight(self) -> list[SentTx]:
        """The newest transaction of every unsettled nonce, by nonce."""
        with self._lock:
            return [self._groups[n].latest for n in sorted(self._groups)]

    def pending_for(self, account: str, target: str | int | None = None) -> list[SentTx]:
        """In-flight liquidations (not cancels) of ``account`` (and ``target``); a ``liquidate_many``
        is in flight for every account and target of its orders."""
        a = Web3.to_checksum_address(account)
        t = normalize_target(target) if target is not None else None
        out = []
        for tx in self.in_flight:
            if tx.kind == LIQUIDATE_MANY:
                if any(o.account == a and (t is None or order_target(o) == t) for o in batch_orders(tx.data)):
                    out.append(tx)
            elif tx.kind != "cancel" and tx.account == a and (t is None or tx.target == t):
                out.append(tx)
        return out

    def restore(self) -> int:
        """Load this sender's pending transactions from the store (after a restart); returns how many."""
        if self.store is None:
            return 0
        count = 0
        with self._lock:
            for tx in self.store.pending_txs():
                if tx.sender != self.address:
                    continue
                group = self._groups.setdefault(tx.nonce, _Group(tx.nonce))
                if tx.hash not in {t.hash for t in group.txs}:
                    group.txs.append(tx)
                    count += 1
            for group in self._groups.values():
                group.txs.sort(key=lambda t: (t.sent_at, t.sent_block))
        if count:
            log.info("restored %d in-flight transaction(s) over %d nonce(s)", count, len(self._groups))
        return count

    def reconcile(self) -> list[SentTx]:
        """Ask the node about every transaction in flight (after a restart or a reorg): a nonce
        none of whose hashes the node knows, and that nothing used on chain, is gone (a kill
        before the broadcast, a rewound chain): its records are marked ``dropped`` and the nonce
        is free again. Then the nonce manager resyncs from the node. Returns the dropped ones;
        costs one request per in-flight hash plus one nonce read."""
        with self._lock:
            groups = [self._groups[n] for n in sorted(self._groups)]
        gone: list[SentTx] = []
        for group in groups:
            if any(self.node_has(tx.hash) for tx in reversed(group.txs)):
                continue
            for tx in group.txs:
                if self.store is not None:
                    self.store.update_tx(tx.hash, status="dropped", revert_reason="gone: the node does not have it")
                gone.append(tx)
            with self._lock:
                self._groups.pop(group.nonce, None)
        if gone:
            log.warning("%d transaction(s) in flight are unknown to the node (never broadcast, or on a dropped "
                        "branch): dropped, nonce(s) %s free again", len(gone), sorted({t.nonce for t in gone}))
        if groups or gone:
            self.nonces.resync()
        return gone

    def verify_mined(self) -> tuple[list[SentTx], list[LiquidationRecord]]:
        """After a reorg deeper than the lookback window: check the transactions recorded as
        mined, newest first, by hash, until one is still in its block; those that are not go back
        to ``pending`` (the node still has them) or ``dropped`` (gone), and their recorded
        liquidation outcomes are deleted. Returns the transactions unmined and the deleted outcomes."""
        if self.store is None:
            return [], []
        unmined: list[SentTx] = []
        records: list[LiquidationRecord] = []
        for tx in list(self.store.mined_txs_newest_first()):
            try:
                receipt = self.w3.eth.get_transaction_receipt(tx.hash)  # type: ignore[arg-type]
            except TransactionNotFound:
                receipt = None
            if receipt is not None and receipt.get("blockNumber") == tx.mined_block:
                break
            status = "pending" if receipt is not None or self.node_has(tx.hash) else "dropped"
            records.extend(self.store.unmine(tx.hash, status))
            unmined.append(tx)
        return unmined, records

    def after_reorg(self, deep: bool) -> "ReorgRepair":
        """Bring the in-flight view in line with the new canonical chain: (deep) unmine what the
        chain no longer has, reload the pending transactions from the store, drop those the node
        does not know, resync the nonce from the node."""
        unmined, records = self.verify_mined() if deep else ([], [])
        with self._lock:
            self._groups.clear()
        self.restore()
        gone = self.reconcile()
        self.nonces.resync()
        return ReorgRepair(unmined, records, gone)

    # preflight -------------------------------------------------------------------
    def preflight(self, to: str, data: str | bytes, value: int = 0, block: int | str = "latest",
                  estimate_gas: bool = False) -> Preflight:
        """``eth_call`` the transaction (and optionally estimate its gas); a revert is a result."""
        call = {"from": self.address, "to": Web3.to_checksum_address(to), "data": _hexdata(data), "value": value}
        try:
            result = self.w3.eth.call(call, block)  # type: ignore[arg-type]
            gas = int(self.w3.eth.estimate_gas(call, block)) if estimate_gas else None  # type: ignore[arg-type]
        except _REVERT_ERRORS as exc:
            reason = revert_reason(exc) or ""
            return Preflight(False, reason, classify_revert(reason))
        return Preflight(True, gas_estimate=gas, result=_hexdata(bytes(result)))

    def preflight_many(self, calls: list[tuple[str, str | bytes, int]], block: int | str = "latest") -> list[Preflight]:
        """:meth:`preflight` of every ``(to, data, value)``: one JSON-RPC batch of ``eth_call``
        when the provider can batch (an HTTP node), else one call after another (eth-tester)."""
        if len(calls) <= 1 or not self._batching:
            return [self.preflight(to, data, value, block) for to, data, value in calls]
        params = [("eth_call", [{"from": self.address, "to": to, "data": _hexdata(data),
                                 "value": hex(value)}, block if isinstance(block, str) else hex(block)])
                  for to, data, value in calls]
        responses = self._batch(params)
        if responses is None:
            return [self.preflight(to, data, value, block) for to, data, value in calls]
        out: list[Preflight] = []
        for (to, data, value), resp in zip(calls, responses):
            error = resp.get("error") if isinstance(resp, Mapping) else None
            if error is None and isinstance(resp, Mapping) and "result" in resp:
                out.append(Preflight(True, result=str(resp["result"])))
                continue
            reason = _batched_revert_reason(resp)
            if reason is None:   # not a revert (or a malformed answer): ask again on its own
                out.append(self.preflight(to, data, value, block))
            else:
                out.append(Preflight(False, reason, classify_revert(reason)))
        return out

    @property
    def _batching(self) -> bool:
        if self._can_batch is None:
            provider = self.w3.provider
            self._can_batch = callable(getattr(provider, "make_batch_request", None))
        return self._can_batch

    def _batch(self, requests: list[tuple[str, list[Any]]]) -> list[Any] | None:
        """Raw JSON-RPC responses of one batch, in request order, through the middleware (the
        request counter); None when the provider cannot batch (then never tried again)."""
        try:
            responses = self._batch_fn()(requests)
        except (NotImplementedError, Web3TypeError, AttributeError) as exc:
            log.info("the provider cannot batch requests (%s): sending them one by one", _one_line(exc))
            self._can_batch = False
            return None
        if not isinstance(responses, list) or len(responses) != len(requests):
            # A node that refuses batches answers with one error object.
            log.info("the node refused a batch of %d requests: sending them one by one", len(requests))
            self._can_batch = False
            return None
        return responses

    def _batch_fn(self) -> Any:
        """The provider's batch function wrapped in the Web3's middleware, web3's own defaults
        (validation, formatting, ENS names, attrdict, gas) left out: the batch members are already
        raw JSON-RPC (hex quantities, checksummed addresses) and their answers are read raw, so
        those layers would only cost time per member. Every other layer, the request counter
        (:class:`~bot.rpc.CountingRpc`) included, sees the batch."""
        layers = tuple(mw for mw, name in self.w3.middleware_onion.middleware if name not in _WEB3_DEFAULT_LAYERS)
        if self._batch_cache is None or self._batch_cache[0] != layers:
            fn = self.w3.provider.make_batch_request  # type: ignore[attr-defined]
            for mw in reversed(layers):
                fn = mw(self.w3).wrap_make_batch_request(fn)
            self._batch_cache = (layers, fn)
        return self._batch_cache[1]

    # sending -------------------------------------------------------------------
    def send_many(self, items: list[tuple["TxRequest", Preflight]], *, base_fee_wei: int,
                  head_block: int, strategy: FeeStrategy | None = None) -> list[SendResult]:
        """Price, sign and send transactions that passed their :meth:`preflight_many`, in order,
        with consecutive nonces; the raw transactions go out in one batch when the provider can
        batch. Returns one result per item. The store records them in one transaction.
        ``strategy`` prices these instead of the sender's own (a backrun copies a price update's fees)."""
        strategy = strategy or self.strategy
        results: list[SendResult | None] = [None] * len(items)
        signed: list[tuple[int, SentTx, bytes, Fees, Preflight]] = []
        for i, (req, flight) in enumerate(items):
            if not flight.ok:
                self.stats.preflight_failed += 1
                log.info("preflight of %s %s/%s reverted: %s (%s)", req.kind, req.account, req.target,
                         flight.reason, flight.classification)
                results[i] = SendResult("preflight_failed", flight)
                continue
            fees = strategy.fees(base_fee_wei, req.expected_profit_wei)
            if fees.max_fee_per_gas < base_fee_wei:
                log.warning("not sending %s %s/%s: the fee cap %d wei is below the base fee %d wei",
                            req.kind, req.account, req.target, fees.max_fee_per_gas, base_fee_wei)
                results[i] = SendResult("fee_too_low", flight, fees=fees, error="max fee cap below base fee")
                continue
            if self.dry_run:
                self.stats.dry_run += 1
                log.info("dry run: would send %s of %s/%s, gas %d, max fee %d, tip %d, expected profit %d wei",
                         req.kind, req.account, req.target, req.gas, fees.max_fee_per_gas,
                         fees.max_priority_fee_per_gas, req.expected_profit_wei)
                results[i] = SendResult("dry_run", flight, fees=fees)
                continue
            record = SentTx(
                hash="0x", nonce=self.nonces.next(), sender=self.address, kind=req.kind, account=req.account,
                target=normalize_target(req.target), to_address=req.to, data=_hexdata(req.data),
                gas_limit=req.gas, max_fee_wei=fees.max_fee_per_gas, tip_wei=fees.max_priority_fee_per_gas,
                sent_block=head_block, value_wei=req.value, expected_profit_usd_wad=req.expected_profit_usd_wad,
                expected_profit_wei=req.expected_profit_wei,
            )
            raw = self._sign(record)
            signed.append((i, replace(record, hash="0x" + keccak(raw).hex()), raw, fees, flight))
        if not signed:
            return [r for r in results if r is not None]
        if self.store is not None:
            # Recorded (and committed) before the broadcast: see _sign_and_send.
            with self.store.transaction():
                signed = [(i, self.store.record_tx(tx), raw, fees, flight) for i, tx, raw, fees, flight in signed]

        # One answer per raw transaction: None (accepted), or the exception the node answered with.
        answers: list[BaseException | None]
        responses: list[Any] | None = None
        if len(signed) > 1 and self._batching:
            try:
                responses = self._batch([("eth_sendRawTransaction", ["0x" + raw.hex()]) for _, _, raw, _, _ in signed])
            except CircuitOpen as exc:
                if exc.__cause__ is not None:   # an attempt went out: uncertain, as below
                    log.warning("sending a batch of %d transactions is uncertain (%s): tracking them as pending",
                                len(signed), exc)
                    responses = [{"result": tx.hash} for _, tx, _, _, _ in signed]
                else:
                    responses = [{"error": {"message": f"circuit open: {exc}"}}] * len(signed)
            except RpcError as exc:
                # The node may or may not have them: track them as pending (see _send_raw).
                log.warning("sending a batch of %d transactions is uncertain (%s): tracking them as pending",
                            len(signed), exc)
                responses = [{"result": tx.hash} for _, tx, _, _, _ in signed]
        if responses is not None:
            answers = [_batched_send_error(r) for r in responses]
        else:
            answers = []
            for _, tx, raw, _, _ in signed:
                try:
                    self._send_raw(tx, raw)
                    answers.append(None)
                except TxError as exc:
                    answers.append(exc)

        # A node may run the members of a batch concurrently: an automining dev node (Hardhat)
        # then refuses a nonce whose predecessors it has not mined yet. Those go again one by one,
        # in nonce order, once the batch is answered.
        for k, ((_i, tx, raw, _fees, _flight), err) in enumerate(zip(signed, answers)):
            if isinstance(err, TxError) and err.kind == "nonce_high":
                log.info("node refused nonce %d as too high in a batch: sending it on its own", tx.nonce)
                try:
                    self._send_raw(tx, raw)
                    answers[k] = None
                except TxError as exc:
                    answers[k] = exc
        stored: list[tuple[int, SentTx, Fees, Preflight]] = []
        retry: list[int] = []
        for k, ((i, tx, _raw, fees, flight), err) in enumerate(zip(signed, answers)):
            if err is not None:
                kind_ = err.kind if isinstance(err, TxError) else _send_error_kind(err)
                if kind_ == "known":
                    log.info("node already knows %s: treated as sent", tx.hash)
                elif kind_ == "nonce_low" and self.node_has(tx.hash):
                    # Our own batch sent again after a lost reply: the node mined it already.
                    log.info("nonce %d too low for %s, which the node already has: treated as sent", tx.nonce, tx.hash)
                elif kind_ == "nonce_low":
                    if self.store is not None:
                        self.store.delete_tx(tx.hash)
                    retry.append(k)
                    continue
                else:
                    if self.store is not None:
                        self.store.delete_tx(tx.hash)
                    self.nonces.release(tx.nonce)
                    results[i] = SendResult("rejected", flight, fees=fees, error=str(err))
                    continue
            stored.append((i, tx, fees, flight))
        for i, tx, fees, flight in stored:
            self._track(tx)
            self.stats.sent += 1
            log.info("sent %s of %s/%s: %s nonce %d max fee %d tip %d", tx.kind, tx.account, tx.target, tx.hash,
                     tx.nonce, fees.max_fee_per_gas, fees.max_priority_fee_per_gas)
            results[i] = SendResult("sent", flight, tx=tx, fees=fees)
        if retry:   # "nonce too low" for a hash the node never saw: another process used our nonces
            self.nonces.resync()
            for k in retry:
                i, tx, _raw, fees, flight = signed[k]
                req = items[i][0]
                results[i] = self.send(req.to, req.data, kind=req.kind, account=req.account, target=req.target,
                                       expected_profit_wei=req.expected_profit_wei,
                                       expected_profit_usd_wad=req.expected_profit_usd_wad, gas=req.gas,
                                       base_fee_wei=base_fee_wei, head_block=head_block, value=req.value)
        return [r for r in results if r is not None]

    def send_call(self, fn: "ContractFunction", **kwargs: Any) -> SendResult:
        """:meth:`send` for a prepared contract call, e.g. ``engine.functions.liquidate(a, m, q)``."""
        # build_transaction with every field given makes no RPC call; it only encodes.
        built = fn.build_transaction({
            "from": self.address, "gas": 1, "nonce": 0, "chainId": 1, "value": 0,
            "maxFeePerGas": 1, "maxPriorityFeePerGas": 1,
        })
        return self.send(built["to"], built["data"], **kwargs)

    def send(
        self,
        to: str,
        data: str | bytes,
        *,
        kind: str,
        account: str,
        target: str | int,
        expected_profit_wei: int = 0,
        expected_profit_usd_wad: int = 0,
        gas: int | None = None,
        base_fee_wei: int | None = None,
        head_block: int | None = None,
        value: int = 0,
    ) -> SendResult:
        """Preflight, price, sign and send one transaction.

        ``kind``/``account``/``target`` describe the liquidation (``target``: market id or token
        address) for the store and :meth:`pending_for`. ``base_fee_wei`` and ``head_block`` come
        from the head the caller is processing (read from the node when omitted). ``gas``
        defaults to the node's estimate times the margin.
        """
        flight = self.preflight(to, data, value, estimate_gas=gas is None)
        if not flight.ok:
            self.stats.preflight_failed += 1
            log.info("preflight of %s %s/%s reverted: %s (%s)", kind, account, target, flight.reason, flight.classification)
            return SendResult("preflight_failed", flight)
        gas_limit = gas if gas is not None else -(-(flight.gas_estimate or 0) * self.gas_margin_wad // WAD)
        if base_fee_wei is None or head_block is None:
            block = self.w3.eth.get_block("latest")
            base_fee_wei = int(block.get("baseFeePerGas") or 0) if base_fee_wei is None else base_fee_wei
            head_block = int(block["number"]) if head_block is None else head_block
        fees = self.strategy.fees(base_fee_wei, expected_profit_wei)
        if fees.max_fee_per_gas < base_fee_wei:
            log.warning("not sending %s %s/%s: the fee cap %d wei is below the base fee %d wei",
                        kind, account, target, fees.max_fee_per_gas, base_fee_wei)
            return SendResult("fee_too_low", flight, fees=fees, error="max fee cap below base fee")
        if self.dry_run:
            self.stats.dry_run += 1
            log.info("dry run: would send %s of %s/%s, gas %d, max fee %d, tip %d, expected profit %d wei",
                     kind, account, target, gas_limit, fees.max_fee_per_gas, fees.max_priority_fee_per_gas,
                     expected_profit_wei)
            return SendResult("dry_run", flight, fees=fees)

        record = SentTx(
            hash="0x", nonce=-1, sender=self.address, kind=kind, account=account, target=normalize_target(target),
            to_address=to, data=_hexdata(data), gas_limit=gas_limit, max_fee_wei=fees.max_fee_per_gas,
            tip_wei=fees.max_priority_fee_per_gas, sent_block=head_block, value_wei=value,
            expected_profit_usd_wad=expected_profit_usd_wad, expected_profit_wei=expected_profit_wei,
        )
        for attempt in (1, 2):
            nonce = self.nonces.next()
            try:
                sent = self._sign_and_send(replace(record, nonce=nonce))
            except TxError as exc:
                kind_ = exc.kind
                if kind_ == "nonce_low" and attempt == 1:
                    self.nonces.resync()
                    continue
                if kind_ == "nonce_low":
                    self.nonces.resync()
                else:
                    self.nonces.release(nonce)
                return SendResult("rejected", flight, fees=fees, error=str(exc))
            self._track(sent)
            self.stats.sent += 1
            log.info("sent %s of %s/%s: %s nonce %d max fee %d tip %d", kind, account, target, sent.hash, nonce,
                     fees.max_fee_per_gas, fees.max_priority_fee_per_gas)
            return SendResult("sent", flight, tx=sent, fees=fees)
        return SendResult("rejected", flight, fees=fees, error="nonce too low twice")  # dev: loop always returns

    def replace(self, old: SentTx, fees: Fees, head_block: int | None = None) -> SentTx:
        """Replace the pending ``old`` (same nonce, same call) with one paying ``fees``, which must
        raise both the fee cap and the tip by at least 12.5 % (what nodes require of a replacement).
        Returns the new transaction, tracked with ``old``; raises :class:`TxError` if the fees are
        too low or the node refuses it. For re-bidding strategies; stuck transactions are replaced
        by :meth:`check_pending` on its own."""
        need = bump_fees(Fees(old.max_fee_wei, old.tip_wei))
        if fees.max_fee_per_gas < need.max_fee_per_gas or fees.max_priority_fee_per_gas < need.max_priority_fee_per_gas:
            raise TxError(f"replacement of {old.hash} underpriced: max fee {fees.max_fee_per_gas} and tip "
                          f"{fees.max_priority_fee_per_gas} wei must be at least {need.max_fee_per_gas} and "
                          f"{need.max_priority_fee_per_gas} wei (+12.5 %)", "underpriced")
        if self.dry_run:
            raise TxError("a dry run sends no replacement", "other")
        new = replace(old, max_fee_wei=fees.max_fee_per_gas, tip_wei=fees.max_priority_fee_per_gas,
                      sent_block=old.sent_block if head_block is None else head_block, replaces=old.hash,
                      replaced_by=None, sent_at=0.0, updated_at=0.0, status="pending")
        return self._send_replacement(old, new)

    def _send_replacement(self, old: SentTx, new: SentTx) -> SentTx:
        """Sign and send ``new`` in place of ``old`` (same nonce), follow it with ``old``'s group,
        record the replacement; raises :class:`TxError` if the node refuses it."""
        sent = self._sign_and_send(new)
        self._track(sent)
        if self.store is not None:
            self.store.update_tx(old.hash, replaced_by=sent.hash)
        self.stats.replacements += 1
        return sent

    def _sign_and_send(self, tx: SentTx) -> SentTx:
        """Sign, record, broadcast. The record is committed before the broadcast, so a kill at
        any point leaves either nothing on the wire or a record the restart reconciles; a refusal
        deletes the record again (that transaction never existed anywhere)."""
        raw = self._sign(tx)
        sent = replace(tx, hash="0x" + keccak(raw).hex())
        if self.store is not None:
            sent = self.store.record_tx(sent)
        try:
            self._send_raw(sent, raw)
        except TxError:
            if self.store is not None:
                self.store.delete_tx(sent.hash)
            raise
        return sent

    def _sign(self, tx: SentTx) -> bytes:
        if self._fast_key is not None:
            return _sign_eip1559(self._fast_key, self.chain_id, tx)
        params = {
            "type": 2,
            "chainId": self.chain_id,
            "nonce": tx.nonce,
            "to": Web3.to_checksum_address(tx.to_address),
            "value": tx.value_wei,
            "data": tx.data,
            "gas": tx.gas_limit,
            "maxFeePerGas": tx.max_fee_wei,
            "maxPriorityFeePerGas": tx.tip_wei,
        }
        signed = self._account.sign_transaction(params)
        return bytes(signed.raw_transaction)

    def _send_raw(self, tx: SentTx, raw: bytes) -> None:
        """``eth_sendRawTransaction``; raises :class:`TxError` when the node refuses it."""
        tx_hash = "0x" + keccak(raw).hex()
        try:
            self.w3.eth.send_raw_transaction(raw)
        except CircuitOpen as exc:
            if exc.__cause__ is None:   # refused before anything went out
                raise TxError(f"not sending {tx.kind} nonce {tx.nonce}: {exc}", "circuit_open") from None
            log.warning("sending %s nonce %d is uncertain (%s): tracking %s as pending", tx.kind, tx.nonce, exc, tx_hash)
        except RpcError as exc:
            # The node may or may not have it. Track it as pending: if it never shows up, the
            # stuck-transaction logic replaces it with the same nonce, so no nonce gap remains.
            log.warning("sending %s nonce %d is uncertain (%s): tracking %s as pending", tx.kind, tx.nonce, exc, tx_hash)
        except _SEND_ERRORS as exc:
            kind = _send_error_kind(exc)
            if kind == "nonce_low" and self.node_has(tx_hash):
                # A retry of our own send whose first reply was lost: the node has it, mined or not.
                log.info("nonce %d too low for %s, which the node already has: treated as sent", tx.nonce, tx_hash)
                return
            if kind != "known":
                raise TxError(f"node rejected {tx.kind} nonce {tx.nonce}: {_one_line(exc)}", kind) from None
            log.info("node already knows %s: treated as sent", tx_hash)

    def node_has(self, tx_hash: str) -> bool:
        """Whether the node knows the transaction ``tx_hash`` (in its pool or mined)."""
        try:
            found = self.w3.eth.get_transaction(tx_hash)  # type: ignore[arg-type]
        except TransactionNotFound:
            return False
        return found is not None

    def _track(self, tx: SentTx) -> None:
        with self._lock:
            self._groups.setdefault(tx.nonce, _Group(tx.nonce)).txs.append(tx)

    # following -------------------------------------------------------------------
    def check_pending(self, head_block: int, base_fee_wei: int | None = None) -> list[TxOutcome]:
        """Settle what got mined, replace what is stuck; call once per new head.

        Costs one ``eth_getTransactionReceipt`` per in-flight hash, plus one
        ``eth_getTransactionCount`` when something is still unmined; nothing without transactions
        in flight. Returns the outcomes of the nonces settled now.
        """
        with self._lock:
            groups = [self._groups[n] for n in sorted(self._groups)]
        if not groups:
            return []
        outcomes: list[TxOutcome] = []
        unsettled: list[_Group] = []
        for group in groups:
            found = self._find_receipt(group)
            if found is not None:
                outcomes.append(self._settle(group, *found))
            else:
                unsettled.append(group)
        if not unsettled:
            return outcomes
        mined_count = int(self.w3.eth.get_transaction_count(self.address, "latest"))
        for group in unsettled:
            if mined_count > group.nonce:
                found = self._find_receipt(group)  # it may have been mined since we looked
                if found is not None:
                    outcomes.append(self._settle(group, *found))
                else:
                    outcomes.append(self._drop(group))
                continue
            if head_block - group.latest.sent_block >= self.stuck_after_blocks:
                self._replace(group, head_block, base_fee_wei)
        return outcomes

    def _find_receipt(self, group: _Group) -> tuple[SentTx, Any] | None:
        for tx in reversed(group.txs):
            try:
                receipt = self.w3.eth.get_transaction_receipt(tx.hash)  # type: ignore[arg-type]
            except TransactionNotFound:
                continue
            if receipt is not None and receipt.get("blockNumber") is not None:
                return tx, receipt
        return None

    def _settle(self, group: _Group, tx: SentTx, receipt: "TxReceipt") -> TxOutcome:
        ok = int(receipt["status"]) == 1
        gas_used = int(receipt["gasUsed"])
        price = int(receipt.get("effectiveGasPrice") or tx.max_fee_wei)
        cost = gas_used * price
        reason: str | None = None
        classification: RevertClass | None = None
        if not ok:
            reason = self._replay_reason(tx, int(receipt["blockNumber"]))
            classification = classify_revert(reason)
        final = replace(tx, status="mined" if ok else "reverted", mined_block=int(receipt["blockNumber"]),
                        gas_used=gas_used, gas_cost_wei=cost, revert_reason=reason)
        superseded = tuple(t.hash for t in group.txs if t.hash != tx.hash)
        if self.store is not None:
            self.store.update_tx(tx.hash, status=final.status, mined_block=final.mined_block, gas_used=gas_used,
                                 gas_cost_wei=cost, revert_reason=reason)
            position = group.txs.index(tx)
            for i, other in enumerate(group.txs):
                if other.hash != tx.hash:
                    # sent before the winner: it was replaced; sent after: that replacement was dropped
                    self.store.update_tx(other.hash, status="replaced" if i < position else "dropped",
                                         replaced_by=tx.hash)
        with self._lock:
            self._groups.pop(group.nonce, None)
        self.stats.gas_spent_wei += cost
        if ok:
            self.stats.mined += 1
            log.info("%s %s mined in block %d (gas %d, cost %d wei)", tx.kind, tx.hash, final.mined_block, gas_used, cost)
        else:
            self.stats.reverted += 1
            log.warning("%s %s reverted in block %d: %s (%s)", tx.kind, tx.hash, final.mined_block, reason, classification)
        return TxOutcome("mined" if ok else "reverted", final, receipt, reason, classification, superseded)

    def _replay_reason(self, tx: SentTx, block: int) -> str | None:
        """Why a mined transaction reverted: replay it on the state after its block (a rival's
        liquidation earlier in the same block shows up as ``"healthy"``/``"no position"``)."""
        call = {"from": self.address, "to": tx.to_address, "data": tx.data, "value": tx.value_wei, "gas": tx.gas_limit}
        try:
            self.w3.eth.call(call, block)  # type: ignore[arg-type]
        except _REVERT_ERRORS as exc:
            return revert_reason(exc) or ""
        return None

    def _drop(self, group: _Group) -> TxOutcome:
        """The nonce was used, but by none of our hashes (e.g. sent by another process)."""
        latest = replace(group.latest, status="dropped")
        if self.store is not None:
            for tx in group.txs:
                self.store.update_tx(tx.hash, status="dropped")
        with self._lock:
            self._groups.pop(group.nonce, None)
        self.stats.dropped += 1
        log.warning("nonce %d was used by a transaction the bot did not send: %d transaction(s) dropped",
                    group.nonce, len(group.txs))
        return TxOutcome("dropped", latest, superseded=tuple(t.hash for t in group.txs[:-1]))

    def _replace(self, group: _Group, head_block: int, base_fee_wei: int | None) -> SentTx | None:
        old = group.latest
        if base_fee_wei is None:
            base_fee_wei = int(self.w3.eth.get_block("latest").get("baseFeePerGas") or 0)
        fresh = self.strategy.fees(base_fee_wei, old.expected_profit_wei)
        fees = replacement_fees(Fees(old.max_fee_wei, old.tip_wei), fresh, self.bump_wad)
        if fees.max_fee_per_gas > self.max_fee_cap_wei:
            if not group.cap_warned:
                log.warning("cannot replace stuck %s %s (nonce %d): the bumped max fee %d wei exceeds the cap %d wei",
                            old.kind, old.hash, old.nonce, fees.max_fee_per_gas, self.max_fee_cap_wei)
                group.cap_warned = True
            return None
        new = replace(old, max_fee_wei=fees.max_fee_per_gas, tip_wei=fees.max_priority_fee_per_gas,
                      sent_block=head_block, replaces=old.hash, sent_at=0.0, updated_at=0.0, status="pending")
        cancel = False
        if old.kind != "cancel":
            flight = self.preflight(old.to_address, old.data, old.value_wei)
            if not flight.ok:
                # The liquidation would revert now: free the nonce with a self-transfer instead.
                cancel = True
                new = replace(new, kind="cancel", to_address=self.address, data="0x", value_wei=0, gas_limit=CANCEL_GAS,
                              revert_reason=flight.reason)
        if self.dry_run:  # dev: a dry run never has transactions in flight
            return None
        try:
            sent = self._send_replacement(old, new)
        except TxError as exc:
            log.warning("replacement of %s (nonce %d) rejected: %s", old.hash, old.nonce, exc)
            return None
        if cancel:
            self.stats.cancels += 1
        log.info("%s stuck %s (nonce %d) with %s: max fee %d -> %d, tip %d -> %d",
                 "cancelled" if cancel else "replaced", old.hash, old.nonce, sent.hash,
                 old.max_fee_wei, fees.max_fee_per_gas, old.tip_wei, fees.max_priority_fee_per_gas)
        return sent


def _fast_signer(account: Any) -> Any:
    """A libsecp256k1 key (coincurve) for :func:`_sign_eip1559`, or None to sign with eth_account."""
    if _CoincurveKey is None:
        return None
    key = getattr(account, "key", None)
    if not isinstance(key, (bytes, bytearray)) or len(key) != 32:
        return None
    return _CoincurveKey(bytes(key))


def _sign_eip1559(key: Any, chain_id: int, tx: SentTx) -> bytes:
    """The signed raw EIP-1559 transaction (``0x02 || rlp([...fields, y_parity, r, s])``): what
    ``LocalAccount.sign_transaction`` returns for the same fields (tested byte for byte), about
    ten times faster. libsecp256k1 signatures are low-s already."""
    data = tx.data[2:] if tx.data.startswith("0x") else tx.data
    to = tx.to_address[2:] if tx.to_address.startswith("0x") else tx.to_address
    fields = [chain_id, tx.nonce, tx.tip_wei, tx.max_fee_wei, tx.gas_limit, bytes.fromhex(to), tx.value_wei,
              bytes.fromhex(data), []]
    digest = keccak(b"\x02" + rlp.encode(fields))
    sig = key.sign_recoverable(digest, hasher=None)
    r, s, v = int.from_bytes(sig[:32], "big"), int.from_bytes(sig[32:64], "big"), sig[64]
    return b"\x02" + rlp.encode([*fields, v, r, s])


def _batched_revert_reason(resp: Any) -> str | None:
    """The revert reason of one batched ``eth_call`` answer, or None if it is not a revert."""
    if not isinstance(resp, Mapping) or not isinstance(resp.get("error"), Mapping):
        return None
    try:
        raise_contract_logic_error_on_revert(resp)  # type: ignore[arg-type]
    except ContractLogicError as exc:
        return revert_reason(exc) or ""
    except Exception:  # noqa: BLE001 - an undecodable answer: the caller asks again on its own
        return None
    return None


def _batched_send_error(resp: Any) -> BaseException | None:
    """None if one batched ``eth_sendRawTransaction`` was accepted, else the error to classify."""
    if isinstance(resp, Mapping) and "error" not in resp and "result" in resp:
        return None
    err = resp.get("error") if isinstance(resp, Mapping) else None
    message = str(err.get("message", err)) if isinstance(err, Mapping) else str(resp)
    return TxError(f"node rejected the transaction: {message[:200]}", _send_error_kind(ValueError(message)))


def _hexdata(data: str | bytes) -> str:
    if isinstance(data, (bytes, bytearray)):
        return "0x" + bytes(data).hex()
    return data if data.startswith("0x") else "0x" + data


def _one_line(exc: BaseException) -> str:
    if isinstance(exc, Web3RPCError) and isinstance(exc.rpc_response, Mapping):
        err = exc.rpc_response.get("error")
        if isinstance(err, Mapping) and "message" in err:
            return str(err["message"])[:200]
    return str(exc).replace("\n", " ")[:200]
