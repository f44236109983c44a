"""``xmargin health ADDRESS`` and ``xmargin accounts``: account health for people and scripts."""

from __future__ import annotations

from decimal import Decimal

import click
from rich.table import Table

from protocol_model.fmt import fmt_wad
from protocol_model.loader import discover_accounts, load_state
from protocol_model.report import AT_RISK, BANKRUPT, HEALTHY, LIQUIDATABLE, AccountReport, account_report

from . import cli
from .common import common_options, get_ctx, handle_errors, parse_address

STYLE = {HEALTHY: "green", AT_RISK: "yellow", LIQUIDATABLE: "red", BANKRUPT: "bold red"}


def _ratio(r: int | None) -> str:
    if r is None:
        return "-"
    if r >= 10**24:
        return "unbounded"
    return f"{Decimal(r) / 10**16:.1f}%"


def _native(amount: int, decimals: int) -> str:
    return f"{Decimal(amount) / 10**decimals:,.{min(decimals, 6)}f}"


def _render(console, r: AccountReport) -> None:  # type: ignore[no-untyped-def]
    console.print(f"[bold]{r.address}[/]  status: [{STYLE[r.status]}]{r.status}[/]")
    console.print(
        f"  equity {fmt_wad(r.equity)} USD   init health {fmt_wad(r.init_health)}   "
        f"maint health {fmt_wad(r.maint_health)}   margin ratio {_ratio(r.margin_ratio)}   cash {fmt_wad(r.cash)}"
    )
    if r.positions:
        t = Table("market", "size", "entry", "price", "notional", "uPnL", "liq. price", title="positions", title_justify="left")
        for p in r.positions:
            t.add_row(p.name, fmt_wad(p.size, 4), fmt_wad(p.entry_price), fmt_wad(p.price), fmt_wad(p.notional),
                      fmt_wad(p.upnl), "-" if p.liquidation_price is None else fmt_wad(p.liquidation_price))
        console.print(t)
    if r.collaterals:
        t = Table("token", "balance", "price", "value", "init w.", "maint w.", title="collateral", title_justify="left")
        for c in r.collaterals:
            t.add_row(c.symbol, _native(c.balance, c.decimals), fmt_wad(c.price), fmt_wad(c.value),
                      f"{Decimal(c.init_weight) / 10**16:.0f}%", f"{Decimal(c.maint_weight) / 10**16:.0f}%")
        console.print(t)
    if not r.positions and not r.collaterals and r.cash == 0:
        console.print("  (no deposits, collateral or positions)")


@cli.command()
@common_options
@click.argument("address")
@handle_errors
def health(address: str) -> None:
    """Equity, health, margin ratio, positions with liquidation prices, and collateral of ADDRESS."""
    ctx = get_ctx()
    addr = parse_address(address)
    dep = ctx.dep()
    state = load_state(ctx.chain(), dep, [addr])
    report = account_report(state, state.account(addr))
    ctx.emit(report.to_json(), lambda c: _render(c, report))


@cli.command()
@common_options
@click.option("--at-risk", is_flag=True, help="only accounts at risk, liquidatable or bankrupt")
@click.option("--sort", "sort_key", type=click.Choice(["health", "equity", "ratio", "address"]), default="health",
              show_default=True, help="sort by maintenance health (lowest first), equity, margin ratio (highest first) or address")
@click.option("--limit", type=click.IntRange(min=1), default=None, help="show at most N accounts")
@handle_errors
def accounts(at_risk: bool, sort_key: str, limit: int | None) -> None:
    """Every account that ever deposited, with its health (one batched read per 200 accounts)."""
    ctx = get_ctx()
    w3 = ctx.chain()
    dep = ctx.dep()
    addrs = discover_accounts(w3, dep)
    state = load_state(w3, dep, addrs)
    reports = [account_report(state, state.account(a)) for a in addrs]
    if at_risk:
        reports = [r for r in reports if r.status != HEALTHY]
    keys = {
        "health": lambda r: r.maint_health,
        "equity": lambda r: r.equity,
        "ratio": lambda r: -(r.margin_ratio if r.margin_ratio is not None else -1),
        "address": lambda r: r.address.lower(),
    }
    reports.sort(key=keys[sort_key])
    total = len(reports)
    if limit is not None:
        reports = reports[:limit]
    counts = {s: sum(1 for r in reports if r.status == s) for s in (HEALTHY, AT_RISK, LIQUIDATABLE, BANKRUPT)}

    def human(console) -> None:  # type: ignore[no-untyped-def]
        t = Table("account", "equity", "maint health", "margin ratio", "positions", "status")
        for r in reports:
            t.add_row(r.address, fmt_wad(r.equity), fmt_wad(r.maint_health), _ratio(r.margin_ratio),
                      ", ".join(f"{p.name} {fmt_wad(p.size, 3)}" for p in r.positions) or "-",
                      f"[{STYLE[r.status]}]{r.status}[/]")
        console.print(t)
        console.print(f"{len(reports)} of {total} accounts shown; " + ", ".join(f"{v} {k}" for k, v in counts.items()))

    ctx.emit({"block": state.block, "total": total, "accounts": [
        {"address": r.address, "equity": str(r.equity), "init_health": str(r.init_health), "maint_health": str(r.maint_health),
         "margin_ratio": None if r.margin_ratio is None else str(r.margin_ratio), "status": r.status,
         "positions": {p.name: str(p.size) for p in r.positions}}
        for r in reports]}, human)
