"""Simulations for researchers: liquidator competition (:mod:`simulator.competition`), the stress
engine (:mod:`simulator.stress`); the bot defaults they start from (:mod:`simulator.defaults`).

May import ``protocol_model``, ``bot`` and ``devnode``; nothing of the project imports it but the
CLI.
"""
