"""Shared CLI plumbing: reusable options, the chain/deployment context, output, and the error
boundary that turns every expected error into one line on stderr and a meaningful exit code.

Exit codes: 0 success; 1 the operation failed (a revert, a failed check); 2 bad input (usage,
addresses, symbols, files); 3 the chain could not be reached or answered nonsense.
"""

from __future__ import annotations

import functools
import json
import logging
import os
import string
import sys
from dataclasses import dataclass, field
from decimal import Decimal, InvalidOperation
from pathlib import Path
from typing import Any, Callable, TypeVar

import click
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from web3 import Web3
from web3.exceptions import Web3RPCError

from protocol_model.chain import MEMORY, Sender, connect
from protocol_model.deploy import Deployment
from protocol_model.errors import ChainError, ConfigError, Revert, XmarginError
from protocol_model.wad import WAD

log = logging.getLogger(__name__)

EXIT_FAILED = 1
EXIT_BAD_INPUT = 2
EXIT_CHAIN = 3

DEFAULT_RPC = "http://127.0.0.1:8545"
DEFAULT_DEPLOYMENT = "deployment.json"

F = TypeVar("F", bound=Callable[..., Any])


@dataclass
class Context:
    """What every command needs: the options it was given and, lazily, a chain and a deployment."""

    rpc: str | None = None
    deployment_path: str | None = None
    as_json: bool = False
    w3: Web3 | None = None                       # injected by tests and by `xmargin demo`
    on_command_line: set[str] = field(default_factory=set)   # settings typed, not taken from the environment
    deployment: Deployment | None = None
    # Rich falls back to 80 columns off a terminal; logs and pipes get room for whole tables.
    console: Console = field(default_factory=lambda: Console(highlight=False, width=None if sys.stdout.isatty() else 160))

    def chain(self) -> Web3:
        if self.w3 is None:
            self.w3 = connect(self.rpc or DEFAULT_RPC)
        return self.w3

    def dep(self) -> Deployment:
        """The deployment file, checked against the node: its chain id, and code at its engine."""
        if self.deployment is None:
            path = self.deployment_path or DEFAULT_DEPLOYMENT
            deployment = Deployment.load(path, self.chain())
            require_engine(self.chain(), deployment)
            self.deployment = deployment
        elif self.deployment.w3 is None:
            self.deployment.bind(self.chain())
            require_engine(self.chain(), self.deployment)
        return self.deployment

    def sender(self, keystore: str | None = None, password_file: str | None = None) -> Sender:
        """A key from --keystore or XMARGIN_PRIVATE_KEY, else the node's first unlocked account."""
        w3 = self.chain()
        if keystore or os.environ.get("XMARGIN_PRIVATE_KEY"):
            from bot.keys import load_account

            return Sender.from_key(w3, load_account(keystore, password_file))
        return Sender.unlocked(w3, 0)

    def emit(self, data: Any, human: Callable[[Console], None]) -> None:
        """Print ``data`` as one JSON document with --json, else render it for people."""
        if self.as_json:
            click.echo(json.dumps(data, indent=2, default=_json_default))
        else:
            human(self.console)


def require_engine(w3: Web3, deployment: Deployment) -> None:
    """Refuse a deployment whose engine has no code on the node (one ``eth_getCode``): a node
    restarted since ``xmargin deploy`` (same chain id, empty chain) or a file from another chain
    that happens to share its chain id. Raises :class:`ConfigError` (exit code 2)."""
    if not bytes(w3.eth.get_code(Web3.to_checksum_address(deployment.engine))):
        raise ConfigError(f"no engine at {deployment.engine} on this chain: was the node restarted? "
                          "redeploy with `xmargin deploy --force`")


def _json_default(obj: Any) -> Any:
    if isinstance(obj, (bytes, bytearray)):
        return "0x" + bytes(obj).hex()
    if isinstance(obj, Decimal):
        return str(obj)
    raise TypeError(f"not JSON serialisable: {type(obj).__name__}")


def get_ctx() -> Context:
    ctx = click.get_current_context()
    obj = ctx.find_object(Context)
    if obj is None:
        obj = ctx.ensure_object(Context)
    return obj


def _store(name: str) -> Callable[[click.Context, click.Parameter, Any], Any]:
    def callback(ctx: click.Context, _param: click.Parameter, value: Any) -> Any:
        obj = ctx.find_object(Context) or ctx.ensure_object(Context)
        if value is not None and value is not False:
            setattr(obj, name, value)
            if ctx.get_parameter_source(_param.name or name) == click.core.ParameterSource.COMMANDLINE:
                obj.on_command_line.add(name)
        return value

    return callback


# One spelling per setting: the environment variables are the bot's (bot.config.BotConfig), for every command.
RPC_ENV = "XMARGIN_RPC_URL"
DEPLOYMENT_ENV = "XMARGIN_DEPLOYMENT_PATH"
# Spellings of earlier versions: refused with the new name rather than silently ignored.
RENAMED_ENV = {"XMARGIN_RPC": RPC_ENV, "XMARGIN_DEPLOYMENT": DEPLOYMENT_ENV}

rpc_option = click.option(
    "--rpc", envvar=RPC_ENV, expose_value=False, callback=_store("rpc"), is_eager=True,
    help=f"JSON-RPC URL of the node, or 'memory' for an in-process chain [env {RPC_ENV}; default {DEFAULT_RPC}]",
)
deployment_option = click.option(
    "--deployment", envvar=DEPLOYMENT_ENV, expose_value=False, callback=_store("deployment_path"),
    type=click.Path(dir_okay=False), help=f"deployment file written by 'xmargin deploy' [env {DEPLOYMENT_ENV}; default {DEFAULT_DEPLOYMENT}]",
)


def check_renamed_env() -> None:
    """One line (exit 2) for an environment variable of an earlier version, naming its new spelling."""
    for old, new in RENAMED_ENV.items():
        if old in os.environ and new not in os.environ:
            raise ConfigError(f"{old} is no longer read: rename it to {new} (the same variable for every command)")
json_option = click.option(
    "--json", "as_json", is_flag=True, expose_value=False, callback=_store("as_json"),
    help="print one JSON document for scripts instead of tables",
)


def common_options(f: F) -> F:
    """--rpc, --deployment and --json, on every command."""
    return rpc_option(deployment_option(json_option(f)))  # type: ignore[return-value]


def handle_errors(f: F) -> F:
    """Turn expected errors into one line on stderr and an exit code; never a traceback."""

    @functools.wraps(f)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return f(*args, **kwargs)
        except click.exceptions.Exit:
            raise
        except click.ClickException:
            raise
        except ChainError as exc:
            fail(str(exc), EXIT_CHAIN)
        except Revert as exc:
            fail(f"transaction reverted: {exc.reason or 'no reason given'}", EXIT_FAILED)
        except ConfigError as exc:
            fail(str(exc), EXIT_BAD_INPUT)
        except ValueError as exc:
            # KeyLoadError and the bot's other input errors are ValueErrors of the xmargin family.
            if not isinstance(exc, XmarginError):
                raise
            fail(str(exc), EXIT_BAD_INPUT)
        except XmarginError as exc:
            fail(str(exc), EXIT_FAILED)
        except Web3RPCError as exc:
            # The node refused a request (a transaction it will not take, a call it cannot serve).
            error = (exc.rpc_response or {}).get("error") if isinstance(exc.rpc_response, dict) else None
            message = error.get("message") if isinstance(error, dict) else None
            fail(f"the node refused the request: {message or exc}", EXIT_FAILED)
        except OSError as exc:
            if exc.filename is not None and not isinstance(exc, (ConnectionError, TimeoutError)):
                # A local file (a path the user gave): not the node.
                fail(f"cannot use {exc.filename}: {exc.strerror or exc}", EXIT_BAD_INPUT)
            fail(f"cannot reach the node: {type(exc).__name__}: {exc}. Is it running? start one with 'xmargin node'", EXIT_CHAIN)

    return wrapper  # type: ignore[return-value]


def fail(message: str, code: int) -> None:
    first = message.strip().splitlines()[0] if message.strip() else "failed"
    click.echo(f"error: {first}", err=True)
    sys.exit(code)


# ------------------------------------------------------------------ parsing helpers


def parse_address(value: str, what: str = "address") -> str:
    """A 0x-prefixed 20-byte hex address; in mixed case it must carry a valid EIP-55 checksum (a
    typo in a checksummed address is caught), in one case it is taken as it is."""
    body = value[2:] if isinstance(value, str) and value.startswith("0x") else ""
    if len(body) != 40 or any(c not in string.hexdigits for c in body):
        raise ConfigError(f"invalid {what} {value!r}: expected a 0x-prefixed 20-byte hex address")
    if body != body.lower() and body != body.upper() and not Web3.is_checksum_address(value):
        raise ConfigError(f"invalid {what} {value!r}: its mixed-case checksum (EIP-55) is wrong; check for a typo "
                          "(or give it all in lower case)")
    return Web3.to_checksum_address(value)


def parse_decimal(value: str, what: str) -> Decimal:
    try:
        d = Decimal(value.replace("_", "").replace(",", ""))
    except (InvalidOperation, AttributeError):
        raise ConfigError(f"invalid {what} {value!r}: expected a number such as 1800 or 1800.5") from None
    if not d.is_finite():
        raise ConfigError(f"invalid {what} {value!r}: expected a finite number")
    return d


def parse_percent(value: str) -> int:
    """'-15%' or '-0.15' -> signed WAD fraction (-15% = -15 * 10**16)."""
    text = value.strip()
    if text.endswith("%"):
        d = parse_decimal(text[:-1], "percentage") / 100
    else:
        d = parse_decimal(text, "fraction")
    if d <= -1:
        raise ConfigError(f"invalid shock {value!r}: a price cannot fall by 100% or more")
    return int(d * WAD)


def parse_shocks(values: tuple[str, ...]) -> tuple[tuple[str, int], ...]:
    """``("ETH=-20%", "BTC-PERP=-10%,WETH=5%")`` -> ``(("ETH", -2e17), ("BTC", -1e17), ("WETH", 5e16))``:
    price moves by feed asset (upper case, a market's ``-PERP`` suffix dropped) as signed WAD fractions.
    The one parser of ``--shock`` for every command; an asset given twice is refused."""
    out: dict[str, int] = {}
    for value in values:
        for item in filter(None, (p.strip() for p in value.split(","))):
            asset, sep, change = item.partition("=")
            asset = asset.strip().upper().removesuffix("-PERP")
            if not sep or not asset or not change.strip():
                raise ConfigError(f"invalid shock {item!r}: write ASSET=CHANGE, e.g. --shock ETH=-20%")
            if asset in out:
                raise ConfigError(f"invalid shock {item!r}: {asset} is given twice")
            out[asset] = parse_percent(change)
    if not out:
        raise ConfigError("no shock given: write e.g. --shock ETH=-20%")
    return tuple(out.items())


def check_writable_file(value: str, option: str) -> Path:
    """A path a command will write a file to, checked before the work: not a folder, its folder
    exists (none is created) and takes a file. Raises :class:`ConfigError` (exit 2)."""
    path = Path(value)
    if path.is_dir():
        raise ConfigError(f"{option} {path} is a folder: give a file path")
    folder = path.parent
    if not folder.is_dir():
        raise ConfigError(f"{option} {path}: folder {folder} does not exist")
    if not os.access(folder, os.W_OK) or (path.exists() and not os.access(path, os.W_OK)):
        raise ConfigError(f"{option} {path} is not writable: give a path you can write")
    return path


def check_output_folder(value: str, option: str) -> Path:
    """A folder a command will write files into, checked before the work: a folder, or a new one
    whose parent exists (only the last level is created, never a tree). Raises ConfigError (exit 2)."""
    path = Path(value)
    if path.exists() and not path.is_dir():
        raise ConfigError(f"{option} {path} is a file: give a folder")
    if not path.exists() and not path.parent.is_dir():
        raise ConfigError(f"{option} {path}: folder {path.parent} does not exist")
    if not os.access(path if path.exists() else path.parent, os.W_OK):
        raise ConfigError(f"{option} {path} is not writable: give a folder you can write")
    return path


def progress_bar(label: str, console: Console) -> Progress:
    """A transient progress bar on a terminal; nothing at all in a pipe or a log (not even a blank line)."""
    return Progress(TextColumn(label), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(), console=console,
                    transient=True, disable=not console.is_terminal)


def wad_str(x: int) -> str:
    """Exact decimal string of a WAD integer, for JSON (integers beyond 2**53 lose precision in JS)."""
    return str(x)
