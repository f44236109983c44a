"""Integer amounts as text for people: exact (``Decimal``), rounded toward zero, with thousands
separators. The one set of formatting helpers of the project (the keeper's logs, the CLI's tables,
the simulator's reports).

* :func:`fmt_amount` - ``value / 10**decimals`` with ``places`` decimals: ``1,234.50``;
* :func:`fmt_wad` - a WAD amount (USD, a price, a perp size): ``fmt_amount(value, 18, places)``;
* :func:`fmt_units` - a token's native units with trailing zeros dropped: ``12.5``.
"""

from __future__ import annotations

from decimal import ROUND_DOWN, Decimal


def fmt_amount(value: int, decimals: int, places: int) -> str:
    """``value / 10**decimals`` with exactly ``places`` decimals, rounded toward zero."""
    d = (Decimal(int(value)) / Decimal(10**decimals)).quantize(Decimal(1).scaleb(-places), rounding=ROUND_DOWN)
    return f"{d:,.{places}f}"


def fmt_wad(value: int, places: int = 2) -> str:
    """A WAD amount for people: ``1,234.56`` (exact, rounded toward zero)."""
    return fmt_amount(value, 18, places)


def fmt_units(value: int, decimals: int, places: int = 4) -> str:
    """Native token units for people, e.g. ``12.5`` (trailing zeros dropped)."""
    text = fmt_amount(value, decimals, places).rstrip("0").rstrip(".")
    return text or "0"


__all__ = ["fmt_amount", "fmt_units", "fmt_wad"]
