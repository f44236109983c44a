"""JSON-RPC value encoding: parsing request parameters and formatting results.

Output follows the Ethereum JSON-RPC spec: quantities are ``0x``-prefixed hex without leading
zeros, byte strings are ``0x``-prefixed hex, addresses are checksummed, keys are camelCase.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from eth_bloom import BloomFilter
from eth_utils import is_hex_address, to_canonical_address, to_checksum_address

from .errors import InvalidParams

BLOCK_TAGS = frozenset({"latest", "earliest", "pending", "safe", "finalized"})

BlockId = int | str  # a block number or one of BLOCK_TAGS

# eth-tester result keys whose camelCase form is not the mechanical conversion.
_KEY_OVERRIDES = {"coinbase": "miner", "data": "input"}


# --------------------------------------------------------------------------- output


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


def address_or_none(value: Any) -> str | None:
    """Checksummed address, or ``None`` for the empty/absent ``to`` of a contract creation."""
    if value is None or value == b"" or value == "":
        return None
    if isinstance(value, (bytes, bytearray)):
        return to_checksum_address(bytes(value))
    return to_checksum_address(value)


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
    raise TypeError(f"cannot encode {type(value).__name__} as JSON-RPC value")


def _access_list_json(access_list: Sequence[Any]) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    for entry in access_list:
        if isinstance(entry, dict):
            address = entry["address"]
            keys = entry.get("storage_keys", entry.get("storageKeys", ()))
        else:
            address, keys = entry
        out.append(
            {"address": address_or_none(address), "storageKeys": [hash32(k) for k in keys]}
        )
    return out


def format_transaction(tx: dict[str, Any]) -> dict[str, Any]:
    """An eth-tester transaction dict as a JSON-RPC transaction object."""
    out: dict[str, Any] = {}
    for key, value in tx.items():
        if key == "to":
            out["to"] = address_or_none(value)
        elif key == "access_list":
            out["accessList"] = _access_list_json(value)
        elif key == "type":
            out["type"] = value if isinstance(value, str) else quantity(value)
        else:
            out[camel(key)] = jsonify(value)
    return out


def format_log(log: dict[str, Any], log_index_offset: int) -> dict[str, Any]:
    """An eth-tester log entry; ``logIndex`` is made block-wide by adding ``log_index_offset``."""
    return {
        "address": address_or_none(log["address"]),
        "topics": [hash32(t) for t in log["topics"]],
        "data": hexdata(log["data"]),
        "blockNumber": None if log["block_number"] is None else quantity(log["block_number"]),
        "transactionHash": hexdata(log["transaction_hash"]),
        "transactionIndex": (
            None if log["transaction_index"] is None else quantity(log["transaction_index"])
        ),
        "blockHash": None if log["block_hash"] is None else hexdata(log["block_hash"]),
        "logIndex": quantity(log["log_index"] + log_index_offset),
        "removed": False,
    }


def logs_bloom(logs: Sequence[dict[str, Any]]) -> str:
    """The 2048-bit bloom over the logs' addresses and topics, as 256-byte hex."""
    bloom = BloomFilter()
    for log in logs:
        bloom.add(to_canonical_address(log["address"]))
        for topic in log["topics"]:
            bloom.add(bytes.fromhex(hash32(topic)[2:]))
    return "0x" + int(bloom).to_bytes(256, "big").hex()


def format_receipt(receipt: dict[str, Any], log_index_offset: int) -> dict[str, Any]:
    """An eth-tester receipt as a JSON-RPC receipt (block-wide log indices, with logsBloom)."""
    out: dict[str, Any] = {}
    for key, value in receipt.items():
        if key == "state_root":
            continue  # post-Byzantium receipts carry `status`, not a state root
        if key in ("to", "contract_address"):
            out[camel(key)] = address_or_none(value)
        elif key == "logs":
            out["logs"] = [format_log(log, log_index_offset) for log in value]
        elif key == "type":
            out["type"] = value if isinstance(value, str) else quantity(value)
        else:
            out[camel(key)] = jsonify(value)
    out["logsBloom"] = logs_bloom(receipt["logs"])
    return out


def format_block(block: dict[str, Any], full_transactions: bool) -> dict[str, Any]:
    """An eth-tester block dict as a JSON-RPC block object."""
    out: dict[str, Any] = {}
    for key, value in block.items():
        if key == "logs_bloom":
            out["logsBloom"] = (
                "0x" + value.to_bytes(256, "big").hex() if isinstance(value, int) else hexdata(value)
            )
        elif key == "coinbase":
            out["miner"] = address_or_none(value) or "0x" + "00" * 20
        elif key == "transactions":
            if full_transactions:
                out["transactions"] = [format_transaction(tx) for tx in value]
            else:
                out["transactions"] = [hexdata(h) for h in value]
        else:
            out[camel(key)] = jsonify(value)
    return out


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


def parse_address(value: Any, name: str) -> str:
    """A 20-byte address, returned checksummed."""
    if isinstance(value, str) and is_hex_address(value):
        return to_checksum_address(value)
    raise InvalidParams(f"invalid {name}: expected a 20-byte hex address, got {value!r}")


def parse_hash(value: Any, name: str) -> str:
    """A 32-byte hash, returned as lowercase ``0x`` hex."""
    data = parse_data(value, name)
    if len(data) != 32:
        raise InvalidParams(f"invalid {name}: expected 32 bytes, got {len(data)}")
    return "0x" + data.hex()


def parse_bool(value: Any, name: str) -> bool:
    if isinstance(value, bool):
        return value
    raise InvalidParams(f"invalid {name}: expected a boolean, got {value!r}")


def parse_block_id(value: Any, name: str = "block") -> BlockId | dict[str, Any]:
    """A block number, a tag, or an EIP-1898 ``{"blockHash": ...}`` / ``{"blockNumber": ...}``."""
    if isinstance(value, str) and value in BLOCK_TAGS:
        return value
    if isinstance(value, dict):
        if "blockHash" in value:
            return {"blockHash": parse_hash(value["blockHash"], f"{name}.blockHash")}
        if "blockNumber" in value:
            return parse_block_id(value["blockNumber"], f"{name}.blockNumber")
        raise InvalidParams(f"invalid {name}: expected blockHash or blockNumber")
    return parse_quantity(value, name)
