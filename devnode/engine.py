"""The dev chain: eth-tester (py-evm) plus a node-side mempool, block builder, clock and filters.

Every public method takes :attr:`DevChain.lock`, so the HTTP handler threads, the block-time thread
and direct callers (tests) can share one instance.

All transactions, signed by the client (eth_sendRawTransaction) or by the node for its dev
accounts (eth_sendTransaction), enter the :class:`~.mempool.Mempool`. Blocks are built by applying
pool transactions in fee-priority order to py-evm's pending block and mining it through
eth-tester (:meth:`DevChain.mine`). In automine mode (no block time) every executable transaction
is mined at once in its own block; otherwise the pool is drained by :meth:`DevChain.mine`, called
by the node's block thread every block-time seconds or by ``evm_mine``.
"""

from __future__ import annotations

import itertools
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from fractions import Fraction
from typing import Any, Literal

from eth.exceptions import BlockNotFound, HeaderNotFound, OutOfGas, Revert, VMError
from eth.vm.spoof import SpoofTransaction
from eth_abi import abi
from eth_abi.exceptions import DecodingError
from eth_account import Account
from eth_tester import EthereumTester, PyEVMBackend
from eth_tester.exceptions import SnapshotNotFound
from eth_utils import ValidationError, to_checksum_address

from .encoding import (
    BLOB_TX,
    BlockId,
    LogQuery,
    TxObject,
    effective_gas_price,
    format_block_header,
    hexdata,
    log_json,
    quantity,
    receipt_json,
    tx_fee_caps,
    tx_json,
)
from .errors import EXECUTION_REVERTED, InvalidParams, JsonRpcError, ServerError
from .gas import binary_gas_search_fewer_runs
from .mempool import BlockSelector, Mempool, PoolTx

logger = logging.getLogger(__name__)

# Suggested priority fee (eth_maxPriorityFeePerGas) and default tip for eth_sendTransaction.
DEFAULT_PRIORITY_FEE = 10**9
# Filters not polled for this long are removed (geth's default filter timeout).
FILTER_TIMEOUT_SECONDS = 300.0
ZERO_ADDRESS = b"\x00" * 20
ERROR_STRING_SELECTOR = bytes.fromhex("08c379a0")  # Error(string)


def revert_error(data: bytes) -> JsonRpcError:
    """geth/anvil-style revert error: code 3, ``execution reverted[: reason]``, data = revert data."""
    message = "execution reverted"
    if data[:4] == ERROR_STRING_SELECTOR:
        try:
            (reason,) = abi.decode(["string"], data[4:])
        except (DecodingError, ValueError, OverflowError):
            pass
        else:
            message = f"execution reverted: {reason}"
    return JsonRpcError(EXECUTION_REVERTED, message, hexdata(data))


@dataclass
class BuiltBlock:
    """Outcome of one block-building pass (mined, or a dry run for the pending-block view)."""

    included: list[PoolTx]
    dropped: list[tuple[PoolTx, str]]
    timestamp: int
    base_fee: int
    header: Any  # py-evm header of the built block (before sealing)
    block_hash: bytes | None  # None unless a block was mined


@dataclass
class _Filter:
    kind: Literal["log", "block", "pending"]
    query: LogQuery | None = None
    cursor: int = 0  # last block number already reported (log and block filters)
    hashes: list[bytes] = field(default_factory=list)  # new pending tx hashes (pending filters)
    last_poll: float = field(default_factory=time.monotonic)


def _mined_tx_json(block: Any, index: int) -> dict[str, Any]:
    """The JSON of transaction ``index`` of a mined ``block``."""
    return tx_json(
        block.transactions[index],
        block_hash=block.hash,
        block_number=int(block.header.block_number),
        index=index,
        base_fee=int(block.header.base_fee_per_gas),
    )


class DevChain:
    """An eth-tester chain with funded dev accounts, a mempool and a wall-clock block timestamp."""

    def __init__(self, *, automine: bool = True, accounts: int = 10) -> None:
        if accounts < 1:
            raise ValueError("accounts must be at least 1")
        backend = PyEVMBackend(
            genesis_state=PyEVMBackend.generate_genesis_state(num_accounts=accounts)
        )
        self.tester = EthereumTester(backend)
        self.lock = threading.RLock()
        self.automine = automine
        self.pool = Mempool()
        self._keys = {key.public_key.to_canonical_address(): key for key in backend.account_keys}
        self._time_offset = 0  # seconds added to the wall clock (evm_increaseTime)
        self._forced_timestamp: int | None = None  # evm_setNextBlockTimestamp
        self._tx_locations: dict[bytes, tuple[bytes, int]] = {}  # tx hash -> (block hash, index)
        self._filters: dict[int, _Filter] = {}
        self._filter_ids = itertools.count(1)
        # Called under the lock, at once: ("pending", PoolTx) when the pool accepts a transaction,
        # ("block", block hash) when a block is mined, ("rewind", head number) when the head went
        # back (the WebSocket subscriptions of devnode.ws). Must not block.
        self.observers: list[Callable[[str, Any], None]] = []

    # ------------------------------------------------------------------ basics

    @property
    def chain(self) -> Any:
        """py-evm's MiningChain (re-read each time: reverting to genesis replaces it)."""
        return self.tester.backend.chain

    @property
    def chain_id(self) -> int:
        return int(self.chain.chain_id)

    @property
    def accounts(self) -> list[tuple[str, str]]:
        """Dev accounts as ``(checksum address, 0x private key)``."""
        return [(to_checksum_address(addr), key.to_hex()) for addr, key in self._keys.items()]

    def _notify(self, kind: str, value: Any) -> None:
        for observer in list(self.observers):
            try:
                observer(kind, value)
            except Exception:  # noqa: BLE001 - an observer's bug must not fail the chain
                logger.exception("chain observer failed on %s", kind)

    def head_number(self) -> int:
        with self.lock:
            return int(self.chain.get_canonical_head().block_number)

    def next_base_fee(self) -> int:
        """Base fee per gas of the next block."""
        with self.lock:
            return int(self.chain.header.base_fee_per_gas)

    def _canonical_block(self, number: int) -> Any:
        return self.chain.get_canonical_block_by_number(number)

    def _resolve_number(self, block_id: BlockId) -> int:
        """A mined block number for ``block_id`` ("pending" reads the latest state)."""
        head = int(self.chain.get_canonical_head().block_number)
        if isinstance(block_id, dict):
            block_hash = bytes.fromhex(block_id["blockHash"][2:])
            try:
                header = self.chain.get_block_header_by_hash(block_hash)
            except HeaderNotFound:
                raise ServerError("header not found") from None
            number = int(header.block_number)
            if number > head or self.chain.get_canonical_block_hash(number) != block_hash:
                raise ServerError("header not found")
            return number
        if block_id in ("latest", "safe", "finalized", "pending"):
            return head
        if block_id == "earliest":
            return 0
        if isinstance(block_id, int) and block_id <= head:
            return block_id
        raise ServerError("header not found")

    # ------------------------------------------------------------------ state reads

    def balance(self, address: bytes, block_id: BlockId) -> int:
        with self.lock:
            return int(self.tester.backend.get_balance(address, self._resolve_number(block_id)))

    def code(self, address: bytes, block_id: BlockId) -> bytes:
        with self.lock:
            return bytes(self.tester.backend.get_code(address, self._resolve_number(block_id)))

    def storage(self, address: bytes, slot: int, block_id: BlockId) -> bytes:
        with self.lock:
            raw = self.tester.backend.get_storage(address, slot, self._resolve_number(block_id))
            value = raw if isinstance(raw, int) else int.from_bytes(bytes(raw), "big")
            return value.to_bytes(32, "big")

    def _state_nonce(self, address: bytes) -> int:
        return int(self.tester.backend.get_nonce(address, "latest"))

    def nonce(self, address: bytes, block_id: BlockId) -> int:
        """Transaction count; for "pending" it also counts the sender's executable pool txs."""
        with self.lock:
            if block_id == "pending":
                return self.pool.pending_nonce(address, self._state_nonce(address))
            return int(self.tester.backend.get_nonce(address, self._resolve_number(block_id)))

    # ------------------------------------------------------------------ clock

    def _next_timestamp(self, explicit: int | None) -> int:
        parent = int(self.chain.get_canonical_head().timestamp)
        if explicit is not None:
            if explicit <= parent:
                raise ServerError(
                    f"timestamp {explicit} must be greater than the latest block's {parent}"
                )
            return explicit
        if self._forced_timestamp is not None:
            return max(self._forced_timestamp, parent + 1)
        return max(int(time.time()) + self._time_offset, parent + 1)

    def increase_time(self, seconds: int) -> int:
        """Advance the clock of future blocks by ``seconds``; returns the total offset."""
        with self.lock:
            self._time_offset += seconds
            return self._time_offset

    def set_next_block_timestamp(self, timestamp: int) -> None:
        with self.lock:
            parent = int(self.chain.get_canonical_head().timestamp)
            if timestamp <= parent:
                raise ServerError(
                    f"timestamp {timestamp} must be greater than the latest block's {parent}"
                )
            self._forced_timestamp = timestamp

    # ------------------------------------------------------------------ block building

    def _build_block(
        self,
        *,
        max_txs: int | None,
        dry_run: bool,
        timestamp: int | None = None,
        require_txs: bool = False,
    ) -> BuiltBlock:
        """Fill the pending block from the pool in fee order; mine it unless ``dry_run``.

        With ``require_txs`` nothing is mined when no transaction was included. Outside a dry run,
        transactions that fail validation while being applied are removed from the pool.
        """
        chain = self.chain
        original_header = chain.header
        block_timestamp = self._next_timestamp(timestamp)
        chain.set_header_timestamp(block_timestamp)
        base_fee = int(chain.header.base_fee_per_gas)
        gas_limit = int(chain.header.gas_limit)
        selector = BlockSelector(self.pool, self._state_nonce, base_fee)
        included: list[PoolTx] = []
        dropped: list[tuple[PoolTx, str]] = []

        def include(ptx: PoolTx) -> bool:
            try:
                chain.apply_transaction(ptx.tx)
            except Exception as exc:  # noqa: BLE001 - any failure drops just this tx
                dropped.append((ptx, str(exc) or type(exc).__name__))
                return False
            included.append(ptx)
            return True

        try:
            selector.fill(lambda: gas_limit - int(chain.header.gas_used), include, max_txs)
            built_header = chain.header
            block_hash: bytes | None = None
            if dry_run or (require_txs and not included):
                chain.header = original_header
            else:
                mined = self.tester.mine_blocks(1)
                block_hash = bytes.fromhex(mined[0][2:])
        except BaseException:
            chain.header = original_header
            raise
        if not dry_run:
            self._after_build(included, dropped, block_hash, block_timestamp, timestamp)
        return BuiltBlock(included, dropped, block_timestamp, base_fee, built_header, block_hash)

    def _after_build(
        self,
        included: list[PoolTx],
        dropped: list[tuple[PoolTx, str]],
        block_hash: bytes | None,
        block_timestamp: int,
        explicit_timestamp: int | None,
    ) -> None:
        for ptx, reason in dropped:
            self.pool.remove(ptx.hash)
            logger.warning(
                "dropped transaction %s from %s (nonce %d): %s",
                hexdata(ptx.hash),
                to_checksum_address(ptx.sender),
                ptx.nonce,
                reason,
            )
        if block_hash is None:
            return
        for index, ptx in enumerate(included):
            self.pool.remove(ptx.hash)
            self._tx_locations[ptx.hash] = (block_hash, index)
        if explicit_timestamp is not None or self._forced_timestamp is not None:
            # Later blocks continue from the explicitly set time.
            self._time_offset = block_timestamp - int(time.time())
            self._forced_timestamp = None
        for stale in self.pool.drop_stale(self._state_nonce):
            logger.info("removed stale transaction %s from the pool", hexdata(stale.hash))
        logger.debug(
            "mined block %d (%s) with %d transactions",
            self.chain.get_canonical_head().block_number,
            hexdata(block_hash),
            len(included),
        )
        self._notify("block", block_hash)

    def mine(self, timestamp: int | None = None) -> bytes:
        """Mine one block with the executable pool transactions in fee order; returns its hash."""
        with self.lock:
            built = self._build_block(max_txs=None, dry_run=False, timestamp=timestamp)
            if built.block_hash is None:
                raise RuntimeError("invariant: a block was built but not mined")
            return built.block_hash

    def _automine(self, submitted: bytes) -> None:
        """Mine every executable pool tx, one per block; a failure of ``submitted`` is raised."""
        failure: str | None = None
        while True:
            built = self._build_block(max_txs=1, dry_run=False, require_txs=True)
            for ptx, reason in built.dropped:
                if ptx.hash == submitted:
                    failure = reason
            if built.block_hash is None:
                break
        if failure is not None:
            raise ServerError(failure)

    # ------------------------------------------------------------------ transaction submission

    def _decode(self, raw: bytes) -> Any:
        if not raw:
            raise InvalidParams("invalid raw transaction: empty")
        if raw[0] == BLOB_TX:
            raise InvalidParams("blob transactions are not supported")
        try:
            return self.chain.get_vm().get_transaction_builder().decode(raw)
        except Exception as exc:  # noqa: BLE001 - rlp/py-evm raise many decoding error types
            raise InvalidParams(f"invalid raw transaction: {exc}") from None

    def send_raw_transaction(self, raw: bytes) -> bytes:
        """Validate a signed transaction and add it to the pool (mining it in automine mode)."""
        with self.lock:
            tx = self._decode(raw)
            try:
                sender = bytes(tx.sender)
            except Exception:  # noqa: BLE001 - signature recovery failures vary
                raise ServerError("invalid sender") from None
            tx_chain_id = getattr(tx, "chain_id", None)
            if tx_chain_id is not None and int(tx_chain_id) != self.chain_id:
                raise ServerError(f"invalid chain id: have {tx_chain_id}, want {self.chain_id}")
            if tx.gas < tx.intrinsic_gas:
                raise ServerError(f"intrinsic gas too low: have {tx.gas}, want {tx.intrinsic_gas}")
            try:
                tx.validate()
            except (ValidationError, ValueError) as exc:
                raise ServerError(f"invalid transaction: {exc}") from None
            header = self.chain.header
            if tx.gas > header.gas_limit:
                raise ServerError("exceeds block gas limit")
            max_fee, max_tip = tx_fee_caps(tx)
            if max_tip > max_fee:
                raise ServerError("max priority fee per gas higher than max fee per gas")
            state_nonce = self._state_nonce(sender)
            if tx.nonce < state_nonce:
                raise ServerError(f"nonce too low: next nonce {state_nonce}, tx nonce {tx.nonce}")
            ptx = PoolTx(
                raw=raw,
                tx=tx,
                hash=bytes(tx.hash),
                sender=sender,
                nonce=int(tx.nonce),
                gas=int(tx.gas),
                max_fee_per_gas=max_fee,
                max_priority_fee_per_gas=max_tip,
                value=int(tx.value),
            )
            balance = int(self.tester.backend.get_balance(sender, "latest"))
            if balance < ptx.max_cost:
                raise ServerError(
                    "insufficient funds for gas * price + value: "
                    f"balance {balance}, tx cost {ptx.max_cost}"
                )
            if self.automine and max_fee < header.base_fee_per_gas:
                raise ServerError(
                    f"max fee per gas less than block base fee: address "
                    f"{to_checksum_address(sender)}, maxFeePerGas: {max_fee}, "
                    f"baseFee: {header.base_fee_per_gas}"
                )
            stamped, replaced = self.pool.add(ptx)
            if replaced is not None:
                logger.info("transaction %s replaced %s", hexdata(stamped.hash), hexdata(replaced.hash))
            for flt in self._filters.values():
                if flt.kind == "pending":
                    flt.hashes.append(stamped.hash)
            self._notify("pending", stamped)
            if self.automine:
                self._automine(stamped.hash)
            return stamped.hash

    def send_transaction(self, request: TxObject) -> bytes:
        """Fill in, sign with the dev account's key, and submit (eth_sendTransaction)."""
        with self.lock:
            if request.sender is None:
                raise InvalidParams("missing 'from'")
            key = self._keys.get(request.sender)
            if key is None:
                raise ServerError(f"unknown account {to_checksum_address(request.sender)}")
            nonce = request.nonce
            if nonce is None:
                nonce = self.pool.pending_nonce(request.sender, self._state_nonce(request.sender))
            gas = request.gas
            if gas is None:
                gas = self.estimate_gas(request, "latest")
            fields: dict[str, Any] = {
                "chainId": self.chain_id,
                "nonce": nonce,
                "gas": gas,
                "value": request.value,
                "data": request.data,
            }
            if request.to is not None:
                fields["to"] = to_checksum_address(request.to)
            if request.access_list is not None:
                fields["accessList"] = [
                    {
                        "address": to_checksum_address(address),
                        "storageKeys": ["0x" + slot.to_bytes(32, "big").hex() for slot in slots],
                    }
                    for address, slots in request.access_list
                ]
            if request.gas_price is not None:
                fields["gasPrice"] = request.gas_price
                if request.access_list is not None:
                    fields["type"] = 1
            else:
                base_fee = int(self.chain.header.base_fee_per_gas)
                tip = request.max_priority_fee_per_gas
                if tip is None:
                    tip = DEFAULT_PRIORITY_FEE
                    if request.max_fee_per_gas is not None:
                        tip = min(tip, request.max_fee_per_gas)
                max_fee = request.max_fee_per_gas
                if max_fee is None:
                    max_fee = 2 * base_fee + tip
                fields.update(type=2, maxFeePerGas=max_fee, maxPriorityFeePerGas=tip)
            signed = Account.sign_transaction(fields, key.to_hex())
            return self.send_raw_transaction(bytes(signed.raw_transaction))

    # ------------------------------------------------------------------ calls

    def _unsigned_tx(self, vm: Any, request: TxObject, *, nonce: int, gas: int, base_fee: int) -> Any:
        if request.gas_price is not None:
            max_fee = max_tip = request.gas_price
        else:
            max_tip = request.max_priority_fee_per_gas or 0
            max_fee = request.max_fee_per_gas
            if max_fee is None:
                max_fee = base_fee + max_tip
        return vm.get_transaction_builder().new_unsigned_dynamic_fee_transaction(
            chain_id=self.chain_id,
            nonce=nonce,
            max_priority_fee_per_gas=max_tip,
            max_fee_per_gas=max_fee,
            gas=gas,
            to=request.to or b"",
            value=request.value,
            data=request.data,
            access_list=request.access_list or (),
        )

    def call(self, request: TxObject, block_id: BlockId) -> bytes:
        """eth_call on the state after ``block_id`` (in that block's context).

        Without fee fields the call runs at gas price 0 with a zero base fee, like geth.
        """
        with self.lock:
            header = self._canonical_block(self._resolve_number(block_id)).header
            if not request.has_fee_fields:
                header = header.copy(base_fee_per_gas=0)
            vm = self.chain.get_vm(at_header=header)
            state = vm.state
            sender = request.sender or ZERO_ADDRESS
            gas = min(request.gas or header.gas_limit, header.gas_limit)
            unsigned = self._unsigned_tx(
                vm,
                request,
                nonce=state.get_nonce(sender),
                gas=gas,
                base_fee=int(header.base_fee_per_gas),
            )
            snapshot = state.snapshot()
            try:
                computation = state.apply_transaction(SpoofTransaction(unsigned, from_=sender))
            except ValidationError as exc:
                raise ServerError(str(exc)) from None
            finally:
                state.revert(snapshot)
            if computation.is_error:
                error = computation.error
                if isinstance(error, Revert):
                    raise revert_error(bytes(computation.output))
                raise ServerError(str(error) or type(error).__name__)
            return bytes(computation.output)

    def estimate_gas(self, request: TxObject, block_id: BlockId) -> int:
        """Smallest gas limit (to py-evm's search tolerance) with which the tx does not fail."""
        with self.lock:
            header = self._canonical_block(self._resolve_number(block_id)).header
            vm = self.chain.get_vm(at_header=header)
            sender = request.sender or ZERO_ADDRESS
            unsigned = self._unsigned_tx(
                vm,
                request,
                nonce=vm.state.get_nonce(sender),
                gas=int(header.gas_limit),
                base_fee=0,  # estimation runs in py-evm's costless (zero base fee) state
            )
            try:
                # py-evm's Chain.estimate_gas with its default estimator's answers, in fewer runs
                with vm.in_costless_state() as state:
                    return int(binary_gas_search_fewer_runs(state, SpoofTransaction(unsigned, from_=sender)))
            except Revert as exc:
                data = exc.args[0] if exc.args and isinstance(exc.args[0], bytes) else b""
                raise revert_error(data) from None
            except OutOfGas:
                raise ServerError(f"gas required exceeds allowance ({header.gas_limit})") from None
            except VMError as exc:
                raise ServerError(str(exc) or type(exc).__name__) from None
            except ValidationError as exc:
                raise ServerError(str(exc)) from None

    # ------------------------------------------------------------------ blocks, txs, receipts

    def _block_json(self, block: Any, full: bool) -> dict[str, Any]:
        header_dict = self.tester.get_block_by_hash(hexdata(block.hash), full_transactions=False)
        out = format_block_header(header_dict)
        base_fee = int(block.header.base_fee_per_gas)
        number = int(block.header.block_number)
        if full:
            out["transactions"] = [
                tx_json(tx, block_hash=block.hash, block_number=number, index=i, base_fee=base_fee)
                for i, tx in enumerate(block.transactions)
            ]
        else:
            out["transactions"] = [hexdata(tx.hash) for tx in block.transactions]
        return out

    def block_by_number(self, block_id: BlockId, full: bool) -> dict[str, Any] | None:
        with self.lock:
            if block_id == "pending":
                return self.pending_block(full)
            try:
                number = self._resolve_number(block_id)
            except ServerError:
                return None
            return self._block_json(self._canonical_block(number), full)

    def _canonical_block_by_hash(self, block_hash: bytes) -> Any | None:
        try:
            block = self.chain.get_block_by_hash(block_hash)
        except (HeaderNotFound, BlockNotFound):
            return None
        number = int(block.header.block_number)
        head = int(self.chain.get_canonical_head().block_number)
        if number > head or self.chain.get_canonical_block_hash(number) != block_hash:
            return None
        return block

    def block_by_hash(self, block_hash: bytes, full: bool) -> dict[str, Any] | None:
        with self.lock:
            block = self._canonical_block_by_hash(block_hash)
            return None if block is None else self._block_json(block, full)

    def pending_block(self, full: bool) -> dict[str, Any]:
        """The block the node would mine next: pool txs in mining order, hash/nonce/miner null."""
        with self.lock:
            base = format_block_header(
                self.tester.get_block_by_number("pending", full_transactions=False)
            )
            built = self._build_block(max_txs=None, dry_run=True)
            header = built.header
            base.update(
                hash=None,
                nonce=None,
                miner=None,
                timestamp=quantity(built.timestamp),
                gasUsed=quantity(int(header.gas_used)),
                stateRoot=hexdata(header.state_root),
                transactionsRoot=hexdata(header.transaction_root),
                receiptsRoot=hexdata(header.receipt_root),
                logsBloom="0x" + int(header.bloom).to_bytes(256, "big").hex(),
            )
            if full:
                base["transactions"] = [
                    tx_json(ptx.tx, block_hash=None, block_number=None, index=i, base_fee=built.base_fee)
                    for i, ptx in enumerate(built.included)
                ]
            else:
                base["transactions"] = [hexdata(ptx.hash) for ptx in built.included]
            return base

    def _locate(self, tx_hash: bytes) -> tuple[Any, int] | None:
        location = self._tx_locations.get(tx_hash)
        if location is None:
            return None
        block = self._canonical_block_by_hash(location[0])
        if block is None:
            return None  # its block was reverted away
        return block, location[1]

    def transaction(self, tx_hash: bytes) -> dict[str, Any] | None:
        with self.lock:
            ptx = self.pool.get(tx_hash)
            if ptx is not None:
                return tx_json(
                    ptx.tx,
                    block_hash=None,
                    block_number=None,
                    index=None,
                    base_fee=int(self.chain.header.base_fee_per_gas),
                )
            located = self._locate(tx_hash)
            return None if located is None else _mined_tx_json(*located)

    def _find_block(self, block_id: BlockId | bytes) -> Any | None:
        """The canonical block with this hash (bytes), number or tag; None if there is none."""
        if isinstance(block_id, bytes):
            return self._canonical_block_by_hash(block_id)
        try:
            return self._canonical_block(self._resolve_number(block_id))
        except ServerError:
            return None

    def transaction_by_block(self, block_id: BlockId | bytes, index: int) -> dict[str, Any] | None:
        with self.lock:
            block = self._find_block(block_id)
            if block is None or index >= len(block.transactions):
                return None
            return _mined_tx_json(block, index)

    def receipt(self, tx_hash: bytes) -> dict[str, Any] | None:
        with self.lock:
            located = self._locate(tx_hash)
            if located is None:
                return None
            block, index = located
            return receipt_json(block, block.get_receipts(self.chain.chaindb), index)

    def block_receipts(self, block_id: BlockId | bytes) -> list[dict[str, Any]] | None:
        with self.lock:
            block = self._find_block(block_id)
            if block is None:
                return None
            receipts = block.get_receipts(self.chain.chaindb)
            return [receipt_json(block, receipts, i) for i in range(len(block.transactions))]

    # ------------------------------------------------------------------ logs and filters

    def _block_logs(self, block: Any, query: LogQuery) -> list[dict[str, Any]]:
        if not block.transactions or int(block.header.bloom) == 0:
            return []
        out: list[dict[str, Any]] = []
        log_index = 0
        number = int(block.header.block_number)
        for tx_index, (tx, receipt) in enumerate(
            zip(block.transactions, block.get_receipts(self.chain.chaindb), strict=True)
        ):
            for log in receipt.logs:
                if query.matches(bytes(log.address), log.topics):
                    out.append(
                        log_json(
                            log,
                            block_hash=block.hash,
                            block_number=number,
                            tx_hash=tx.hash,
                            tx_index=tx_index,
                            log_index=log_index,
                        )
                    )
                log_index += 1
        return out

    def _range_logs(self, query: LogQuery, first: int, last: int) -> list[dict[str, Any]]:
        out: list[dict[str, Any]] = []
        for number in range(first, last + 1):
            out.extend(self._block_logs(self._canonical_block(number), query))
        return out

    def _query_bounds(self, query: LogQuery) -> tuple[int, int]:
        head = int(self.chain.get_canonical_head().block_number)

        def bound(block_id: BlockId) -> int:
            if isinstance(block_id, int):
                return block_id
            return self._resolve_number(block_id)

        return bound(query.from_block), min(bound(query.to_block), head)

    def logs(self, query: LogQuery) -> list[dict[str, Any]]:
        with self.lock:
            if query.block_hash is not None:
                block = self._canonical_block_by_hash(query.block_hash)
                if block is None:
                    raise ServerError("unknown block")
                return self._block_logs(block, query)
            first, last = self._query_bounds(query)
            if first > last:
                return []
            return self._range_logs(query, first, last)

    def _expire_filters(self) -> None:
        now = time.monotonic()
        for filter_id, flt in list(self._filters.items()):
            if now - flt.last_poll > FILTER_TIMEOUT_SECONDS:
                del self._filters[filter_id]
                logger.debug("filter %d expired", filter_id)

    def _new_filter(self, flt: _Filter) -> int:
        self._expire_filters()
        filter_id = next(self._filter_ids)
        self._filters[filter_id] = flt
        return filter_id

    def new_log_filter(self, query: LogQuery) -> int:
        with self.lock:
            if query.block_hash is not None:
                raise InvalidParams("blockHash is not supported for filters")
            return self._new_filter(_Filter("log", query=query, cursor=self.head_number()))

    def new_block_filter(self) -> int:
        with self.lock:
            return self._new_filter(_Filter("block", cursor=self.head_number()))

    def new_pending_transaction_filter(self) -> int:
        with self.lock:
            return self._new_filter(_Filter("pending"))

    def uninstall_filter(self, filter_id: int) -> bool:
        with self.lock:
            return self._filters.pop(filter_id, None) is not None

    def _get_filter(self, filter_id: int) -> _Filter:
        self._expire_filters()
        flt = self._filters.get(filter_id)
        if flt is None:
            raise ServerError("filter not found")
        flt.last_poll = time.monotonic()
        return flt

    def filter_changes(self, filter_id: int) -> list[Any]:
        with self.lock:
            flt = self._get_filter(filter_id)
            if flt.kind == "pending":
                hashes, flt.hashes = flt.hashes, []
                return [hexdata(h) for h in hashes]
            head = self.head_number()
            first, flt.cursor = min(flt.cursor, head) + 1, head
            if flt.kind == "block":
                return [
                    hexdata(self.chain.get_canonical_block_hash(n)) for n in range(first, head + 1)
                ]
            query = flt.query
            if query is None:
                raise RuntimeError("invariant: log filter without a query")
            low, high = self._query_bounds(query)
            first, last = max(first, low), min(head, high)
            return self._range_logs(query, first, last) if first <= last else []

    def filter_logs(self, filter_id: int) -> list[dict[str, Any]]:
        with self.lock:
            flt = self._get_filter(filter_id)
            if flt.kind != "log" or flt.query is None:
                raise ServerError("filter not found")
            return self.logs(flt.query)

    # ------------------------------------------------------------------ snapshots

    def snapshot(self) -> int:
        with self.lock:
            return int(self.tester.take_snapshot())

    def revert(self, snapshot_id: int) -> bool:
        with self.lock:
            try:
                self.tester.revert_to_snapshot(snapshot_id)
            except SnapshotNotFound:
                return False
            self._after_rewind()
            return True

    def reorg(self, depth: int) -> None:
        """Replace the last ``depth`` blocks with as many new empty ones, like anvil's
        ``anvil_reorg(depth, [])``: the transactions of the dropped blocks are gone (not back in
        the pool), and the new blocks have later timestamps, hence other hashes."""
        with self.lock:
            head = self.head_number()
            if not 0 < depth <= head:
                raise ServerError(f"reorg depth {depth} must be between 1 and the head block {head}")
            fork = self.chain.get_canonical_block_header_by_number(head - depth)
            # An eth-tester snapshot is the hash of its head block: this one is the fork point.
            self.tester.backend.revert_to_snapshot(fork.hash)
            self._after_rewind()
            waiting = list(self.pool)
            for ptx in waiting:
                self.pool.remove(ptx.hash)
            try:
                for _ in range(depth):
                    self.mine()
            finally:
                for ptx in waiting:
                    self.pool.add(ptx)

    def _after_rewind(self) -> None:
        """Filters and the pool after the head went back (a revert or a reorg)."""
        head = self.head_number()
        for flt in self._filters.values():
            flt.cursor = min(flt.cursor, head)
        for stale in self.pool.drop_stale(self._state_nonce):
            logger.info("removed stale transaction %s after the chain went back", hexdata(stale.hash))
        self._notify("rewind", head)

    # ------------------------------------------------------------------ fees and pool views

    def gas_price(self) -> int:
        return self.next_base_fee() + DEFAULT_PRIORITY_FEE

    def fee_history(
        self, block_count: int, newest: BlockId, percentiles: list[Fraction] | None
    ) -> dict[str, Any]:
        with self.lock:
            newest_number = self._resolve_number(newest)
            count = min(block_count, newest_number + 1, 1024)
            oldest = newest_number - count + 1
            base_fees: list[str] = []
            ratios: list[float] = []
            rewards: list[list[str]] = []
            for number in range(oldest, newest_number + 1):
                block = self._canonical_block(number)
                header = block.header
                base_fees.append(quantity(int(header.base_fee_per_gas)))
                ratios.append(int(header.gas_used) / int(header.gas_limit))
                if percentiles is not None:
                    rewards.append([quantity(r) for r in self._block_rewards(block, percentiles)])
            if count > 0:
                if newest_number == self.head_number():
                    next_fee = int(self.chain.header.base_fee_per_gas)
                else:
                    next_fee = int(self._canonical_block(newest_number + 1).header.base_fee_per_gas)
                base_fees.append(quantity(next_fee))
            result: dict[str, Any] = {
                "oldestBlock": quantity(oldest if count > 0 else newest_number + 1),
                "baseFeePerGas": base_fees,
                "gasUsedRatio": ratios,
            }
            if percentiles is not None:
                result["reward"] = rewards
            return result

    def _block_rewards(self, block: Any, percentiles: list[Fraction]) -> list[int]:
        """Effective tips at the given gas-weighted percentiles (geth's eth_feeHistory rule)."""
        if not block.transactions:
            return [0] * len(percentiles)
        base_fee = int(block.header.base_fee_per_gas)
        receipts = block.get_receipts(self.chain.chaindb)
        entries: list[tuple[int, int]] = []
        previous = 0
        for tx, receipt in zip(block.transactions, receipts, strict=True):
            entries.append((effective_gas_price(tx, base_fee) - base_fee, receipt.gas_used - previous))
            previous = receipt.gas_used
        entries.sort(key=lambda entry: entry[0])
        block_gas = int(block.header.gas_used)
        rewards: list[int] = []
        index = 0
        cumulative = entries[0][1]
        for p in percentiles:
            threshold = int(block_gas * p / 100)
            while cumulative < threshold and index < len(entries) - 1:
                index += 1
                cumulative += entries[index][1]
            rewards.append(entries[index][0])
        return rewards

    def txpool_content(self) -> dict[str, dict[str, dict[str, dict[str, Any]]]]:
        """geth's txpool_content: {"pending"|"queued": {sender: {nonce: tx}}}."""
        with self.lock:
            base_fee = int(self.chain.header.base_fee_per_gas)
            pending, queued = self.pool.split(self._state_nonce)

            def group(by_sender: dict[bytes, list[PoolTx]]) -> dict[str, dict[str, dict[str, Any]]]:
                return {
                    to_checksum_address(sender): {
                        str(ptx.nonce): tx_json(
                            ptx.tx, block_hash=None, block_number=None, index=None, base_fee=base_fee
                        )
                        for ptx in txs
                    }
                    for sender, txs in by_sender.items()
                }

            return {"pending": group(pending), "queued": group(queued)}

    def txpool_status(self) -> dict[str, str]:
        with self.lock:
            pending, queued = self.pool.split(self._state_nonce)
            return {
                "pending": quantity(sum(len(txs) for txs in pending.values())),
                "queued": quantity(sum(len(txs) for txs in queued.values())),
            }

    def run_locked(self, fn: Callable[[], Any]) -> Any:
        """Run ``fn`` while holding the chain lock (one JSON-RPC request at a time)."""
        with self.lock:
            return fn()
