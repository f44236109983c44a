"""Per-account reports for people and dashboards: status, positions with entry and liquidation
prices, collateral with values and weights. Integers throughout; formatting is the caller's job.

Status, in order of precedence:
* ``bankrupt``: equity < 0;
* ``liquidatable``: maint_health < 0;
* ``at risk``: the margin ratio (maintenance requirement / maintenance margin balance) is at least
  ``AT_RISK_RATIO`` (80%), or init_health < 0 (it may not increase risk any more);
* ``healthy``: everything else.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from .health import breakdown, liquidation_price, margin_ratio, price
from .state import Account, ProtocolState
from .wad import WAD, div_floor, mul_down, mul_up

AT_RISK_RATIO = 8 * 10**17

HEALTHY, AT_RISK, LIQUIDATABLE, BANKRUPT = "healthy", "at risk", "liquidatable", "bankrupt"


def status(equity: int, init_health: int, maint_health: int, ratio: int | None) -> str:
    if equity < 0:
        return BANKRUPT
    if maint_health < 0:
        return LIQUIDATABLE
    if init_health < 0 or (ratio is not None and ratio >= AT_RISK_RATIO):
        return AT_RISK
    return HEALTHY


@dataclass(frozen=True)
class PositionReport:
    market: int
    name: str
    size: int                 # base units WAD
    quote: int                # USD WAD
    price: int                # USD WAD (latest, loose)
    entry_price: int          # USD WAD, -quote / size rounded toward zero
    notional: int             # USD WAD
    upnl: int                 # USD WAD
    liquidation_price: int | None


@dataclass(frozen=True)
class CollateralReport:
    token: str
    symbol: str
    balance: int              # native units
    decimals: int
    price: int                # USD WAD
    value: int                # USD WAD
    init_weight: int
    maint_weight: int


@dataclass(frozen=True)
class AccountReport:
    address: str
    cash: int
    equity: int
    init_health: int
    maint_health: int
    margin_ratio: int | None
    status: str
    positions: list[PositionReport]
    collaterals: list[CollateralReport]

    def to_json(self) -> dict[str, Any]:
        """Integers as decimal strings (exact in any JSON reader), WAD units as documented."""

        def enc(v: Any) -> Any:
            if isinstance(v, bool) or v is None or isinstance(v, str):
                return v
            if isinstance(v, int):
                return str(v)
            if isinstance(v, list):
                return [enc(x) for x in v]
            if hasattr(v, "__dataclass_fields__"):
                return {k: enc(getattr(v, k)) for k in v.__dataclass_fields__}
            return v

        out = enc(self)
        out["units"] = "USD and prices: WAD (1e18); sizes: base units WAD; balances: token native units; ratio: WAD fraction"
        return out


def account_report(state: ProtocolState, account: Account) -> AccountReport:
    b = breakdown(state, account)
    h = b.health
    ratio = margin_ratio(state, account)
    positions = []
    for m, pos in sorted(account.positions.items()):
        mk = state.markets[m]
        p = price(state, mk.feed, False, mk.price_scale)
        entry = div_floor(abs(pos.quote) * WAD, abs(pos.size)) if pos.size else 0
        positions.append(PositionReport(
            market=m, name=mk.name or f"market {m}", size=pos.size, quote=pos.quote, price=p,
            entry_price=entry, notional=mul_up(abs(pos.size), p), upnl=mul_down(pos.size, p) + pos.quote,
            liquidation_price=liquidation_price(state, account, m),
        ))
    collaterals = []
    for c in state.collaterals:
        bal = account.collateral.get(c.token, 0)
        if not bal:
            continue
        p = price(state, c.feed, False, c.price_scale)
        collaterals.append(CollateralReport(
            token=c.token, symbol=c.symbol or c.token, balance=bal, decimals=c.decimals, price=p,
            value=bal * p // c.unit, init_weight=c.init_weight, maint_weight=c.maint_weight,
        ))
    return AccountReport(
        address=account.address, cash=account.cash, equity=h.equity, init_health=h.init_health,
        maint_health=h.maint_health, margin_ratio=ratio,
        status=status(h.equity, h.init_health, h.maint_health, ratio),
        positions=positions, collaterals=collaterals,
    )
