"""The node-side transaction pool and the fee-priority block selector.

The pool holds decoded, signed transactions keyed by sender and nonce. It knows nothing about
chain state: callers pass the sender's current state nonce where it matters.

Ordering rule used to fill a block (see :class:`BlockSelector`): among the senders' next
executable transactions, the one paying the highest effective priority fee per gas
(``min(maxPriorityFeePerGas, maxFeePerGas - baseFee)``; legacy: ``gasPrice - baseFee``) goes first,
ties broken by arrival order. A sender's nonce ``n + 1`` only becomes a candidate after its nonce
``n`` was included, so per-sender nonce order always holds.
"""

from __future__ import annotations

import heapq
import itertools
from collections.abc import Callable, Hashable, Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any, Generic, Protocol, TypeVar

from .errors import ServerError

# geth's default txpool price bump for a replacement (percent).
REPLACEMENT_BUMP_PERCENT = 10


@dataclass(frozen=True)
class PoolTx:
    """A signed transaction waiting in the pool."""

    raw: bytes
    tx: Any  # py-evm SignedTransactionAPI, as decoded by the chain's transaction builder
    hash: bytes
    sender: bytes  # 20-byte canonical address
    nonce: int
    gas: int
    max_fee_per_gas: int
    max_priority_fee_per_gas: int
    value: int
    seq: int = field(default=0)  # arrival order, assigned by the pool

    @property
    def gas_limit(self) -> int:
        return self.gas

    @property
    def max_cost(self) -> int:
        """The most wei the sender can be charged: ``gas * maxFeePerGas + value``."""
        return self.gas * self.max_fee_per_gas + self.value

    def effective_tip(self, base_fee: int) -> int | None:
        """Priority fee per gas the miner gets at ``base_fee``; ``None`` if the fee cap is too low."""
        if self.max_fee_per_gas < base_fee:
            return None
        return min(self.max_priority_fee_per_gas, self.max_fee_per_gas - base_fee)


def _bumped(old: int) -> int:
    return old * (100 + REPLACEMENT_BUMP_PERCENT) // 100


def outbids(old_fee_cap: int, old_tip: int, new_fee_cap: int, new_tip: int) -> bool:
    """Whether a transaction may replace a pooled one with the same sender and nonce: both its fee
    cap and its tip strictly higher and at least :data:`REPLACEMENT_BUMP_PERCENT` higher (geth's rule)."""
    fee_ok = new_fee_cap > old_fee_cap and new_fee_cap >= _bumped(old_fee_cap)
    tip_ok = new_tip > old_tip and new_tip >= _bumped(old_tip)
    return fee_ok and tip_ok


class Mempool:
    """Pending and queued transactions by sender and nonce. Not thread-safe: callers lock."""

    def __init__(self) -> None:
        self._by_sender: dict[bytes, dict[int, PoolTx]] = {}
        self._by_hash: dict[bytes, PoolTx] = {}
        self._seq = itertools.count()

    def __len__(self) -> int:
        return len(self._by_hash)

    def __iter__(self) -> Iterator[PoolTx]:
        return iter(list(self._by_hash.values()))

    def get(self, tx_hash: bytes) -> PoolTx | None:
        return self._by_hash.get(tx_hash)

    def senders(self) -> list[bytes]:
        return list(self._by_sender)

    def tx_at(self, sender: bytes, nonce: int) -> PoolTx | None:
        return self._by_sender.get(sender, {}).get(nonce)

    def txs_of(self, sender: bytes) -> dict[int, PoolTx]:
        """The sender's pooled transactions by nonce (a copy)."""
        return dict(self._by_sender.get(sender, {}))

    def add(self, ptx: PoolTx) -> tuple[PoolTx, PoolTx | None]:
        """Insert ``ptx`` (stamped with an arrival number); returns it and the tx it replaced.

        A transaction with the same sender and nonce as a pooled one replaces it only when both
        its fee cap and its tip are strictly higher and at least 10% higher (geth's rule).
        """
        if ptx.hash in self._by_hash:
            raise ServerError("already known")
        by_nonce = self._by_sender.setdefault(ptx.sender, {})
        old = by_nonce.get(ptx.nonce)
        if old is not None:
            if not outbids(old.max_fee_per_gas, old.max_priority_fee_per_gas, ptx.max_fee_per_gas,
                           ptx.max_priority_fee_per_gas):
                raise ServerError("replacement transaction underpriced")
            del self._by_hash[old.hash]
        stamped = PoolTx(
            raw=ptx.raw,
            tx=ptx.tx,
            hash=ptx.hash,
            sender=ptx.sender,
            nonce=ptx.nonce,
            gas=ptx.gas,
            max_fee_per_gas=ptx.max_fee_per_gas,
            max_priority_fee_per_gas=ptx.max_priority_fee_per_gas,
            value=ptx.value,
            seq=next(self._seq),
        )
        by_nonce[stamped.nonce] = stamped
        self._by_hash[stamped.hash] = stamped
        return stamped, old

    def remove(self, tx_hash: bytes) -> PoolTx | None:
        ptx = self._by_hash.pop(tx_hash, None)
        if ptx is None:
            return None
        by_nonce = self._by_sender.get(ptx.sender)
        if by_nonce is not None and by_nonce.get(ptx.nonce) is ptx:
            del by_nonce[ptx.nonce]
            if not by_nonce:
                del self._by_sender[ptx.sender]
        return ptx

    def drop_stale(self, state_nonce: Callable[[bytes], int]) -> list[PoolTx]:
        """Remove transactions whose nonce is already used on chain; returns them."""
        dropped: list[PoolTx] = []
        for sender in self.senders():
            current = state_nonce(sender)
            for nonce, ptx in self.txs_of(sender).items():
                if nonce < current:
                    self.remove(ptx.hash)
                    dropped.append(ptx)
        return dropped

    def pending_nonce(self, sender: bytes, state_nonce: int) -> int:
        """Next nonce after the sender's contiguous run of pooled txs starting at ``state_nonce``."""
        by_nonce = self._by_sender.get(sender, {})
        nonce = state_nonce
        while nonce in by_nonce:
            nonce += 1
        return nonce

    def split(
        self, state_nonce: Callable[[bytes], int]
    ) -> tuple[dict[bytes, list[PoolTx]], dict[bytes, list[PoolTx]]]:
        """``(pending, queued)`` by sender, each list in nonce order (geth's txpool split)."""
        pending: dict[bytes, list[PoolTx]] = {}
        queued: dict[bytes, list[PoolTx]] = {}
        for sender, by_nonce in self._by_sender.items():
            executable_until = self.pending_nonce(sender, state_nonce(sender))
            for nonce in sorted(by_nonce):
                target = pending if nonce < executable_until else queued
                target.setdefault(sender, []).append(by_nonce[nonce])
        return pending, queued


S = TypeVar("S", bound=Hashable)


class Pooled(Protocol):
    """What the block selector needs of a pooled transaction (this pool's :class:`PoolTx`, or a
    model's, e.g. :class:`simulator.competition.offchain.ModelTx`)."""

    @property
    def sender(self) -> Any: ...
    @property
    def nonce(self) -> int: ...
    @property
    def seq(self) -> int: ...
    @property
    def gas_limit(self) -> int: ...
    def effective_tip(self, base_fee: int) -> int | None: ...


T = TypeVar("T", bound=Pooled)


class TxPool(Protocol[T]):
    """A pool by sender and nonce, as the block selector reads it (:class:`Mempool` is one)."""

    def senders(self) -> Iterable[Any]: ...
    def tx_at(self, sender: Any, nonce: int) -> T | None: ...


class BlockSelector(Generic[T]):
    """Hands out pool transactions in block order for one block at a fixed base fee.

    ``pop()`` returns the best next candidate (or ``None``). If the caller includes it, it must call
    ``advance(ptx)`` so the sender's next nonce becomes a candidate; if it does not (the tx does not
    fit or failed), the sender's later nonces wait for a later block. :meth:`fill` is that loop.
    The dev node builds its blocks with it, and so does the competition simulator's model node.
    """

    def __init__(self, pool: TxPool[T], state_nonce: Callable[[Any], int], base_fee: int) -> None:
        self._pool = pool
        self._base_fee = base_fee
        self._heap: list[tuple[int, int]] = []
        self._txs: dict[int, T] = {}
        for sender in pool.senders():
            head = pool.tx_at(sender, state_nonce(sender))
            if head is not None:
                self._push(head)

    def _push(self, ptx: T) -> None:
        tip = ptx.effective_tip(self._base_fee)
        if tip is None:
            return  # fee cap below the base fee: this sender waits
        self._txs[ptx.seq] = ptx
        heapq.heappush(self._heap, (-tip, ptx.seq))

    def pop(self) -> T | None:
        if not self._heap:
            return None
        _neg_tip, seq = heapq.heappop(self._heap)
        return self._txs.pop(seq)

    def advance(self, included: T) -> None:
        successor = self._pool.tx_at(included.sender, included.nonce + 1)
        if successor is not None:
            self._push(successor)

    def fill(self, room: Callable[[], int], include: Callable[[T], bool], max_txs: int | None = None) -> int:
        """Fill one block: take the transactions in block order; one whose gas limit exceeds
        ``room()`` (the gas left in the block) waits for a later block, its sender's later nonces
        too; ``include(tx)`` applies one and says whether it went in (False: dropped, its sender's
        later nonces wait). Stops after ``max_txs`` inclusions. Returns the number included."""
        count = 0
        while max_txs is None or count < max_txs:
            ptx = self.pop()
            if ptx is None:
                break
            if ptx.gas_limit > room():
                continue
            if include(ptx):
                count += 1
                self.advance(ptx)
        return count
