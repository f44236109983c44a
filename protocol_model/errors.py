"""Exceptions of the protocol_model package.

One root, :class:`XmarginError`, that every error raised on purpose inherits, so a caller (the CLI)
can turn any of them into a one-line message. Each also inherits the standard type it refines.
"""

from __future__ import annotations


class XmarginError(Exception):
    """Root of every error xmargin raises on purpose. Its message is one actionable line."""


class ConfigError(XmarginError, ValueError):
    """Bad user input: an address, a symbol, a parameter, a deployment file."""


class ChainError(XmarginError, ConnectionError):
    """The chain cannot be reached or answered something unusable."""


class LogRangeError(ChainError):
    """``eth_getLogs`` keeps failing with a provider limit even at the smallest allowed block range."""


class Revert(XmarginError):
    """An action the contract would revert, with the contract's reason string.

    The model raises it for exactly the inputs on which the contract reverts, with the same
    ``reason``; an arithmetic overflow the contract would hit carries the reason ``""``.
    """

    def __init__(self, reason: str) -> None:
        super().__init__(f"reverted: {reason}" if reason else "reverted")
        self.reason = reason
