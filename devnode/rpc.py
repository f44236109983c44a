"""JSON-RPC 2.0 request handling (single and batch) on top of :class:`~.engine.DevChain`."""

from __future__ import annotations

import json
import logging
import sys
from collections.abc import Callable, Sequence
from fractions import Fraction
from typing import Any

from eth_tester.exceptions import ValidationError as TesterValidationError
from eth_utils import keccak

from .encoding import (
    hexdata,
    param,
    parse_address,
    parse_block_id,
    parse_bool,
    parse_data,
    parse_hash,
    parse_log_query,
    parse_quantity,
    parse_tx_request,
    quantity,
)
from .engine import DEFAULT_PRIORITY_FEE, DevChain
from .errors import (
    INTERNAL_ERROR,
    INVALID_REQUEST,
    METHOD_NOT_FOUND,
    PARSE_ERROR,
    InvalidParams,
    JsonRpcError,
)

logger = logging.getLogger(__name__)

CLIENT_NAME = "xmargin-devnode/0.1.0"
MAX_BATCH_SIZE = 1000

Handler = Callable[[Sequence[Any]], Any]


def _error_response(request_id: Any, error: JsonRpcError) -> dict[str, Any]:
    return {"jsonrpc": "2.0", "id": request_id, "error": error.to_json()}


def _parse_percentiles(value: Any) -> list[Fraction] | None:
    if value is None:
        return None
    if not isinstance(value, list):
        raise InvalidParams("invalid rewardPercentiles: expected a list")
    out: list[Fraction] = []
    for item in value:
        if isinstance(item, bool) or not isinstance(item, (int, float)):
            raise InvalidParams(f"invalid reward percentile {item!r}")
        # Percentiles arrive as JSON numbers; keep them exact from their decimal text.
        p = Fraction(str(item))
        if not 0 <= p <= 100 or (out and p < out[-1]):
            raise InvalidParams(f"invalid reward percentile {item!r}")
        out.append(p)
    return out


class RpcDispatcher:
    """Maps JSON-RPC method names onto a :class:`DevChain`; one request at a time per lock."""

    def __init__(self, chain: DevChain) -> None:
        self.chain = chain
        self._methods: dict[str, Handler] = {
            "web3_clientVersion": self._client_version,
            "web3_sha3": lambda p: hexdata(keccak(parse_data(param(p, 0, "data"), "data"))),
            "net_version": lambda p: str(self.chain.chain_id),
            "net_listening": lambda p: True,
            "net_peerCount": lambda p: "0x0",
            "eth_chainId": lambda p: quantity(self.chain.chain_id),
            "eth_syncing": lambda p: False,
            "eth_accounts": lambda p: [address for address, _key in self.chain.accounts],
            "eth_blockNumber": lambda p: quantity(self.chain.head_number()),
            "eth_getBlockByNumber": self._get_block_by_number,
            "eth_getBlockByHash": self._get_block_by_hash,
            "eth_getBlockTransactionCountByNumber": self._tx_count_by_number,
            "eth_getBlockTransactionCountByHash": self._tx_count_by_hash,
            "eth_getTransactionByBlockNumberAndIndex": self._tx_by_number_and_index,
            "eth_getTransactionByBlockHashAndIndex": self._tx_by_hash_and_index,
            "eth_getBalance": self._get_balance,
            "eth_getCode": self._get_code,
            "eth_getStorageAt": self._get_storage_at,
            "eth_getTransactionCount": self._get_transaction_count,
            "eth_call": self._call,
            "eth_estimateGas": self._estimate_gas,
            "eth_gasPrice": lambda p: quantity(self.chain.gas_price()),
            "eth_maxPriorityFeePerGas": lambda p: quantity(DEFAULT_PRIORITY_FEE),
            "eth_feeHistory": self._fee_history,
            "eth_sendTransaction": self._send_transaction,
            "eth_sendRawTransaction": self._send_raw_transaction,
            "eth_getTransactionByHash": lambda p: self.chain.transaction(
                parse_hash(param(p, 0, "hash"), "hash")
            ),
            "eth_getTransactionReceipt": lambda p: self.chain.receipt(
                parse_hash(param(p, 0, "hash"), "hash")
            ),
            "eth_getBlockReceipts": self._get_block_receipts,
            "eth_getLogs": lambda p: self.chain.logs(parse_log_query(param(p, 0, "filter"))),
            "eth_newFilter": lambda p: quantity(
                self.chain.new_log_filter(parse_log_query(param(p, 0, "filter")))
            ),
            "eth_newBlockFilter": lambda p: quantity(self.chain.new_block_filter()),
            "eth_newPendingTransactionFilter": lambda p: quantity(
                self.chain.new_pending_transaction_filter()
            ),
            "eth_getFilterChanges": lambda p: self.chain.filter_changes(self._filter_id(p)),
            "eth_getFilterLogs": lambda p: self.chain.filter_logs(self._filter_id(p)),
            "eth_uninstallFilter": lambda p: self.chain.uninstall_filter(self._filter_id(p)),
            "evm_mine": self._evm_mine,
            "evm_snapshot": lambda p: quantity(self.chain.snapshot()),
            "evm_revert": lambda p: self.chain.revert(
                parse_quantity(param(p, 0, "snapshotId"), "snapshotId")
            ),
            "evm_increaseTime": lambda p: self.chain.increase_time(
                parse_quantity(param(p, 0, "seconds"), "seconds")
            ),
            "evm_setNextBlockTimestamp": self._set_next_block_timestamp,
            "evm_setAutomine": self._set_automine,
            "anvil_reorg": self._reorg,
            "txpool_content": lambda p: self.chain.txpool_content(),
            "txpool_status": lambda p: self.chain.txpool_status(),
        }

    @property
    def methods(self) -> list[str]:
        return sorted(self._methods)

    # ------------------------------------------------------------------ transport

    def handle_body(self, body: bytes, extra: dict[str, Handler] | None = None) -> bytes | None:
        """Handle an HTTP request body; returns the response body (``None``: notifications only).
        ``extra`` adds methods of the transport (the WebSocket's ``eth_subscribe``)."""
        try:
            payload = json.loads(body)
        except (ValueError, UnicodeDecodeError) as exc:
            return self._dump(_error_response(None, JsonRpcError(PARSE_ERROR, f"parse error: {exc}")))
        if isinstance(payload, list):
            if not payload:
                return self._dump(_error_response(None, JsonRpcError(INVALID_REQUEST, "empty batch")))
            if len(payload) > MAX_BATCH_SIZE:
                return self._dump(
                    _error_response(None, JsonRpcError(INVALID_REQUEST, "batch too large"))
                )
            responses = [r for r in (self.handle_request(item, extra) for item in payload) if r is not None]
            return self._dump(responses) if responses else None
        response = self.handle_request(payload, extra)
        return None if response is None else self._dump(response)

    @staticmethod
    def _dump(value: Any) -> bytes:
        return json.dumps(value, separators=(",", ":")).encode()

    def handle_request(self, request: Any, extra: dict[str, Handler] | None = None) -> dict[str, Any] | None:
        """One JSON-RPC request object -> response object (``None`` for a notification)."""
        if not isinstance(request, dict):
            return _error_response(None, JsonRpcError(INVALID_REQUEST, "invalid request"))
        request_id = request.get("id")
        is_notification = "id" not in request
        method = request.get("method")
        if not isinstance(method, str):
            return _error_response(request_id, JsonRpcError(INVALID_REQUEST, "invalid request"))
        params = request.get("params")
        try:
            if params is None:
                params = []
            elif not isinstance(params, list):
                raise InvalidParams("params must be an array")
            result = self.call(method, params, extra)
        except JsonRpcError as error:
            response = _error_response(request_id, error)
        else:
            response = {"jsonrpc": "2.0", "id": request_id, "result": result}
        return None if is_notification else response

    def call(self, method: str, params: Sequence[Any], extra: dict[str, Handler] | None = None) -> Any:
        """Run one method; raises :class:`JsonRpcError` for any failure the client should see."""
        handler = (extra or {}).get(method) or self._methods.get(method)
        if handler is None:
            raise JsonRpcError(METHOD_NOT_FOUND, f"the method {method} does not exist/is not available")
        try:
            return self.chain.run_locked(lambda: handler(params))
        except JsonRpcError:
            raise
        except TesterValidationError as exc:
            raise InvalidParams(str(exc)) from None
        except Exception as exc:
            logger.exception("internal error in %s", method)
            raise JsonRpcError(INTERNAL_ERROR, f"internal error: {exc}") from None

    # ------------------------------------------------------------------ handlers

    def _client_version(self, params: Sequence[Any]) -> str:
        v = sys.version_info
        return f"{CLIENT_NAME}/eth-tester/python{v.major}.{v.minor}.{v.micro}"

    def _get_block_by_number(self, params: Sequence[Any]) -> Any:
        block_id = parse_block_id(param(params, 0, "block"))
        full = parse_bool(param(params, 1, "fullTransactions", False), "fullTransactions")
        return self.chain.block_by_number(block_id, full)

    def _get_block_by_hash(self, params: Sequence[Any]) -> Any:
        block_hash = parse_hash(param(params, 0, "blockHash"), "blockHash")
        full = parse_bool(param(params, 1, "fullTransactions", False), "fullTransactions")
        return self.chain.block_by_hash(block_hash, full)

    def _tx_count_by_number(self, params: Sequence[Any]) -> Any:
        block = self.chain.block_by_number(parse_block_id(param(params, 0, "block")), False)
        return None if block is None else quantity(len(block["transactions"]))

    def _tx_count_by_hash(self, params: Sequence[Any]) -> Any:
        block = self.chain.block_by_hash(parse_hash(param(params, 0, "blockHash"), "blockHash"), False)
        return None if block is None else quantity(len(block["transactions"]))

    def _tx_by_number_and_index(self, params: Sequence[Any]) -> Any:
        block_id = parse_block_id(param(params, 0, "block"))
        index = parse_quantity(param(params, 1, "index"), "index")
        if block_id == "pending":
            txs = self.chain.pending_block(True)["transactions"]
            return txs[index] if index < len(txs) else None
        return self.chain.transaction_by_block(block_id, index)

    def _tx_by_hash_and_index(self, params: Sequence[Any]) -> Any:
        block_hash = parse_hash(param(params, 0, "blockHash"), "blockHash")
        index = parse_quantity(param(params, 1, "index"), "index")
        return self.chain.transaction_by_block(block_hash, index)

    def _get_balance(self, params: Sequence[Any]) -> str:
        address = parse_address(param(params, 0, "address"), "address")
        block_id = parse_block_id(param(params, 1, "block", "latest"))
        return quantity(self.chain.balance(address, block_id))

    def _get_code(self, params: Sequence[Any]) -> str:
        address = parse_address(param(params, 0, "address"), "address")
        block_id = parse_block_id(param(params, 1, "block", "latest"))
        return hexdata(self.chain.code(address, block_id))

    def _get_storage_at(self, params: Sequence[Any]) -> str:
        address = parse_address(param(params, 0, "address"), "address")
        slot = parse_quantity(param(params, 1, "slot"), "slot")
        if slot >= 2**256:
            raise InvalidParams("invalid slot: larger than 32 bytes")
        block_id = parse_block_id(param(params, 2, "block", "latest"))
        return hexdata(self.chain.storage(address, slot, block_id))

    def _get_transaction_count(self, params: Sequence[Any]) -> str:
        address = parse_address(param(params, 0, "address"), "address")
        block_id = parse_block_id(param(params, 1, "block", "latest"))
        return quantity(self.chain.nonce(address, block_id))

    def _call(self, params: Sequence[Any]) -> str:
        request = parse_tx_request(param(params, 0, "transaction"))
        block_id = parse_block_id(param(params, 1, "block", "latest"))
        if len(params) > 2 and params[2] is not None:
            raise InvalidParams("state overrides are not supported")
        return hexdata(self.chain.call(request, block_id))

    def _estimate_gas(self, params: Sequence[Any]) -> str:
        request = parse_tx_request(param(params, 0, "transaction"))
        block_id = parse_block_id(param(params, 1, "block", "latest"))
        return quantity(self.chain.estimate_gas(request, block_id))

    def _fee_history(self, params: Sequence[Any]) -> dict[str, Any]:
        block_count = parse_quantity(param(params, 0, "blockCount"), "blockCount")
        newest = parse_block_id(param(params, 1, "newestBlock"), "newestBlock")
        percentiles = _parse_percentiles(param(params, 2, "rewardPercentiles", None))
        return self.chain.fee_history(block_count, newest, percentiles)

    def _send_transaction(self, params: Sequence[Any]) -> str:
        request = parse_tx_request(param(params, 0, "transaction"))
        return hexdata(self.chain.send_transaction(request))

    def _send_raw_transaction(self, params: Sequence[Any]) -> str:
        raw = parse_data(param(params, 0, "data"), "data")
        return hexdata(self.chain.send_raw_transaction(raw))

    def _get_block_receipts(self, params: Sequence[Any]) -> Any:
        value = param(params, 0, "block")
        if isinstance(value, str) and len(value) == 66:
            return self.chain.block_receipts(parse_hash(value, "blockHash"))
        block_id = parse_block_id(value)
        if block_id == "pending":
            return None
        return self.chain.block_receipts(block_id)

    @staticmethod
    def _filter_id(params: Sequence[Any]) -> int:
        return parse_quantity(param(params, 0, "filterId"), "filterId")

    def _set_automine(self, params: Sequence[Any]) -> bool:
        """Like anvil's and hardhat's: ``true`` mines each new transaction as it arrives, ``false``
        leaves new transactions in the mempool until a block is mined."""
        self.chain.automine = parse_bool(param(params, 0, "enabled"), "enabled")
        return True

    def _reorg(self, params: Sequence[Any]) -> None:
        """anvil's ``anvil_reorg(depth, [])``; replacement transactions are not supported."""
        depth = parse_quantity(param(params, 0, "depth"), "depth")
        if param(params, 1, "transactions", None):
            raise InvalidParams("anvil_reorg with transactions is not supported: send them after the reorg")
        self.chain.reorg(depth)
        return None

    def _evm_mine(self, params: Sequence[Any]) -> str:
        value = param(params, 0, "options", None)
        blocks = 1
        timestamp: int | None = None
        if isinstance(value, dict):
            if value.get("timestamp") is not None:
                timestamp = parse_quantity(value["timestamp"], "timestamp")
            if value.get("blocks") is not None:
                blocks = parse_quantity(value["blocks"], "blocks")
        elif value is not None:
            timestamp = parse_quantity(value, "timestamp")
        for i in range(blocks):
            self.chain.mine(timestamp if i == 0 else None)
        return "0x0"

    def _set_next_block_timestamp(self, params: Sequence[Any]) -> None:
        self.chain.set_next_block_timestamp(
            parse_quantity(param(params, 0, "timestamp"), "timestamp")
        )
        return None

