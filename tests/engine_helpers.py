"""Helpers shared by the MarginEngine contract tests (``tests/integration/test_engine_*.py``) and the
contract invariant tests (``tests/fuzz/test_engine_invariants.py``).

Two kinds: exact integer arithmetic for the expected values, and small chain helpers over the
``Protocol`` handle of ``tests/conftest.py`` (which keeps the fixtures; these are plain functions).

Independence from the model: the engine tests are an oracle of the contract that does not go
through ``protocol_model``, so the arithmetic below is deliberately written again here instead of
imported from ``protocol_model/wad.py`` (and the market parameters are spelled out instead of read
from ``protocol_model.deploy.DeployConfig``). A rounding mistake shared by the model and the
contract must not be able to make these tests agree with both. Python's ``//`` floors, which is
what the spec's floor means; ceil is ``-((-a) // b)``.
"""

from __future__ import annotations

import functools
from typing import Any, Callable

import pytest
from web3.logs import DISCARD

from protocol_model.deploy import deploy_contract
from protocol_model.errors import Revert

WAD = 10**18
MAX_UINT = 2**256 - 1
MAX_AMOUNT = 2**128     # native units
MAX_SIZE = 2**100       # base units WAD
MAX_PRICE = 2**100      # USD WAD

# The default listing's markets (both ETH-PERP and BTC-PERP).
ETH, BTC = 0, 1
IMF = 10**17
MMF = 5 * 10**16
LIQ_FEE = 2 * 10**16
TAKER = 5 * 10**14


# ---------------------------------------------------------------- exact integer helpers
# A deliberate copy of protocol_model/wad.py's, not an import: see the module docstring.


def ceil_div(a: int, b: int) -> int:
    return -((-a) // b)


def mul_down(a: int, b: int) -> int:
    return (a * b) // WAD


def mul_up(a: int, b: int) -> int:
    return ceil_div(a * b, WAD)


def div_up(a: int, b: int) -> int:
    return ceil_div(a * WAD, b)


def value_of(amount: int, price: int, decimals: int) -> int:
    """USD WAD value of ``amount`` native units at ``price`` (WAD), rounded down."""
    return amount * price // 10**decimals


def fee_of(delta: int, price: int, taker: int = TAKER) -> int:
    """The taker fee of a trade of ``delta``: ``mul_up(mul_up(|delta|, P), taker_fee)``."""
    return mul_up(mul_up(abs(delta), price), taker)


def upnl(size: int, quote: int, price: int) -> int:
    return mul_down(size, price) + quote


def notional(size: int, price: int) -> int:
    return mul_up(abs(size), price)


def perp_term(size: int, quote: int, price: int, fraction: int) -> int:
    """upnl minus the margin requirement at ``fraction`` for one position."""
    return upnl(size, quote, price) - mul_up(notional(size, price), fraction)


def largest_passing(ok: Callable[[int], bool], lo: int, hi: int) -> int:
    """The largest x in [lo, hi) with ``ok(x)``, by bisection: ``ok(lo)`` holds, ``ok(hi)`` does
    not, and ``ok`` is monotone (true, then false)."""
    while hi - lo > 1:
        mid = (lo + hi) // 2
        if ok(mid):
            lo = mid
        else:
            hi = mid
    return lo


# ---------------------------------------------------------------- chain helpers


def contract_events(contract: Any, receipt: Any, name: str) -> list:
    """``contract``'s ``name`` events in ``receipt`` (other contracts' logs are skipped)."""
    return list(getattr(contract.events, name)().process_receipt(receipt, errors=DISCARD))


def events(p: Any, receipt: Any, name: str) -> list:
    """The engine's ``name`` events in ``receipt`` (other contracts' logs are skipped)."""
    return contract_events(p.engine, receipt, name)


def reverts(sender: Any, call: Any) -> str:
    """Send ``call`` from ``sender``, expect a revert and return its reason."""
    with pytest.raises(Revert) as exc:
        sender.send(call)
    return exc.value.reason


def call_struct(fn: Any) -> dict:
    """Call a view returning one struct and name its fields (e.g. the engine's previews)."""
    names = [c["name"] for c in fn.abi["outputs"][0]["components"]]
    return dict(zip(names, fn.call()))


def quote_scale(p: Any) -> int:
    return 10 ** (18 - p.dep.quote_decimals)


def set_next_timestamp(tester: Any, ts: int) -> None:
    """Make the next transaction's block carry timestamp ``ts``."""
    tester.time_travel(ts)
    assert tester.get_block_by_number("pending")["timestamp"] == ts


def updated_at(p: Any, asset: str) -> int:
    return p.feed(asset).functions.latestRoundData().call()[3]


# ---------------------------------------------------------------- deployments


def new_token(p: Any, decimals: int = 18, symbol: str = "NEW", name: str | None = None) -> Any:
    return deploy_contract(p.w3, p.owner, "Token", name or f"New {symbol}", symbol, decimals)


def new_feed(p: Any, decimals: int = 8, answer: int | None = None, max_answer: int = 10**40,
             description: str = "NEW / USD") -> Any:
    """A repo PriceFeed (min answer 1); ``answer`` defaults to 100 USD."""
    answer = 100 * 10**decimals if answer is None else answer
    return deploy_contract(p.w3, p.owner, "PriceFeed", decimals, description, answer, 1, max_answer)


@functools.cache
def _compiled(source: str) -> tuple[list, str]:
    from vyper.compiler import compile_code

    out = compile_code(source, output_formats=["abi", "bytecode"])
    return out["abi"], out["bytecode"]


def deploy_source(p: Any, source: str, *args: Any) -> Any:
    """Compile a Vyper contract given as source text and deploy it from the owner."""
    abi, bytecode = _compiled(source)
    receipt = p.owner.send(p.w3.eth.contract(abi=abi, bytecode=bytecode).constructor(*args))
    return p.w3.eth.contract(address=receipt["contractAddress"], abi=abi)
