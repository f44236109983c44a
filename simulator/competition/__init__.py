"""Liquidator competition simulator: K bots with their own keys and strategies race for the
liquidations a price shock creates, on a local node (:mod:`.onchain`) or on the exact model
(:mod:`.offchain`), with the same agents, ordering and tie-breaks (:mod:`.agents`); results in
:mod:`.report`. The command line is ``xmargin simulate competition``. The off-chain mode's built-in
gas table (:mod:`.gas_table`) is measured on the contracts by ``python -m simulator.competition.calibrate``."""

from .agents import AgentSpec, Scenario, SimSettings, parse_strategies
from .report import BotResult, CompetitionReport, Liquidated, SweepPoint, plot

__all__ = [
    "AgentSpec",
    "BotResult",
    "CompetitionReport",
    "Liquidated",
    "Scenario",
    "SimSettings",
    "SweepPoint",
    "parse_strategies",
    "plot",
]
