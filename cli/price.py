"""``xmargin price``: read and move the local price feeds."""

from __future__ import annotations

from decimal import Decimal

import click
from web3 import Web3

from protocol_model.errors import ConfigError
from protocol_model.fmt import fmt_wad
from protocol_model.wad import WAD

from . import cli
from .common import common_options, get_ctx, handle_errors, parse_decimal, parse_percent



def _feed_for(dep, symbol: str):  # type: ignore[no-untyped-def]
    key = symbol.upper()
    if key in dep.collaterals:
        key = dep.collaterals[key].get("asset", key)
    return dep.feed_contract(key), key.removesuffix("-PERP")


def _read(feed) -> tuple[int, int]:  # type: ignore[no-untyped-def]
    decimals = feed.functions.decimals().call()
    answer = feed.functions.latestRoundData().call()[1]
    return answer, decimals


def _set(ctx, feed, answer: int) -> dict:  # type: ignore[no-untyped-def]
    lo, hi = feed.functions.min_answer().call(), feed.functions.max_answer().call()
    if not lo <= answer <= hi:
        raise ConfigError(f"price out of the feed's range: answers must lie in [{lo}, {hi}] feed units")
    receipt = ctx.sender().send(feed.functions.set_answer(answer))
    return {"tx": Web3.to_hex(receipt["transactionHash"]), "block": receipt["blockNumber"]}


@cli.group()
def price() -> None:
    """Show and move prices of the local feeds (the sender must be the feed's updater)."""


@price.command("show")
@common_options
@handle_errors
def show() -> None:
    """Every feed's latest price and age."""
    ctx = get_ctx()
    dep = ctx.dep()
    now = ctx.chain().eth.get_block("latest")["timestamp"]
    rows = []
    for asset in dep.feeds:
        feed = dep.feed_contract(asset)
        rid, answer, _s, updated, _a = feed.functions.latestRoundData().call()
        d = feed.functions.decimals().call()
        rows.append({"asset": asset, "feed": feed.address, "answer": answer, "decimals": d,
                     "price_wad": str(answer * 10 ** (18 - d)), "round": rid, "age_seconds": max(now - updated, 0)})

    def human(console) -> None:  # type: ignore[no-untyped-def]
        from rich.table import Table

        t = Table("asset", "price (USD)", "round", "age (s)", "feed")
        for r in rows:
            t.add_row(r["asset"], fmt_wad(int(r["price_wad"])), str(r["round"]), str(r["age_seconds"]), r["feed"])
        console.print(t)

    ctx.emit(rows, human)


@price.command("set")
@common_options
@click.argument("asset")
@click.argument("usd")
@handle_errors
def set_price(asset: str, usd: str) -> None:
    """Set ASSET's price (ETH, BTC, a market or collateral symbol) to USD, e.g. `price set ETH 1800`."""
    ctx = get_ctx()
    feed, name = _feed_for(ctx.dep(), asset)
    value = parse_decimal(usd, "price")
    if value <= 0:
        raise ConfigError(f"invalid price {usd!r}: must be above zero")
    old, d = _read(feed)
    answer = int(value * 10**d)
    out = {"asset": name, "old": str(Decimal(old) / 10**d), "new": str(Decimal(answer) / 10**d)} | _set(ctx, feed, answer)
    ctx.emit(out, lambda c: c.print(f"{name}: {out['old']} -> {out['new']} USD (block {out['block']})"))


@price.command("shock", context_settings={"ignore_unknown_options": True})
@common_options
@click.argument("asset")
@click.argument("change")
@handle_errors
def shock(asset: str, change: str) -> None:
    """Move ASSET's price by CHANGE, e.g. `price shock ETH -15%` (or -0.15)."""
    ctx = get_ctx()
    feed, name = _feed_for(ctx.dep(), asset)
    frac = parse_percent(change)
    old, d = _read(feed)
    answer = old * (WAD + frac) // WAD
    if answer <= 0:
        raise ConfigError(f"shock {change} takes {name} to zero: choose a smaller move")
    out = {"asset": name, "change_wad": str(frac), "old": str(Decimal(old) / 10**d), "new": str(Decimal(answer) / 10**d)} | _set(ctx, feed, answer)
    ctx.emit(out, lambda c: c.print(f"{name}: {out['old']} -> {out['new']} USD ({change}, block {out['block']})"))
