"""Exceptions of the liquidation bot.

One root, :class:`BotError`, under the project root :class:`~protocol_model.errors.XmarginError`,
so the CLI can turn any error raised on purpose into one actionable line. Each error also inherits
the standard type it refines (``ValueError`` for bad input, ``ConnectionError`` for the node), as
web3.py's own exceptions do, so generic callers can still catch them by kind.

Messages never contain a private key or a keystore password.
"""

from __future__ import annotations

from protocol_model.errors import ConfigError as _ProtocolConfigError
from protocol_model.errors import LogRangeError, XmarginError


class BotError(XmarginError):
    """Root of every error the bot raises on purpose. Its message is one actionable line."""


class BotConfigError(BotError, _ProtocolConfigError):
    """A bad bot setting. Also a :class:`protocol_model.errors.ConfigError` (and a ``ValueError``)."""


class KeyLoadError(BotError, ValueError):
    """The signing key cannot be loaded: missing or malformed keystore, wrong password, bad key."""


class RpcError(BotError, ConnectionError):
    """The node failed to answer (after retries), or answered something unusable."""


class CircuitOpen(RpcError):
    """The RPC circuit breaker is open after repeated failures: no request is sent until it cools down.

    ``retry_in_s`` says how many seconds remain until the breaker lets a trial request through.
    """

    def __init__(self, message: str, retry_in_s: float = 0.0) -> None:
        super().__init__(message)
        self.retry_in_s = retry_in_s


class StaleHead(RpcError):
    """The node's head has not advanced for longer than the configured stale-head limit."""


class StoreError(BotError, RuntimeError):
    """The bot's SQLite state cannot be used: another chain or engine, a newer schema, a broken file."""


class TxError(BotError):
    """The node refused a transaction (not a revert: those are results, not errors).

    ``kind`` says why: ``"nonce_low"``, ``"nonce_high"``, ``"underpriced"``, ``"fee_too_low"``, ``"circuit_open"``
    or ``"other"``.
    """

    def __init__(self, message: str, kind: str = "other") -> None:
        super().__init__(message)
        self.kind = kind


__all__ = ["BotConfigError", "BotError", "CircuitOpen", "KeyLoadError", "LogRangeError", "RpcError", "StaleHead",
           "StoreError", "TxError"]
