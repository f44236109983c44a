"""Simulations for researchers: liquidator competition (:mod:`simulator.competition`).

May import ``protocol_model``, ``bot`` and ``devnode``; nothing of the project imports it but the
CLI.
"""
