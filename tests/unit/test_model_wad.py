"""protocol_model.wad: the engine's integer helpers, hand-checked and against the Vyper definitions."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from protocol_model.wad import (
    INT256_MAX,
    INT256_MIN,
    MAX_AMOUNT,
    MAX_PRICE,
    MAX_SIZE,
    WAD,
    div_ceil,
    div_floor,
    div_up,
    evm_sdiv,
    mul_down,
    mul_up,
    to_wad,
)

# ---------------------------------------------------------------- the contract's helpers, transcribed
# MarginEngine.vy: _div_floor / _div_ceil on top of Vyper's truncating signed division (evm_sdiv).


def vyper_div_floor(a: int, b: int) -> int:
    q = evm_sdiv(a, b)
    if a < 0 and q * b != a:
        q -= 1
    return q


def vyper_div_ceil(a: int, b: int) -> int:
    q = evm_sdiv(a, b)
    if a > 0 and q * b != a:
        q += 1
    return q


SIGNED = st.integers(INT256_MIN // WAD, INT256_MAX // WAD)   # products with WAD stay in int256
POSITIVE = st.integers(1, 2**200)


# ---------------------------------------------------------------- hand-checked values


def test_evm_sdiv_truncates_toward_zero() -> None:
    assert evm_sdiv(7, 2) == 3
    assert evm_sdiv(-7, 2) == -3          # Python: -7 // 2 == -4
    assert evm_sdiv(7, -2) == -3
    assert evm_sdiv(-7, -2) == 3
    assert evm_sdiv(-6, 2) == -3
    assert evm_sdiv(0, 5) == 0


def test_evm_sdiv_by_zero_raises() -> None:
    with pytest.raises(ZeroDivisionError):
        evm_sdiv(1, 0)


def test_div_floor_and_ceil_on_signed_values() -> None:
    assert div_floor(7, 2) == 3
    assert div_floor(-7, 2) == -4
    assert div_floor(-6, 2) == -3
    assert div_ceil(7, 2) == 4
    assert div_ceil(-7, 2) == -3
    assert div_ceil(6, 2) == 3
    assert div_ceil(0, 3) == 0


def test_mul_down_rounds_toward_minus_infinity() -> None:
    assert mul_down(3, WAD // 2) == 1            # 1.5 wei -> 1
    assert mul_down(-3, WAD // 2) == -2          # -1.5 wei -> -2 (a debit rounds against the account)
    assert mul_down(2 * WAD, 3 * WAD) == 6 * WAD
    assert mul_down(-1, 2_000 * WAD + 1) == -2_001
    assert mul_down(1, 2_000 * WAD + 1) == 2_000


def test_mul_up_rounds_toward_plus_infinity() -> None:
    assert mul_up(3, WAD // 2) == 2
    assert mul_up(-3, WAD // 2) == -1
    assert mul_up(1, 1) == 1                     # any positive remainder rounds up
    assert mul_up(-1, 1) == 0
    assert mul_up(2 * WAD, 3 * WAD) == 6 * WAD


def test_div_up() -> None:
    assert div_up(1, 3 * WAD) == 1               # 1/3 wei -> 1
    assert div_up(-1, 3 * WAD) == 0
    assert div_up(10 * WAD, 4 * WAD) == 5 * WAD // 2
    assert div_up(WAD, 3) == -(-(WAD * WAD) // 3)


def test_to_wad_and_bounds() -> None:
    assert to_wad(1_500_000, 10**12) == 3 * WAD // 2    # 1.5 USDC (6 decimals)
    assert MAX_SIZE == MAX_PRICE == 2**100
    assert MAX_AMOUNT == 2**128
    # The engine's bound argument: size * price fits in int256 with room to spare.
    assert MAX_SIZE * MAX_PRICE < INT256_MAX


# ---------------------------------------------------------------- against the contract's definitions


@st.composite
def int256_products(draw: st.DrawFn) -> tuple[int, int]:
    """Two signed factors whose product fits in int256, as the contract's multiplication needs:
    ``a`` over its whole range, ``b`` bounded by ``a`` (two independent draws would overflow in
    almost every example and leave nothing checked)."""
    a = draw(SIGNED)
    bound = INT256_MAX // max(abs(a), 1)
    b = draw(st.integers(-bound, bound))
    return a, b


@given(ab=int256_products())
def test_mul_down_matches_the_contract(ab: tuple[int, int]) -> None:
    a, b = ab
    assert INT256_MIN <= a * b <= INT256_MAX
    assert mul_down(a, b) == vyper_div_floor(a * b, WAD)


@given(ab=int256_products())
def test_mul_up_matches_the_contract(ab: tuple[int, int]) -> None:
    a, b = ab
    assert INT256_MIN <= a * b <= INT256_MAX
    assert mul_up(a, b) == vyper_div_ceil(a * b, WAD)


@given(a=SIGNED, b=POSITIVE)
def test_div_up_matches_the_contract(a: int, b: int) -> None:
    assert div_up(a, b) == vyper_div_ceil(a * WAD, b)


@given(a=st.integers(INT256_MIN + 1, INT256_MAX), b=POSITIVE)
def test_floor_and_ceil_match_the_contract(a: int, b: int) -> None:
    assert div_floor(a, b) == vyper_div_floor(a, b)
    assert div_ceil(a, b) == vyper_div_ceil(a, b)
    assert div_floor(a, b) <= div_ceil(a, b) <= div_floor(a, b) + 1


@given(a=SIGNED, b=SIGNED)
def test_rounding_brackets_the_exact_product(a: int, b: int) -> None:
    # floor(a*b/W) * W <= a*b <= ceil(a*b/W) * W, and they differ by at most one wei
    assert mul_down(a, b) * WAD <= a * b <= mul_up(a, b) * WAD
    assert mul_up(a, b) - mul_down(a, b) in (0, 1)


@given(a=st.integers(-(2**200), 2**200), b=st.integers(-(2**20), 2**20).filter(lambda x: x != 0))
def test_evm_sdiv_is_truncation(a: int, b: int) -> None:
    q = evm_sdiv(a, b)
    assert abs(q) == abs(a) // abs(b)
    assert q == 0 or (q > 0) == ((a > 0) == (b > 0))
