"""The protocol's Vyper 0.4.3 sources, shipped inside the wheel as package data.

Nothing here is compiled at install time: :func:`protocol_model.deploy.compile_contracts` compiles
these sources with the installed ``vyper`` the first time a process needs them. This package
imports nothing of the project; everything else may import it.

``XMARGIN_CONTRACTS_DIR`` points at another folder of sources instead (a contract change tested
from a copy before it replaces these).
"""

from __future__ import annotations

import os
from pathlib import Path

#: The contracts the protocol deploys, by file stem.
NAMES: tuple[str, ...] = ("MarginEngine", "PriceFeed", "Token", "Lens")


def sources_dir() -> Path:
    """The folder holding ``<name>.vy`` for every name in :data:`NAMES`."""
    override = os.environ.get("XMARGIN_CONTRACTS_DIR")
    return Path(override) if override else Path(__file__).resolve().parent


def source(name: str) -> str:
    """The Vyper source of contract ``name`` (e.g. ``"MarginEngine"``)."""
    return (sources_dir() / f"{name}.vy").read_text()
