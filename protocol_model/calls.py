"""Contract call data without a web3 contract object: the one ABI call encoder of the project.

``encode_call("liquidate(address,uint256,uint256)", account, market, max_size)`` is the 4-byte
selector (keccak of the signature) followed by the ABI-encoded arguments, the types read from the
signature (a tuple type, e.g. ``(address,uint256)[]``, is one argument, given as a list of
tuples). :func:`decode_call` reverses it for one signature. The engine's calls a keeper sends are
named here once (:data:`LIQUIDATE`, :data:`LIQUIDATE_COLLATERAL`, :data:`SETTLE_BAD_DEBT`,
:data:`LIQUIDATE_MANY`, whose one argument is a list of ``(account, market, token, amount)``
orders, the engine's ``LiquidationOrder``).
"""

from __future__ import annotations

import functools
from typing import Any

from eth_abi import decode as abi_decode
from eth_abi import encode as abi_encode
from eth_utils import keccak, to_checksum_address

from .errors import ConfigError

LIQUIDATE = "liquidate(address,uint256,uint256)"
LIQUIDATE_COLLATERAL = "liquidate_collateral(address,address,uint256)"
SETTLE_BAD_DEBT = "settle_bad_debt(address)"
LIQUIDATE_MANY = "liquidate_many((address,uint256,address,uint256)[])"


def _split_types(inner: str) -> tuple[str, ...]:
    """The top-level comma-separated types of a parameter list (commas inside tuples kept)."""
    out: list[str] = []
    depth, start = 0, 0
    for i, ch in enumerate(inner):
        if ch == "(":
            depth += 1
        elif ch == ")":
            depth -= 1
            if depth < 0:
                break
        elif ch == "," and depth == 0:
            out.append(inner[start:i])
            start = i + 1
    if depth != 0:
        raise ConfigError(f"unbalanced parentheses in {inner!r}")  # dev
    out.append(inner[start:])
    if any(not t for t in out):
        raise ConfigError(f"an empty type in {inner!r}")  # dev
    return tuple(out)


@functools.cache
def _parsed(signature: str) -> tuple[bytes, tuple[str, ...]]:
    name, sep, rest = signature.partition("(")
    if not name or not sep or not rest.endswith(")") or "(" in name:
        raise ConfigError(f"not a function signature: {signature!r}")  # dev
    inner = rest[:-1]
    types = _split_types(inner) if inner else ()
    return keccak(text=signature)[:4], types


def selector(signature: str) -> bytes:
    """The 4-byte function selector of ``signature``, e.g. ``transfer(address,uint256)``."""
    return _parsed(signature)[0]


def encode_call(signature: str, *args: Any) -> bytes:
    """Call data of ``signature`` with ``args`` (selector + ABI-encoded arguments)."""
    sel, types = _parsed(signature)
    return sel + abi_encode(list(types), list(args))


def decode_call(signature: str, data: bytes) -> tuple[Any, ...] | None:
    """The arguments of ``data`` if it is a call of ``signature`` (addresses checksummed, in
    tuples too), else None."""
    sel, types = _parsed(signature)
    data = bytes(data)
    if data[:4] != sel:
        return None
    static = all("(" not in t and not t.endswith("[]") and t not in ("bytes", "string") for t in types)
    if static and len(data) != 4 + 32 * len(types):
        return None
    try:
        values = abi_decode(list(types), data[4:])
    except Exception:   # eth_abi's DecodingError and friends: not a call of this signature
        return None
    if not static and abi_encode(list(types), list(values)) != data[4:]:
        return None   # trailing or non-canonical bytes
    return tuple(_checksummed(t, v) for t, v in zip(types, values))


def _checksummed(typ: str, value: Any) -> Any:
    if typ == "address":
        return to_checksum_address(value)
    if typ.endswith("[]"):
        return [_checksummed(typ[:-2], v) for v in value]
    if typ.startswith("("):
        return tuple(_checksummed(t, v) for t, v in zip(_split_types(typ[1:-1]), value))
    return value


__all__ = ["LIQUIDATE", "LIQUIDATE_COLLATERAL", "LIQUIDATE_MANY", "SETTLE_BAD_DEBT", "decode_call", "encode_call",
           "selector"]
