"""Contract call data without a web3 contract object: the one ABI call encoder of the project.

``encode_call("liquidate(address,uint256,uint256)", account, market, max_size)`` is the 4-byte
selector (keccak of the signature) followed by the ABI-encoded arguments, the types read from the
signature (flat signatures only: no tuples). :func:`decode_call` reverses it for one signature.
The engine's calls a keeper sends are named here once (:data:`LIQUIDATE`,
:data:`LIQUIDATE_COLLATERAL`, :data:`SETTLE_BAD_DEBT`).
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


@functools.cache
def _parsed(signature: str) -> tuple[bytes, tuple[str, ...]]:
    name, sep, rest = signature.partition("(")
    if not name or not sep or not rest.endswith(")") or "(" in rest:
        raise ConfigError(f"not a flat function signature: {signature!r}")  # dev
    inner = rest[:-1]
    types = tuple(inner.split(",")) if inner else ()
    return keccak(text=signature)[:4], types


def selector(signature: str) -> bytes:
    """The 4-byte function selector of ``signature``, e.g. ``transfer(address,uint256)``."""
    return _parsed(signature)[0]


def encode_call(signature: str, *args: Any) -> bytes:
    """Call data of ``signature`` with ``args`` (selector + ABI-encoded arguments)."""
    sel, types = _parsed(signature)
    return sel + abi_encode(list(types), list(args))


def decode_call(signature: str, data: bytes) -> tuple[Any, ...] | None:
    """The arguments of ``data`` if it is a call of ``signature`` (addresses checksummed), else None."""
    sel, types = _parsed(signature)
    if data[:4] != sel or len(data) != 4 + 32 * len(types):
        return None
    values = abi_decode(list(types), bytes(data[4:]))
    return tuple(to_checksum_address(v) if t == "address" else v for t, v in zip(types, values))


__all__ = ["LIQUIDATE", "LIQUIDATE_COLLATERAL", "SETTLE_BAD_DEBT", "decode_call", "encode_call", "selector"]
