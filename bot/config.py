"""Typed settings of the liquidation bot, read from the environment with a prefix.

Every setting is a field of the frozen dataclass :class:`BotConfig`, with its unit in the field
name (``_s`` seconds, ``_wei``, ``_wad``, ``_blocks``) and a help string. ``BotConfig.from_env()``
reads ``XMARGIN_<FIELD>`` for each field (``XMARGIN_POLL_INTERVAL_S=2``), then applies keyword
overrides (the CLI's options). A bad value raises :class:`~bot.errors.ConfigError` with one line
that names the variable and says what is allowed.

Money values stay integers. Environment strings are converted exactly, without floats:

* wei amounts: an integer number of wei, or a decimal with a unit: ``"1.5gwei"``, ``"2 gwei"``,
  ``"0.01eth"``;
* WAD fractions: an integer WAD, or a percentage: ``"12.5%"``;
* USD WAD amounts: an integer WAD, or a decimal with ``usd``: ``"2.5usd"``.

The signing key is not a setting: it comes from a keystore (``keystore_path``, password file or
``XMARGIN_KEYSTORE_PASSWORD``) or ``XMARGIN_PRIVATE_KEY``, read by :mod:`bot.keys` only.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from decimal import Decimal, Inexact, localcontext
from typing import Any
from urllib.parse import urlsplit

from protocol_model.loader import LENS_MAX_BATCH
from protocol_model.logscan import DEFAULT_LOG_CHUNK, DEFAULT_MAX_LOG_CHUNK
from protocol_model.wad import ETHER, GWEI, MAX_ORDERS, WAD

from .errors import BotConfigError

log = logging.getLogger(__name__)

ENV_PREFIX = "XMARGIN_"
MIN_REPLACEMENT_BUMP_WAD = 125 * 10**15  # 12.5 %: what geth/erigon/nethermind require, and more
GAS_STRATEGIES = ("fixed", "profit_share")
PREFLIGHTS = ("auto", "model", "node")
START_CHECKS = ("full", "sample", "off")

# Parse kinds (field metadata "kind").
_STR, _OPT_STR, _INT, _FLOAT, _BOOL, _WEI, _WAD, _USD_WAD, _OPT_PORT = (
    "str", "optional str", "int", "float", "bool", "wei", "wad", "usd_wad", "optional port",
)


def _setting(default: Any, kind: str, help: str, **kwargs: Any) -> Any:
    return field(default=default, metadata={"kind": kind, "help": help}, **kwargs)


@dataclass(frozen=True)
class BotConfig:
    """Every setting of the bot. Build it with :meth:`from_env`; it validates itself on creation."""

    # connection ----------------------------------------------------------
    rpc_url: str = _setting(
        "http://127.0.0.1:8545", _STR,
        "JSON-RPC URL of the node (http:// or https://), or 'memory' for an in-process chain",
        repr=False,  # provider URLs often embed an API key
    )
    rpc_timeout_s: float = _setting(10.0, _FLOAT, "seconds before one HTTP request to the node times out")
    deployment_path: str = _setting("deployment.json", _STR, "path of the deployment file written by 'xmargin deploy'")
    db_path: str = _setting("xmargin-bot.sqlite3", _STR, "path of the bot's SQLite state database")
    keystore_path: str | None = _setting(None, _OPT_STR, "encrypted keystore JSON of the liquidator key (else XMARGIN_PRIVATE_KEY)")
    keystore_password_file: str | None = _setting(
        None, _OPT_STR, "file holding the keystore password (else XMARGIN_KEYSTORE_PASSWORD)"
    )

    # loop ----------------------------------------------------------------
    poll_interval_s: float = _setting(1.0, _FLOAT, "seconds between two polls of the node's head")
    lens_batch_size: int = _setting(100, _INT, "accounts read per lens eth_call")
    max_failed_ticks: int = _setting(20, _INT, "consecutive failed ticks after which the bot stops")
    stale_head_s: float = _setting(60.0, _FLOAT, "seconds without a new block after which the head is reported stale")

    # strategy ------------------------------------------------------------
    min_profit_usd_wad: int = _setting(
        WAD, _USD_WAD, "least expected profit (USD, WAD-scaled; or e.g. '2.5usd') for which a liquidation is sent"
    )
    lost_race_backoff_blocks: int = _setting(20, _INT, "blocks an account is left alone after a rival liquidated it first")
    max_batch_orders: int = _setting(
        16, _INT, "liquidations sent in one liquidate_many transaction (1..32; 1 sends each as its own liquidate call)"
    )
    max_batch_gas: int = _setting(
        15_000_000, _INT, "gas limit of one liquidate_many transaction: it holds at most this / liquidation_gas_estimate "
        "orders (gas units; half a 30M block by default)"
    )
    preflight: str = _setting(
        "auto", _STR, "what checks a transaction before it is sent: 'model' (the mirror's exact model, the whole tick "
        "in order, no RPC), 'node' (an eth_call per transaction) or 'auto' (the model when the mirror is exactly at "
        "the head it acts on, else the node)"
    )

    # gas -----------------------------------------------------------------
    gas_strategy: str = _setting("fixed", _STR, "priority fee strategy: 'fixed' (fixed_tip_wei) or 'profit_share' (profit_share_wad)")
    fixed_tip_wei: int = _setting(GWEI, _WEI, "priority fee per gas of the 'fixed' strategy (wei; or e.g. '1.5gwei')")
    profit_share_wad: int = _setting(
        WAD // 10, _WAD, "share of the expected profit paid as priority fee by 'profit_share' (WAD fraction; or e.g. '10%')"
    )
    min_tip_wei: int = _setting(0, _WEI, "least priority fee per gas of the 'profit_share' strategy (wei; or e.g. '0.1gwei')")
    liquidation_gas_estimate: int = _setting(
        500_000, _INT, "gas a liquidation is assumed to use when the tip and the cost are estimated (gas units)"
    )
    max_fee_cap_wei: int = _setting(500 * GWEI, _WEI, "highest max fee per gas ever offered, replacements included (wei; or e.g. '300gwei')")
    replacement_bump_wad: int = _setting(
        MIN_REPLACEMENT_BUMP_WAD, _WAD, "fee increase of a replacement transaction (WAD fraction, at least 12.5%; or e.g. '20%')"
    )
    stuck_after_blocks: int = _setting(3, _INT, "blocks a transaction may stay pending before it is replaced with higher fees")

    # chain reading -------------------------------------------------------
    lookback_blocks: int = _setting(12, _INT, "blocks re-read on every scan so that a reorg cannot leave stale state (reorg window)")
    log_chunk_initial_blocks: int = _setting(DEFAULT_LOG_CHUNK, _INT, "initial block range of one eth_getLogs request")
    log_chunk_min_blocks: int = _setting(1, _INT, "smallest block range the log scanner shrinks to on provider limits")
    log_chunk_max_blocks: int = _setting(DEFAULT_MAX_LOG_CHUNK, _INT, "largest block range the log scanner grows to")

    # RPC resilience ------------------------------------------------------
    rpc_retries: int = _setting(3, _INT, "retries of a request after a transient failure (connection, timeout, 429, 5xx)")
    rpc_backoff_s: float = _setting(0.5, _FLOAT, "seconds before the first retry; doubled on each further retry")
    rpc_backoff_max_s: float = _setting(8.0, _FLOAT, "longest wait between two retries (seconds)")
    breaker_threshold: int = _setting(5, _INT, "consecutive failed requests that open the RPC circuit breaker")
    breaker_cooldown_s: float = _setting(30.0, _FLOAT, "seconds the open circuit breaker waits before a trial request")

    # modes and observability ---------------------------------------------
    dry_run: bool = _setting(False, _BOOL, "decide and log liquidations but never sign or send them")
    backstop: bool = _setting(
        False, _BOOL,
        "the protocol operator's keeper: also closes bankrupt accounts whose keeper reward does not cover "
        "the gas and the minimum profit (dust), at a loss, and settles bad debt no liquidation settled",
    )
    metrics_port: int | None = _setting(None, _OPT_PORT, "TCP port of the Prometheus endpoint (unset or 'off' = no endpoint)")
    metrics_addr: str = _setting("127.0.0.1", _STR, "address the Prometheus endpoint listens on")

    # oracle backrun (bot/backrun.py) ---------------------------------------
    backrun: bool = _setting(
        True, _BOOL, "liquidate in the block of a pending price update, right after it (off by itself where the "
        "node has no pending-transaction filter)"
    )
    pending_poll_interval_s: float = _setting(
        0.1, _FLOAT, "seconds between two reads of the node's pending transactions while backrunning (HTTP polling)"
    )

    # start-up (issue 12) ---------------------------------------------------
    start_check: str = _setting(
        "sample", _STR, "after a start from logs or the snapshot, compare the mirror with the Lens: 'full' (every "
        "account, lens_batch_size per block), 'sample' (start_check_accounts random accounts, then everything if one "
        "differs) or 'off'; a difference is logged as an error and repaired from the Lens",
    )
    start_check_accounts: int = _setting(
        50, _INT, "accounts the 'sample' start check compares with the Lens, in the first block after the start"
    )
    snapshot_every_blocks: int = _setting(
        100, _INT, "blocks between two snapshots of the mirror in the database (also written at start and shutdown)"
    )

    # subscriptions -------------------------------------------------------
    ws_url: str = _setting(
        "auto", _STR,
        "WebSocket for pushed heads: 'auto' (ws:// on the RPC URL's host and port, tried once at start; "
        "polling if refused), 'off' (poll over HTTP), or a ws:// or wss:// URL",
        repr=False,  # like rpc_url: may embed an API key
    )

    # ------------------------------------------------------------------ validation

    def __post_init__(self) -> None:
        for f in dataclasses.fields(self):
            _check_type(f.name, f.metadata["kind"], getattr(self, f.name))
        problems = self._problems()
        if problems:
            name, problem = problems[0]
            raise InvalidSetting(name, problem, getattr(self, name))

    def _problems(self) -> list[tuple[str, str]]:
        out: list[tuple[str, str]] = []

        def need(ok: bool, name: str, problem: str) -> None:
            if not ok:
                out.append((name, problem))

        url = self.rpc_url
        need(url == "memory" or url.startswith(("http://", "https://")), "rpc_url",
             "must be an http:// or https:// URL, or 'memory'")
        for name in ("rpc_timeout_s", "poll_interval_s", "stale_head_s", "breaker_cooldown_s", "pending_poll_interval_s"):
            need(getattr(self, name) > 0, name, "must be > 0 seconds")
        for name in ("rpc_backoff_s", "rpc_backoff_max_s"):
            need(getattr(self, name) >= 0, name, "must be >= 0 seconds")
        need(self.rpc_backoff_max_s >= self.rpc_backoff_s, "rpc_backoff_max_s", "must be >= rpc_backoff_s")
        for name in ("lens_batch_size", "max_failed_ticks", "breaker_threshold", "liquidation_gas_estimate",
                     "stuck_after_blocks", "log_chunk_min_blocks", "max_batch_orders"):
            need(getattr(self, name) >= 1, name, "must be >= 1")
        for name in ("rpc_retries", "lookback_blocks", "lost_race_backoff_blocks", "min_tip_wei", "fixed_tip_wei"):
            need(getattr(self, name) >= 0, name, "must be >= 0")
        need(self.min_profit_usd_wad >= 0, "min_profit_usd_wad", "must be >= 0 (USD WAD)")
        need(self.lens_batch_size <= LENS_MAX_BATCH, "lens_batch_size", f"must be at most {LENS_MAX_BATCH} (the Lens's limit)")
        need(self.max_batch_orders <= MAX_ORDERS, "max_batch_orders", f"must be at most {MAX_ORDERS} (the engine's limit)")
        need(self.max_batch_gas >= self.liquidation_gas_estimate, "max_batch_gas",
             "must be at least liquidation_gas_estimate (one order)")
        need(self.preflight in PREFLIGHTS, "preflight", f"must be one of {', '.join(PREFLIGHTS)}")
        need(self.gas_strategy in GAS_STRATEGIES, "gas_strategy", f"must be one of {', '.join(GAS_STRATEGIES)}")
        need(0 <= self.profit_share_wad <= WAD, "profit_share_wad", "must be between 0 and 100% (0 and 10**18)")
        need(self.max_fee_cap_wei >= 1, "max_fee_cap_wei", "must be >= 1 wei")
        need(self.fixed_tip_wei <= self.max_fee_cap_wei, "fixed_tip_wei", "must not exceed max_fee_cap_wei")
        need(self.min_tip_wei <= self.max_fee_cap_wei, "min_tip_wei", "must not exceed max_fee_cap_wei")
        need(self.replacement_bump_wad >= MIN_REPLACEMENT_BUMP_WAD, "replacement_bump_wad",
             "must be at least 12.5% (125000000000000000): nodes reject smaller replacement bumps")
        need(self.replacement_bump_wad <= 10 * WAD, "replacement_bump_wad", "must be at most 1000%")
        need(self.log_chunk_min_blocks <= self.log_chunk_initial_blocks <= self.log_chunk_max_blocks,
             "log_chunk_initial_blocks", "must lie between log_chunk_min_blocks and log_chunk_max_blocks")
        need(self.metrics_port is None or 1 <= self.metrics_port <= 65535, "metrics_port", "must be 1..65535 or 'off'")
        need(self.start_check in START_CHECKS, "start_check", f"must be one of {', '.join(START_CHECKS)}")
        need(self.start_check_accounts >= 1, "start_check_accounts", "must be >= 1")
        need(self.snapshot_every_blocks >= 1, "snapshot_every_blocks", "must be >= 1")
        need(self.ws_url.lower() in ("auto", "off") or (self.ws_url.startswith(("ws://", "wss://"))
                                                         and len(self.ws_url.split("//", 1)[1]) > 0),
             "ws_url", "must be 'auto', 'off' or a ws:// or wss:// URL")
        return out

    # ------------------------------------------------------------------ loading

    @classmethod
    def from_env(
        cls, prefix: str = ENV_PREFIX, environ: Mapping[str, str] | None = None, **overrides: Any
    ) -> "BotConfig":
        """Defaults, then ``{prefix}{FIELD}`` environment variables, then ``overrides``.

        ``environ`` defaults to ``os.environ``. An override of ``None`` is ignored for settings
        that cannot be ``None`` (so unset CLI options fall through); override strings are parsed
        like environment values. Raises :class:`BotConfigError` naming the bad variable.
        """
        env = os.environ if environ is None else environ
        fields = {f.name: f for f in dataclasses.fields(cls)}
        unknown = sorted(set(overrides) - set(fields))
        if unknown:
            raise BotConfigError(f"unknown bot setting {unknown[0]!r}: known settings are {', '.join(fields)}")
        values: dict[str, Any] = {}
        for name, f in fields.items():
            kind = f.metadata["kind"]
            var = prefix + name.upper()
            if var in env:
                values[name] = _parse(var, kind, env[var])
            if name in overrides:
                value = overrides[name]
                if value is None and kind not in (_OPT_STR, _OPT_PORT):
                    continue
                values[name] = _parse(name, kind, value) if isinstance(value, str) else value
        try:
            return cls(**values)
        except InvalidSetting as exc:
            source = exc.name if exc.name in overrides else prefix + exc.name.upper()
            raise BotConfigError(f"{source}={exc.shown}: {exc.problem}") from None

    # ------------------------------------------------------------------ description

    @classmethod
    def settings_help(cls, prefix: str = ENV_PREFIX) -> list[tuple[str, str, str]]:
        """``(environment variable, default, help)`` for every setting, for ``--help`` and docs."""
        out = []
        for f in dataclasses.fields(cls):
            out.append((prefix + f.name.upper(), repr(f.default), f.metadata["help"]))
        return out

    def summary(self) -> dict[str, Any]:
        """The settings as a dict safe to log: the RPC URL is shown without path, query or credentials."""
        out = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}
        out["rpc_url"] = redact_url(self.rpc_url)
        out["ws_url"] = redact_url(self.ws_url) if "//" in self.ws_url else self.ws_url
        return out

    def replace(self, **changes: Any) -> "BotConfig":
        """A copy with ``changes`` applied (and validated)."""
        try:
            return dataclasses.replace(self, **changes)
        except InvalidSetting as exc:
            raise BotConfigError(f"{exc.name}={exc.shown}: {exc.problem}") from None


class InvalidSetting(BotConfigError):
    """A setting that fails validation; knows the field, so ``from_env`` can name its variable."""

    def __init__(self, name: str, problem: str, value: Any = None) -> None:
        shown = "<redacted>" if name in ("rpc_url", "ws_url") else repr(value)
        super().__init__(f"{name}={shown} ({ENV_PREFIX}{name.upper()}): {problem}")
        self.name = name
        self.problem = problem
        self.shown = shown


def redact_url(url: str) -> str:
    """``scheme://host[:port]`` of ``url``: provider URLs often carry an API key in the path or query."""
    if url == "memory":
        return url
    try:
        parts = urlsplit(url)
        host = parts.hostname or "?"
        port = f":{parts.port}" if parts.port else ""
    except ValueError:
        return "<unparseable url>"
    suffix = "/…" if (parts.path not in ("", "/") or parts.query or parts.username) else ""
    return f"{parts.scheme}://{host}{port}{suffix}"


# ---------------------------------------------------------------------- parsing

_WEI_UNITS = {"wei": 1, "gwei": GWEI, "eth": ETHER, "ether": ETHER}
_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"0", "false", "no", "off"}


def _parse(source: str, kind: str, raw: str) -> Any:
    text = raw.strip()
    try:
        if kind == _STR:
            return text
        if kind == _OPT_STR:
            return text or None
        if kind == _INT:
            return int(text)
        if kind == _FLOAT:
            value = float(text)
            if not math.isfinite(value):
                raise ValueError(text)
            return value
        if kind == _BOOL:
            low = text.lower()
            if low in _TRUE:
                return True
            if low in _FALSE:
                return False
            raise ValueError(text)
        if kind == _OPT_PORT:
            if text.lower() in ("", "off", "none", "0"):
                return None
            return int(text)
        if kind == _WEI:
            return parse_wei(text)
        if kind == _WAD:
            if text.endswith("%"):
                return _scaled(text[:-1], WAD, 100)
            return int(text)
        if kind == _USD_WAD:
            low = text.lower()
            if low.endswith("usd"):
                return _scaled(low[:-3], WAD)
            return int(text)
    except (ValueError, ArithmeticError):
        raise BotConfigError(f"{source}={raw!r} is not {_EXPECTED[kind]}") from None
    raise BotConfigError(f"{source}: unknown setting kind {kind}")  # dev: every kind is handled above


_EXPECTED = {
    _STR: "a string",
    _OPT_STR: "a string",
    _INT: "an integer",
    _FLOAT: "a number",
    _BOOL: "a boolean (true/false, 1/0, yes/no, on/off)",
    _OPT_PORT: "a TCP port number or 'off'",
    _WEI: "an amount of wei: an integer, or a decimal with a unit such as '1.5gwei'",
    _WAD: "a WAD fraction: an integer (10**18 = 100%) or a percentage such as '12.5%'",
    _USD_WAD: "a USD amount: an integer WAD or a decimal such as '2.5usd'",
}


def parse_wei(text: str) -> int:
    """An amount of wei: ``'1000'``, ``'1.5gwei'``, ``'0.01 ether'`` -> wei, exactly. Raises
    ``ValueError`` for anything else, a fraction of a wei included (the one wei parser: the bot's
    settings and the simulator's tips)."""
    return _decimal_with_unit(text.strip(), _WEI_UNITS, default_unit="wei")


def _decimal_with_unit(text: str, units: Mapping[str, int], default_unit: str) -> int:
    low = text.lower().replace("_", "")
    for unit in sorted(units, key=len, reverse=True):
        if low.endswith(unit):
            return _scaled(low[: -len(unit)], units[unit])
    return _scaled(low, units[default_unit])


def _scaled(number: str, scale: int, divisor: int = 1) -> int:
    """``number * scale / divisor`` computed exactly; a fractional result (``'0.5wei'``) is an error."""
    with localcontext() as ctx:
        ctx.prec = 200
        ctx.traps[Inexact] = True
        value = Decimal(number.strip()) * scale / divisor
        if not value.is_finite() or value != value.to_integral_value():
            raise ValueError(number)
        return int(value)


def _check_type(name: str, kind: str, value: Any) -> None:
    ok: bool
    if kind == _STR:
        ok = isinstance(value, str)
    elif kind == _OPT_STR:
        ok = value is None or isinstance(value, str)
    elif kind == _FLOAT:
        ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
    elif kind == _BOOL:
        ok = isinstance(value, bool)
    elif kind == _OPT_PORT:
        ok = value is None or (isinstance(value, int) and not isinstance(value, bool))
    else:  # integers, wei, WAD: never floats on money paths
        ok = isinstance(value, int) and not isinstance(value, bool)
    if not ok:
        raise InvalidSetting(name, f"must be {_EXPECTED[kind]}, got {type(value).__name__}", value)
