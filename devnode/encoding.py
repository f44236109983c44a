"""JSON-RPC value encoding: parsing request parameters and formatting results.

Output follows the Ethereum JSON-RPC spec: quantities are ``0x``-prefixed hex without leading
zeros, byte strings are ``0x``-prefixed hex, addresses are checksummed, keys are camelCase.
Transactions, receipts and logs are serialized straight from py-evm objects; block headers from
eth-tester's block dicts.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import rlp
from eth_utils import is_hex_address, keccak, to_canonical_address, to_checksum_address

from .errors import InvalidParams

BLOCK_TAGS = frozenset({"latest", "earliest", "pending", "safe", "finalized"})

# A block number, one of BLOCK_TAGS, or an EIP-1898 {"blockHash": "0x.."} selector.
BlockId = int | str | dict[str, str]

LEGACY_TX = 0
DYNAMIC_FEE_TX = 2
BLOB_TX = 3
SET_CODE_TX = 4

# eth-tester result keys whose camelCase form is not the mechanical conversion.
_KEY_OVERRIDES = {"coinbase": "miner", "data": "input"}


# --------------------------------------------------------------------------- output primitives


def quantity(value: int) -> str:
    """``0x``-prefixed hex quantity (no leading zeros)."""
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise ValueError(f"not a non-negative integer: {value!r}")
    return hex(value)


def hexdata(value: bytes | bytearray | str) -> str:
    """``0x``-prefixed hex of a byte string (strings already in hex are passed through)."""
    if isinstance(value, str):
        return value if value.startswith("0x") else "0x" + value
    return "0x" + bytes(value).hex()


def hash32(value: bytes | str | int) -> str:
    """A 32-byte word as ``0x`` + 64 hex digits."""
    if isinstance(value, int):
        return "0x" + value.to_bytes(32, "big").hex()
    if isinstance(value, str):
        return "0x" + value.removeprefix("0x").rjust(64, "0")
    return "0x" + bytes(value).rjust(32, b"\x00").hex()


def bloom_hex(bloom: int) -> str:
    """A 2048-bit logs bloom as 256-byte hex."""
    return "0x" + bloom.to_bytes(256, "big").hex()


def address_or_none(value: Any) -> str | None:
    """Checksummed address, or ``None`` for the empty/absent ``to`` of a contract creation."""
    if value is None or value == b"" or value == "":
        return None
    if isinstance(value, (bytes, bytearray)):
        return to_checksum_address(bytes(value))
    return to_checksum_address(value)


def contract_address(sender: bytes, nonce: int) -> bytes:
    """Address of the contract created by ``sender``'s transaction with ``nonce`` (CREATE)."""
    return keccak(rlp.encode([sender, nonce]))[12:]


def camel(key: str) -> str:
    if key in _KEY_OVERRIDES:
        return _KEY_OVERRIDES[key]
    head, *rest = key.split("_")
    return head + "".join(part.capitalize() for part in rest)


def jsonify(value: Any) -> Any:
    """Recursively encode an eth-tester result value (ints become quantities, bytes hex)."""
    if value is None or isinstance(value, (bool, str)):
        return value
    if isinstance(value, int):
        return quantity(value)
    if isinstance(value, (bytes, bytearray)):
        return hexdata(value)
    if isinstance(value, dict):
        return {camel(k): jsonify(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [jsonify(v) for v in value]
    raise TypeError(f"cannot encode {type(value).__name__} as a JSON-RPC value")


# --------------------------------------------------------------------------- result objects


def format_block_header(block: dict[str, Any]) -> dict[str, Any]:
    """An eth-tester block dict (without transactions) as a JSON-RPC block object."""
    out: dict[str, Any] = {}
    for key, value in block.items():
        if key == "transactions":
            continue  # filled in by the caller
        if key == "logs_bloom":
            out["logsBloom"] = bloom_hex(value) if isinstance(value, int) else hexdata(value)
        elif key == "coinbase":
            out["miner"] = address_or_none(value) or "0x" + "00" * 20
        else:
            out[camel(key)] = jsonify(value)
    return out


def tx_type(tx: Any) -> int:
    """EIP-2718 type of a py-evm transaction (legacy transactions have no ``type_id``)."""
    type_id = getattr(tx, "type_id", None)
    return LEGACY_TX if type_id is None else int(type_id)


def tx_fee_caps(tx: Any) -> tuple[int, int]:
    """``(maxFeePerGas, maxPriorityFeePerGas)``; both are ``gasPrice`` for pre-1559 types."""
    if tx_type(tx) >= DYNAMIC_FEE_TX:
        return int(tx.max_fee_per_gas), int(tx.max_priority_fee_per_gas)
    return int(tx.gas_price), int(tx.gas_price)


def effective_gas_price(tx: Any, base_fee: int) -> int:
    max_fee, max_tip = tx_fee_caps(tx)
    if tx_type(tx) >= DYNAMIC_FEE_TX:
        return min(max_fee, base_fee + max_tip)
    return max_fee


def _access_list_json(access_list: Sequence[Any]) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    for address, storage_keys in access_list:
        out.append(
            {"address": address_or_none(address), "storageKeys": [hash32(k) for k in storage_keys]}
        )
    return out


def tx_json(
    tx: Any,
    *,
    block_hash: bytes | None,
    block_number: int | None,
    index: int | None,
    base_fee: int | None,
) -> dict[str, Any]:
    """A py-evm signed transaction as a JSON-RPC transaction object.

    ``gasPrice`` of a dynamic-fee transaction is its effective price at ``base_fee`` (the block's,
    or the next block's for a pending transaction).
    """
    kind = tx_type(tx)
    out: dict[str, Any] = {
        "type": quantity(kind),
        "hash": hexdata(tx.hash),
        "nonce": quantity(tx.nonce),
        "blockHash": None if block_hash is None else hexdata(block_hash),
        "blockNumber": None if block_number is None else quantity(block_number),
        "transactionIndex": None if index is None else quantity(index),
        "from": to_checksum_address(tx.sender),
        "to": address_or_none(tx.to),
        "value": quantity(tx.value),
        "gas": quantity(tx.gas),
        "input": hexdata(tx.data),
    }
    if kind >= DYNAMIC_FEE_TX:
        max_fee, max_tip = tx_fee_caps(tx)
        out["maxFeePerGas"] = quantity(max_fee)
        out["maxPriorityFeePerGas"] = quantity(max_tip)
        out["gasPrice"] = quantity(max_fee if base_fee is None else effective_gas_price(tx, base_fee))
    else:
        out["gasPrice"] = quantity(tx.gas_price)
    if kind == LEGACY_TX:
        if tx.chain_id is not None:
            out["chainId"] = quantity(tx.chain_id)
        out["v"] = quantity(tx.v)
    else:
        out["chainId"] = quantity(tx.chain_id)
        out["accessList"] = _access_list_json(tx.access_list)
        out["v"] = quantity(tx.y_parity)
        out["yParity"] = quantity(tx.y_parity)
    if kind == BLOB_TX:
        out["maxFeePerBlobGas"] = quantity(tx.max_fee_per_blob_gas)
        out["blobVersionedHashes"] = [hexdata(h) for h in tx.blob_versioned_hashes]
    if kind == SET_CODE_TX:
        out["authorizationList"] = [
            {
                "chainId": quantity(auth.chain_id),
                "address": address_or_none(auth.address),
                "nonce": quantity(auth.nonce),
                "yParity": quantity(auth.y_parity),
                "r": quantity(auth.r),
                "s": quantity(auth.s),
            }
            for auth in tx.authorization_list
        ]
    out["r"] = quantity(tx.r)
    out["s"] = quantity(tx.s)
    return out


def log_json(
    log: Any, *, block_hash: bytes, block_number: int, tx_hash: bytes, tx_index: int, log_index: int
) -> dict[str, Any]:
    """A py-evm log entry; ``log_index`` is its position in the whole block."""
    return {
        "address": to_checksum_address(log.address),
        "topics": [hash32(t) for t in log.topics],
        "data": hexdata(log.data),
        "blockNumber": quantity(block_number),
        "transactionHash": hexdata(tx_hash),
        "transactionIndex": quantity(tx_index),
        "blockHash": hexdata(block_hash),
        "logIndex": quantity(log_index),
        "removed": False,
    }


def receipt_json(block: Any, receipts: Sequence[Any], index: int) -> dict[str, Any]:
    """The receipt of transaction ``index`` of a mined py-evm ``block``."""
    tx = block.transactions[index]
    receipt = receipts[index]
    header = block.header
    previous_cumulative = receipts[index - 1].gas_used if index else 0
    first_log_index = sum(len(r.logs) for r in receipts[:index])
    created = contract_address(tx.sender, tx.nonce) if tx.to == b"" else None
    return {
        "type": quantity(tx_type(tx)),
        "transactionHash": hexdata(tx.hash),
        "transactionIndex": quantity(index),
        "blockHash": hexdata(block.hash),
        "blockNumber": quantity(header.block_number),
        "from": to_checksum_address(tx.sender),
        "to": address_or_none(tx.to),
        "cumulativeGasUsed": quantity(receipt.gas_used),
        "gasUsed": quantity(receipt.gas_used - previous_cumulative),
        "effectiveGasPrice": quantity(effective_gas_price(tx, header.base_fee_per_gas)),
        "contractAddress": None if created is None else to_checksum_address(created),
        "logs": [
            log_json(
                log,
                block_hash=block.hash,
                block_number=header.block_number,
                tx_hash=tx.hash,
                tx_index=index,
                log_index=first_log_index + i,
            )
            for i, log in enumerate(receipt.logs)
        ],
        "logsBloom": bloom_hex(receipt.bloom),
        "status": "0x1" if receipt.state_root == b"\x01" else "0x0",
    }


# --------------------------------------------------------------------------- input


def param(params: Sequence[Any], index: int, name: str, default: Any = ...) -> Any:
    """``params[index]``, or ``default`` when absent/null; missing required params are -32602."""
    if index < len(params) and params[index] is not None:
        return params[index]
    if default is ...:
        raise InvalidParams(f"missing value for required argument {index} ({name})")
    return default


def parse_quantity(value: Any, name: str) -> int:
    """A JSON-RPC quantity (``0x`` hex string; a plain non-negative JSON integer is tolerated)."""
    if isinstance(value, bool):
        raise InvalidParams(f"invalid {name}: expected a hex quantity, got {value!r}")
    if isinstance(value, int):
        if value < 0:
            raise InvalidParams(f"invalid {name}: negative")
        return value
    if isinstance(value, str) and value[:2] in ("0x", "0X") and len(value) > 2:
        try:
            return int(value[2:], 16)
        except ValueError:
            pass
    raise InvalidParams(f"invalid {name}: expected a hex quantity, got {value!r}")


def parse_data(value: Any, name: str) -> bytes:
    """A JSON-RPC byte string (``0x`` hex, even length)."""
    if isinstance(value, str) and value[:2] in ("0x", "0X"):
        digits = value[2:]
        if len(digits) % 2 == 0:
            try:
                return bytes.fromhex(digits)
            except ValueError:
                pass
    raise InvalidParams(f"invalid {name}: expected 0x-prefixed hex bytes, got {value!r}")


def parse_address(value: Any, name: str) -> bytes:
    """A 20-byte address, returned as canonical bytes."""
    if isinstance(value, str) and is_hex_address(value):
        return to_canonical_address(value)
    raise InvalidParams(f"invalid {name}: expected a 20-byte hex address, got {value!r}")


def parse_hash(value: Any, name: str) -> bytes:
    """A 32-byte hash."""
    data = parse_data(value, name)
    if len(data) != 32:
        raise InvalidParams(f"invalid {name}: expected 32 bytes, got {len(data)}")
    return data


def parse_bool(value: Any, name: str) -> bool:
    if isinstance(value, bool):
        return value
    raise InvalidParams(f"invalid {name}: expected a boolean, got {value!r}")


def parse_block_id(value: Any, name: str = "block") -> BlockId:
    """A block number, a tag, or an EIP-1898 ``{"blockHash": ...}`` / ``{"blockNumber": ...}``."""
    if isinstance(value, str) and value in BLOCK_TAGS:
        return value
    if isinstance(value, dict):
        if "blockHash" in value:
            return {"blockHash": hexdata(parse_hash(value["blockHash"], f"{name}.blockHash"))}
        if "blockNumber" in value:
            return parse_block_id(value["blockNumber"], f"{name}.blockNumber")
        raise InvalidParams(f"invalid {name}: expected blockHash or blockNumber")
    return parse_quantity(value, name)


@dataclass(frozen=True)
class TxObject:
    """A transaction object as given to eth_call / eth_estimateGas / eth_sendTransaction."""

    sender: bytes | None = None
    to: bytes | None = None
    gas: int | None = None
    gas_price: int | None = None
    max_fee_per_gas: int | None = None
    max_priority_fee_per_gas: int | None = None
    value: int = 0
    data: bytes = b""
    nonce: int | None = None
    access_list: tuple[tuple[bytes, tuple[int, ...]], ...] | None = None

    @property
    def has_fee_fields(self) -> bool:
        return (
            self.gas_price is not None
            or self.max_fee_per_gas is not None
            or self.max_priority_fee_per_gas is not None
        )


def _opt_quantity(obj: dict[str, Any], key: str) -> int | None:
    value = obj.get(key)
    return None if value is None else parse_quantity(value, key)


def _parse_access_list(value: Any) -> tuple[tuple[bytes, tuple[int, ...]], ...]:
    if not isinstance(value, list):
        raise InvalidParams("invalid accessList: expected a list")
    entries: list[tuple[bytes, tuple[int, ...]]] = []
    for entry in value:
        if not isinstance(entry, dict) or "address" not in entry:
            raise InvalidParams("invalid accessList entry: expected {address, storageKeys}")
        keys = entry.get("storageKeys") or []
        if not isinstance(keys, list):
            raise InvalidParams("invalid accessList storageKeys: expected a list")
        slots = tuple(int.from_bytes(parse_hash(k, "storageKey"), "big") for k in keys)
        entries.append((parse_address(entry["address"], "accessList.address"), slots))
    return tuple(entries)


def parse_tx_request(value: Any) -> TxObject:
    if not isinstance(value, dict):
        raise InvalidParams("invalid transaction: expected an object")
    data_field = value.get("input")
    if data_field is None:
        data_field = value.get("data")
    if (
        value.get("input") is not None
        and value.get("data") is not None
        and value["input"] != value["data"]
    ):
        raise InvalidParams("both 'data' and 'input' are set and not equal")
    gas_price = _opt_quantity(value, "gasPrice")
    max_fee = _opt_quantity(value, "maxFeePerGas")
    max_tip = _opt_quantity(value, "maxPriorityFeePerGas")
    if gas_price is not None and (max_fee is not None or max_tip is not None):
        raise InvalidParams("both gasPrice and (maxFeePerGas or maxPriorityFeePerGas) specified")
    access_list = value.get("accessList")
    return TxObject(
        sender=None if value.get("from") is None else parse_address(value["from"], "from"),
        to=None if value.get("to") is None else parse_address(value["to"], "to"),
        gas=_opt_quantity(value, "gas"),
        gas_price=gas_price,
        max_fee_per_gas=max_fee,
        max_priority_fee_per_gas=max_tip,
        value=_opt_quantity(value, "value") or 0,
        data=b"" if data_field is None else parse_data(data_field, "input"),
        nonce=_opt_quantity(value, "nonce"),
        access_list=None if access_list is None else _parse_access_list(access_list),
    )


@dataclass(frozen=True)
class LogQuery:
    """eth_getLogs / eth_newFilter criteria."""

    from_block: BlockId = "latest"
    to_block: BlockId = "latest"
    block_hash: bytes | None = None
    addresses: frozenset[bytes] | None = None
    # One entry per topic position: None matches anything, otherwise the set of accepted topics.
    topics: tuple[frozenset[int] | None, ...] = ()

    def matches(self, address: bytes, topics: Sequence[int]) -> bool:
        if self.addresses is not None and address not in self.addresses:
            return False
        if len(self.topics) > len(topics):
            return False
        return all(
            wanted is None or topic in wanted
            for wanted, topic in zip(self.topics, topics, strict=False)
        )


def _parse_topic(value: Any) -> int:
    return int.from_bytes(parse_hash(value, "topic"), "big")


def parse_log_query(value: Any) -> LogQuery:
    if value is None:
        return LogQuery()
    if not isinstance(value, dict):
        raise InvalidParams("invalid filter: expected an object")
    block_hash = None
    if value.get("blockHash") is not None:
        if value.get("fromBlock") is not None or value.get("toBlock") is not None:
            raise InvalidParams("cannot specify both blockHash and fromBlock/toBlock")
        block_hash = parse_hash(value["blockHash"], "blockHash")
    raw_address = value.get("address")
    addresses: frozenset[bytes] | None
    if raw_address is None:
        addresses = None
    elif isinstance(raw_address, list):
        addresses = frozenset(parse_address(a, "address") for a in raw_address)
    else:
        addresses = frozenset({parse_address(raw_address, "address")})
    raw_topics = value.get("topics") or []
    if not isinstance(raw_topics, list):
        raise InvalidParams("invalid topics: expected a list")
    topics: list[frozenset[int] | None] = []
    for position in raw_topics:
        if position is None:
            topics.append(None)
        elif isinstance(position, list):
            topics.append(None if not position else frozenset(_parse_topic(t) for t in position))
        else:
            topics.append(frozenset({_parse_topic(position)}))
    return LogQuery(
        from_block=(
            "latest"
            if value.get("fromBlock") is None
            else parse_block_id(value["fromBlock"], "fromBlock")
        ),
        to_block=(
            "latest" if value.get("toBlock") is None else parse_block_id(value["toBlock"], "toBlock")
        ),
        block_hash=block_hash,
        addresses=addresses,
        topics=tuple(topics),
    )
