"""Exact integer arithmetic of the engine, with the rounding direction in the name.

The contract divides signed values only through ``_div_floor`` / ``_div_ceil`` (divisor > 0), so
those are the operations mirrored here. Python's ``//`` *is* the floor for a positive divisor, and
the contract's plain ``//`` is only ever applied to non-negative operands, where truncation and
floor agree; ``evm_sdiv`` exists for code that must reproduce EVM truncation on signed values.
Never use bare ``//`` on a value that can be negative outside this module.
"""

from __future__ import annotations

from typing import NewType

Wad = NewType("Wad", int)          # USD scaled by 10**18, or a WAD fraction
BaseWad = NewType("BaseWad", int)  # base-asset units scaled by 10**18 (perp sizes)
Native = NewType("Native", int)    # a token's native units (10**decimals per token)

WAD = 10**18
GWEI = 10**9                       # wei per gwei
ETHER = 10**18                     # wei per ether
INT256_MIN = -(2**255)
INT256_MAX = 2**255 - 1
UINT256_MAX = 2**256 - 1

# Engine bounds (contracts/MarginEngine.vy CONSTANTS).
MAX_MARKETS = 16
MAX_COLLATERALS = 8
MAX_AMOUNT = 2**128     # native units
MAX_SIZE = 2**100       # base units WAD
MAX_PRICE = 2**100      # USD WAD
MAX_PRICE_AGE = 2**32 - 1   # seconds; the largest max price age of a market or collateral
MAX_ORDERS = 32         # orders per liquidate_many
# Whole tokens of one collateral the engine holds in total (total_collateral[token] <=
# MAX_TOTAL_COLLATERAL * 10**decimals, else "deposit cap"): the largest such bound for which
# balance * P and value * weight fit in int256 at every P <= MAX_PRICE, weight < WAD and
# decimals <= 18. About 4.57e28 tokens (2**95.2); docs/protocol.md derives it.
MAX_TOTAL_COLLATERAL = (2**255 - 1) // (MAX_PRICE * WAD)


def evm_sdiv(a: int, b: int) -> int:
    """EVM/Vyper signed division: truncates toward zero (``-7 // 2 == -3``)."""
    if b == 0:
        raise ZeroDivisionError("evm_sdiv by zero")
    q = abs(a) // abs(b)
    return q if (a >= 0) == (b > 0) else -q


def div_floor(a: int, b: int) -> int:
    """floor(a / b) for b > 0: the contract's ``_div_floor``."""
    return a // b


def div_ceil(a: int, b: int) -> int:
    """ceil(a / b) for b > 0: the contract's ``_div_ceil``."""
    return -((-a) // b)


def mul_down(a: int, b: int) -> int:
    """floor(a * b / WAD)."""
    return (a * b) // WAD


def mul_up(a: int, b: int) -> int:
    """ceil(a * b / WAD)."""
    return -((-(a * b)) // WAD)


def div_up(a: int, b: int) -> int:
    """ceil(a * WAD / b) for b > 0."""
    return -((-(a * WAD)) // b)


def to_wad(amount: int, scale: int) -> int:
    """Native token units to WAD with the token's ``scale = 10**(18 - decimals)``."""
    return amount * scale
