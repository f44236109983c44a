"""The live bot's defaults the simulators start from, read from their one home
(:class:`bot.config.BotConfig`), so that a changed bot default changes the simulations with it."""

from __future__ import annotations

from dataclasses import MISSING, fields
from typing import Any

from bot.config import BotConfig


def bot_default(name: str) -> Any:
    """The default of the bot setting ``name`` (a :class:`bot.config.BotConfig` field)."""
    for f in fields(BotConfig):
        if f.name == name and f.default is not MISSING:
            return f.default
    raise KeyError(f"BotConfig has no setting {name!r} with a default")


LIQUIDATION_GAS: int = bot_default("liquidation_gas_estimate")      # gas units per liquidation
MIN_PROFIT_USD_WAD: int = bot_default("min_profit_usd_wad")
LOST_RACE_BACKOFF_BLOCKS: int = bot_default("lost_race_backoff_blocks")

__all__ = ["LIQUIDATION_GAS", "LOST_RACE_BACKOFF_BLOCKS", "MIN_PROFIT_USD_WAD", "bot_default"]
