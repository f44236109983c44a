"""``xmargin bot``: run the liquidation bot, and read its history.

    xmargin bot run --rpc URL --deployment FILE [--keystore FILE] [--dry-run] [--backstop] [--metrics-port N] ...
    xmargin bot status [--db FILE] [--deployment FILE] [--json]

Every ``bot run`` option overrides the matching ``XMARGIN_*`` setting of :class:`bot.config.BotConfig`
(``xmargin bot run --help`` lists them all). The key comes from ``--keystore`` (password from
``--password-file`` or ``XMARGIN_KEYSTORE_PASSWORD``) or ``XMARGIN_PRIVATE_KEY``; it is never
printed. A dry run needs no key.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import socket
import sqlite3
from decimal import Decimal
from pathlib import Path
from typing import Any

import click

from protocol_model.chain import connect
from protocol_model.deploy import Deployment
from protocol_model.errors import ChainError, ConfigError
from protocol_model.fmt import fmt_wad
from protocol_model.wad import ETHER, WAD

from . import cli
from .common import (
    DEFAULT_DEPLOYMENT,
    EXIT_FAILED,
    common_options,
    deployment_option,
    fail,
    get_ctx,
    handle_errors,
    json_option,
    parse_decimal,
    require_engine,
)

log = logging.getLogger(__name__)

STRATEGIES = {"fixed": "fixed", "profit-share": "profit_share"}


@cli.group()
def bot() -> None:
    """Run the liquidation bot and inspect what it did."""


def _settings_epilog() -> str:
    from bot.config import BotConfig

    lines = ["Settings (environment; options above override them):", ""]
    for var, default, help_text in BotConfig.settings_help():
        lines.append(f"  {var} [{default}]: {help_text}")
    return "\b\n" + "\n".join(lines)


@bot.command("run", epilog=_settings_epilog())
@common_options
@click.option("--keystore", type=click.Path(dir_okay=False), default=None,
              help="encrypted keystore of the liquidator key [else XMARGIN_PRIVATE_KEY]")
@click.option("--password-file", type=click.Path(dir_okay=False), default=None,
              help="file holding the keystore password [else XMARGIN_KEYSTORE_PASSWORD]")
@click.option("--dry-run", is_flag=True, default=False, help="decide and log liquidations, never sign or send")
@click.option("--metrics-port", type=click.IntRange(1, 65535), default=None,
              help="serve Prometheus metrics on this port (http://127.0.0.1:PORT/metrics)")
@click.option("--db", "db_path", type=click.Path(dir_okay=False), default=None,
              help="SQLite state database [XMARGIN_DB_PATH; default xmargin-bot.sqlite3]")
@click.option("--min-profit", default=None, help="least profit net of gas to act on, USD, e.g. 2.5")
@click.option("--strategy", type=click.Choice(sorted(STRATEGIES)), default=None,
              help="priority fee: a fixed tip, or a share of the expected profit")
@click.option("--tip-gwei", default=None, help="priority fee of the fixed strategy, gwei, e.g. 1.5")
@click.option("--profit-share", default=None,
              help="share of the expected profit paid as priority fee, e.g. 10% or 0.1 (as in `simulate competition`)")
@click.option("--max-blocks", type=click.IntRange(min=1), default=None, help="stop after processing N new blocks")
@click.option("--no-collateral", is_flag=True, default=False,
              help="never liquidate collateral (it spends quote tokens the bot holds)")
@click.option("--backstop", is_flag=True, default=False,
              help="the protocol operator's keeper: also closes bankrupt accounts whose reward does not cover "
                   "the gas and the minimum profit (dust), at a loss, and settles bad debt that no "
                   "liquidation settled [XMARGIN_BACKSTOP]")
@click.option("--preflight", type=click.Choice(["auto", "model", "node"]), default=None,
              help="check transactions with the mirror's exact model, a node eth_call each, or the model when "
                   "the mirror is at the head [XMARGIN_PREFLIGHT; default auto]")
@click.option("--fresh-db", is_flag=True, default=False,
              help="move an existing --db aside (to DB.TIMESTAMP.old) and start a new one, e.g. after the node "
                   "was restarted")
@click.option("--backrun/--no-backrun", default=None,
              help="liquidate in the block of a pending price update, right after it (default: on where the node "
                   "has a pending-transaction filter) [XMARGIN_BACKRUN]")
@click.option("--ws", "ws_url", default=None, metavar="URL|auto|off",
              help="WebSocket for pushed heads: auto (ws:// on the --rpc host and port, polling if refused), off "
                   "(poll over HTTP), or a ws:// URL [XMARGIN_WS_URL; default auto]")
@handle_errors
def run_cmd(keystore: str | None, password_file: str | None, dry_run: bool, metrics_port: int | None,
            db_path: str | None, min_profit: str | None, strategy: str | None, tip_gwei: str | None,
            profit_share: str | None, max_blocks: int | None, no_collateral: bool,
            backstop: bool = False, fresh_db: bool = False, backrun: bool | None = None,
            preflight: str | None = None, ws_url: str | None = None) -> None:
    """Watch every account and liquidate those under maintenance margin, most profitable first."""
    from bot.config import BotConfig
    from bot.keys import PRIVATE_KEY_ENV, load_account
    from bot.liquidator import Liquidator

    ctx = get_ctx()
    overrides: dict[str, Any] = {
        "rpc_url": ctx.rpc,
        "deployment_path": ctx.deployment_path,
        "db_path": db_path,
        "dry_run": True if dry_run else None,
        "backstop": True if backstop else None,
        "gas_strategy": STRATEGIES[strategy] if strategy else None,
        "backrun": backrun,
        "ws_url": ws_url,
    }
    if preflight is not None:
        overrides["preflight"] = preflight
    if keystore is not None:
        overrides["keystore_path"] = keystore
    if password_file is not None:
        overrides["keystore_password_file"] = password_file
    if metrics_port is not None:
        overrides["metrics_port"] = metrics_port
    if min_profit is not None:
        overrides["min_profit_usd_wad"] = _scaled(min_profit, "--min-profit", WAD)
    if tip_gwei is not None:
        overrides["fixed_tip_wei"] = _scaled(tip_gwei, "--tip-gwei", 10**9)
    if profit_share is not None:
        from simulator.competition.agents import parse_share   # the one parser of a share: 10% or 0.1

        overrides["profit_share_wad"] = parse_share(profit_share, "--profit-share")
    cfg = BotConfig.from_env(**overrides)

    # The key first: a wrong password is reported before anything touches the network.
    account = None
    if cfg.keystore_path is not None or os.environ.get(PRIVATE_KEY_ENV) or not cfg.dry_run:
        account = load_account(cfg.keystore_path, cfg.keystore_password_file)

    if not click.get_current_context().find_root().meta.get("verbose"):
        logging.getLogger("bot").setLevel(logging.INFO)   # the one-line-per-event log, without -v too
    rpc = None
    if ctx.w3 is not None:
        w3 = ctx.w3
    else:
        # The bot's retrying layer goes on before the first request, so that a flaky transport
        # (a 502, a reset, a cut body) is retried during the setup reads too.
        from bot.config import redact_url
        from bot.errors import RpcError
        from bot.rpc import CountingRpc

        w3 = connect(cfg.rpc_url, timeout=cfg.rpc_timeout_s, probe=False)
        rpc = CountingRpc.from_config(w3, cfg)
        try:
            w3.eth.chain_id  # noqa: B018 - the probe
        except RpcError as exc:
            raise ChainError(f"cannot reach the RPC node at {redact_url(cfg.rpc_url)} ({exc}); is the node running? "
                             "start one with 'xmargin node'") from None
    dep = Deployment.load(cfg.deployment_path or DEFAULT_DEPLOYMENT, w3)
    require_engine(w3, dep)
    if fresh_db:
        from bot.store import archive_database

        archive_database(cfg.db_path)   # logs where the old one went
    check_before_start(cfg, w3, dep, account, collateral=not no_collateral)
    liquidator = Liquidator(w3, dep, account, cfg, rpc=rpc, collateral_liquidation=not no_collateral)
    result = liquidator.run(max_blocks=max_blocks)
    totals = liquidator.store_totals()
    out = {
        "reason": result.reason,
        "blocks": result.blocks,
        "skipped_blocks": result.skipped,
        "failed_ticks": result.failed_ticks,
        "errors": result.errors,
        "won": totals.won if totals else 0,
        "lost": totals.lost if totals else 0,
        "reward_usd_wad": str(totals.reward_usd_wad) if totals else "0",
        "gas_cost_wei": str(totals.gas_cost_wei) if totals else "0",
        "rpc_calls": liquidator.rpc.counts,
        "dry_run": cfg.dry_run,
        "backstop": cfg.backstop,
        # What backrunning pending price updates did (None: off, or the node has no pending pool).
        "backrun": dataclasses.asdict(liquidator.backrun.stats) if liquidator.backrun is not None else None,
    }
    stats = liquidator.backrun.stats if liquidator.backrun is not None else None
    ctx.emit(out, lambda c: c.print(
        f"bot stopped ({result.reason}) after {result.blocks} block(s): won {out['won']}, lost {out['lost']}, "
        f"rewards {fmt_wad(int(out['reward_usd_wad']))} USD, gas {_eth(int(out['gas_cost_wei']))} ETH"
        + (f"; backrun {stats.updates} price update(s), {stats.orders} order(s) sent, {stats.skipped_orders} "
           f"skipped (gas {_eth(stats.skipped_gas_wei)} ETH)" if stats is not None else "")
    ))
    if not result.ok:
        fail(f"the bot stopped after {result.failed_ticks} failed tick(s): {result.errors[-1] if result.errors else 'see the log'}",
             EXIT_FAILED)


def default_db_path() -> str:
    """``bot run``'s database: XMARGIN_DB_PATH, else BotConfig's default."""
    from bot.config import ENV_PREFIX, BotConfig

    field = next(f for f in dataclasses.fields(BotConfig) if f.name == "db_path")
    return os.environ.get(f"{ENV_PREFIX}DB_PATH") or str(field.default)


def target_names(deployment_path: str, engine: str) -> dict[str, str]:
    """Market ids and collateral token addresses -> names (ETH-PERP, WETH), from the deployment file
    when it is the database's engine; empty otherwise (the raw targets are shown)."""
    try:
        data = json.loads(Path(deployment_path).read_text())
    except (OSError, ValueError):
        return {}
    if not isinstance(data, dict) or str(data.get("engine", "")).lower() != engine.lower():
        return {}
    names = {str(m["id"]): name for name, m in data.get("markets", {}).items()}
    names.update({str(c["token"]).lower(): sym for sym, c in data.get("collaterals", {}).items()})
    return names


@bot.command("status")
@click.option("--db", "db_path", type=click.Path(dir_okay=False), default=None,
              help="the bot's SQLite database [XMARGIN_DB_PATH; default xmargin-bot.sqlite3, as for `bot run`]")
@deployment_option
@json_option
@click.option("--limit", type=click.IntRange(min=0), default=50, show_default=True,
              help="most recent liquidations to list (0 = all)")
@handle_errors
def status_cmd(db_path: str | None, limit: int) -> None:
    """The bot's liquidation history and totals: won and lost, rewards, gas. Markets and tokens are
    named from the deployment file (--deployment) when it belongs to the database's engine."""
    from bot.store import Store

    ctx = get_ctx()
    db_path = db_path or default_db_path()
    meta = _read_meta(Path(db_path))
    names = target_names(ctx.deployment_path or DEFAULT_DEPLOYMENT, meta["engine"])
    # No lock: the running bot keeps its own; this only reads (WAL lets both go on).
    with Store(db_path, int(meta["chain_id"]), meta["engine"], int(meta["deployment_block"]), lock=False) as store:
        history = store.liquidations()
        totals = store.totals()
        accounts = store.account_count()
        last_block = store.last_block
        pending = store.pending_txs()
    shown = history[-limit:] if limit else history
    rows = [{
        "block": r.block, "account": r.account, "kind": r.kind, "target": r.target,
        "target_name": names.get(str(r.target).lower()), "outcome": r.outcome,
        "reward_native": str(r.reward_native), "reward_usd_wad": str(r.reward_usd_wad),
        "gas_cost_wei": str(r.gas_cost_wei), "tx": r.tx_hash, "reason": r.reason,
    } for r in shown]
    out = {
        "chain_id": int(meta["chain_id"]), "engine": meta["engine"], "last_block": last_block,
        "accounts": accounts, "pending_txs": len(pending),
        "totals": {"won": totals.won, "lost": totals.lost, "reward_usd_wad": str(totals.reward_usd_wad),
                   "gas_cost_wei": str(totals.gas_cost_wei)},
        "liquidations": rows,
    }

    def human(console: Any) -> None:
        from rich.table import Table

        t = Table("block", "account", "kind", "target", "outcome", "reward (USD)", "gas (ETH)", "tx")
        for r in shown:
            t.add_row(str(r.block), r.account, r.kind, names.get(str(r.target).lower(), r.target), r.outcome, fmt_wad(r.reward_usd_wad),
                      _eth(r.gas_cost_wei), (r.tx_hash or "-")[:12] + ("…" if r.tx_hash else ""))
        console.print(t)
        console.print(
            f"engine {meta['engine']} on chain {meta['chain_id']}, last block {last_block}, {accounts} account(s), "
            f"{len(pending)} transaction(s) in flight\n"
            f"won {totals.won}, lost {totals.lost}, rewards {fmt_wad(totals.reward_usd_wad)} USD, "
            f"gas {_eth(totals.gas_cost_wei)} ETH"
        )

    ctx.emit(out, human)


# ---------------------------------------------------------------------- checks before the start


def check_before_start(cfg: Any, w3: Any, dep: Deployment, account: Any, *, collateral: bool) -> None:
    """Everything ``bot run`` can check before its first transaction, in one place, each failure
    one line (a ConfigError: exit 2): the metrics port is free, the database path is a writable
    SQLite database of this chain and engine (not held by another bot), the key is there unless
    it is a dry run, and the key holds the ETH for the quote-token approve the start sends."""
    from bot.errors import StoreError
    from bot.liquidator import APPROVE_GAS, needs_approve
    from bot.store import Store
    from bot.txs import strategy_from_config
    from protocol_model.deploy import contract_at

    if cfg.metrics_port is not None:
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
            try:
                probe.bind((cfg.metrics_addr, cfg.metrics_port))
            except OSError as exc:
                raise ConfigError(f"--metrics-port {cfg.metrics_port} cannot be opened on {cfg.metrics_addr} "
                                  f"({exc.strerror}): choose a free port or stop what listens there") from None

    path = Path(cfg.db_path)
    if path.is_dir():
        raise ConfigError(f"--db {path} is a directory: give a file path")
    folder = path.parent if str(path.parent) else Path(".")
    if not folder.is_dir():
        raise ConfigError(f"--db {path}: directory {folder} does not exist")
    if not os.access(folder, os.W_OK) or (path.exists() and not os.access(path, os.W_OK)):
        raise ConfigError(f"--db {path} is not writable: give a path the bot can write")
    if path.exists() and path.stat().st_size > 0:
        with open(path, "rb") as fh:
            if fh.read(16) != b"SQLite format 3\x00":
                raise ConfigError(f"--db {path} is not an SQLite database: give another path (or move it away)")
    anchor = w3.eth.get_block(dep.block)
    try:
        # Opens (or creates) it exactly as the bot will: the chain binding, the schema, the lock.
        Store(path, dep.chain_id, dep.engine, dep.block, deployment_block_hash=anchor["hash"]).close()
    except StoreError as exc:
        raise ConfigError(str(exc)) from None

    if cfg.dry_run:
        return
    if account is None:
        raise ConfigError("no signing key: set XMARGIN_PRIVATE_KEY or give --keystore, or use --dry-run")
    balance = int(w3.eth.get_balance(account.address))
    if balance == 0:
        raise ConfigError(f"the liquidator {account.address} has no ETH to pay gas: fund it first")
    if collateral:
        quote = contract_at(w3, "Token", dep.quote)
        allowance = int(quote.functions.allowance(account.address, dep.engine).call())
        if needs_approve(allowance):
            base_fee = int(w3.eth.get_block("latest").get("baseFeePerGas") or 0)
            cost = strategy_from_config(cfg).fees(base_fee, 0).worst_case_cost(APPROVE_GAS)
            if balance < cost:
                raise ConfigError(
                    f"the liquidator {account.address} holds {balance} wei, less than the {cost} wei the "
                    f"approve of {dep.quote_symbol} for collateral liquidations may cost: fund it, or use --no-collateral")


# ---------------------------------------------------------------------- helpers


def _scaled(text: str, option: str, scale: int) -> int:
    value = parse_decimal(text, option)
    if value < 0:
        raise ConfigError(f"{option} {text!r} must not be negative")
    scaled = value * scale
    if scaled != scaled.to_integral_value():
        raise ConfigError(f"{option} {text!r} has more decimals than the unit allows")
    return int(scaled)


def _eth(wei: int) -> str:
    return f"{Decimal(wei) / Decimal(ETHER):.6f}"


def _read_meta(path: Path) -> dict[str, str]:
    if not path.is_file():
        raise ConfigError(f"no bot database at {path}: give the --db the bot runs with")
    try:
        db = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
        try:
            rows = db.execute("SELECT key, value FROM meta").fetchall()
        finally:
            db.close()
    except sqlite3.DatabaseError as exc:
        raise ConfigError(f"{path} is not a bot database ({exc}): give the --db the bot runs with") from None
    meta = {str(k): str(v) for k, v in rows}
    if not {"chain_id", "engine", "deployment_block"} <= meta.keys():
        raise ConfigError(f"{path} is not a bot database (no chain binding): give the --db the bot runs with")
    return meta
