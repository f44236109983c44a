"""The exact model as the preflight: a tick's transactions simulated in order on the mirror's state.

The mirror (:mod:`bot.mirror`) holds the protocol's state at the head, and the model
(:mod:`protocol_model.actions`) is proven equal to the engine, assert for assert and wei for wei
(``tests/fuzz/test_differential.py``). So instead of one node ``eth_call`` per transaction, the
bot runs its transactions through the model::

    flights = simulate_units(state, units, caller, quote_balance)   # one Preflight per unit

Each unit is one transaction: a list of :class:`~bot.strategy.Candidate` sent as
``liquidate_many`` (when it holds several, or with ``batch=True``), else its one candidate as
``liquidate`` / ``liquidate_collateral`` / ``settle_bad_debt``. The units run **in order on one
scratch state**, as the chain will mine them (consecutive nonces of one sender, fee-ordered blocks
keep them in order): a unit sees the state its predecessors leave behind, automatic bad-debt
settlement and the insurance fund included, and the keeper's quote (the collateral orders'
repayments, pulled by ``transferFrom``) and rewards move as ``Token.vy`` moves them. A unit that
reverts changes nothing (all or nothing, like the engine).

The answer per unit is the :class:`~bot.txs.Preflight` a node's ``eth_call`` gives: ``ok`` and
``result`` (``liquidate_many``'s return value, the count of executed orders, ABI-encoded), or the
revert ``reason`` and its class; for ``liquidate_many`` also ``skips``, each order's skip reason
(None: executed), which the node path asks ``preview_liquidate_many`` for. So the liquidator's
decision code reads model and node answers the same way.

Only the accounts the units name (and the house) are copied; configuration, feeds and every
other account are shared with the mirror, which is never written. What the model does not know it
takes as given: the engine holds enough of each token to pay rewards and seized collateral (its
balance covers every deposit), the engine's quote allowance from the caller is ``allowance``
(the bot approves it without limit at start), and gas never runs out (the bot's gas limit is
``liquidation_gas_estimate`` per order).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from protocol_model.actions import (
    LiquidationOrder,
    Wallets,
    ZERO_ADDRESS,
    liquidate,
    liquidate_collateral,
    liquidate_many,
    settle_bad_debt,
)
from protocol_model.errors import ConfigError, Revert
from protocol_model.state import ProtocolState
from protocol_model.wad import UINT256_MAX

from .strategy import LIQUIDATE, LIQUIDATE_COLLATERAL, SETTLE, Candidate, scratch_state
from .txs import LIQUIDATE_MANY, Preflight, classify_revert

# The engine's balance of every token, as far as the model is concerned: enough.
_ENGINE_FUNDS = UINT256_MAX // 2


@dataclass(frozen=True)
class EngineCall:
    """One engine transaction the model can run: ``kind`` is ``"liquidate_many"``,
    ``"liquidate"``, ``"liquidate_collateral"`` or ``"settle"``; ``orders`` its engine
    ``LiquidationOrder`` s (one for a single call; a settlement's account in ``orders[0]``)."""

    kind: str
    orders: tuple[LiquidationOrder, ...]


def order_of(cand: Candidate) -> LiquidationOrder:
    """The engine's ``LiquidationOrder`` of a candidate (a settlement: its account only)."""
    if cand.kind == LIQUIDATE:
        return LiquidationOrder(cand.account, int(cand.target), ZERO_ADDRESS, cand.amount)
    if cand.kind == LIQUIDATE_COLLATERAL:
        return LiquidationOrder(cand.account, 0, str(cand.target), cand.amount)
    return LiquidationOrder(cand.account)


def unit_call(unit: Sequence[Candidate], batch: bool = True) -> EngineCall:
    """The transaction a unit goes out as (the liquidator's rule): ``liquidate_many`` when it
    holds several candidates, or one liquidation with ``batch``; else its single call."""
    if not unit:
        raise ConfigError("an empty transaction unit")  # dev
    if len(unit) > 1 or (batch and unit[0].kind != SETTLE):
        if any(c.kind == SETTLE for c in unit):
            raise ConfigError("a settlement cannot go into liquidate_many")  # dev
        return EngineCall(LIQUIDATE_MANY, tuple(order_of(c) for c in unit))
    return EngineCall(unit[0].kind, (order_of(unit[0]),))


def _wallets(state: ProtocolState, caller: str, quote_balance: int, allowance: int) -> Wallets:
    quote = state.params.quote_token
    wallets = Wallets()
    wallets.mint(quote, caller, quote_balance)
    wallets.mint(quote, state.engine, _ENGINE_FUNDS)
    for col in state.collaterals:
        wallets.mint(col.token, state.engine, _ENGINE_FUNDS)
    wallets.approve(quote, caller, state.engine, allowance)
    return wallets


def simulate_calls(state: ProtocolState, txs: Sequence[EngineCall], caller: str, quote_balance: int, *,
                   allowance: int = UINT256_MAX, timestamp: int | None = None) -> list[Preflight]:
    """Run ``txs`` in order on one scratch copy of ``state`` (never written), sent by ``caller``
    who holds ``quote_balance`` quote native units and gave the engine ``allowance``; at the
    state's timestamp, or ``timestamp`` (seconds) if given. One :class:`Preflight` per call."""
    sim = scratch_state(state, *{o.account: None for tx in txs for o in tx.orders})
    if timestamp is not None:
        sim.timestamp = timestamp
    wallets = _wallets(sim, caller, quote_balance, allowance)
    out: list[Preflight] = []
    for tx in txs:
        try:
            if tx.kind == LIQUIDATE_MANY:
                result = liquidate_many(sim, caller, list(tx.orders), wallets)
                skips = tuple(None if o.executed else o.reason for o in result.outcomes)
                out.append(Preflight(True, result="0x" + result.executed.to_bytes(32, "big").hex(), skips=skips))
                continue
            o = tx.orders[0]
            if tx.kind == LIQUIDATE:
                liquidate(sim, caller, o.account, o.market, o.amount, wallets)
            elif tx.kind == LIQUIDATE_COLLATERAL:
                liquidate_collateral(sim, caller, o.account, o.token, o.amount, wallets)
            elif tx.kind == SETTLE:
                settle_bad_debt(sim, o.account)
            else:
                raise ConfigError(f"the model cannot preflight a {tx.kind!r} transaction")  # dev
            out.append(Preflight(True, result="0x"))
        except Revert as exc:
            reason = exc.reason or ""
            out.append(Preflight(False, reason, classify_revert(reason)))
        except ConfigError as exc:   # an argument the engine's ABI would refuse (out of range)
            out.append(Preflight(False, str(exc), "error"))
    return out


def simulate_units(state: ProtocolState, units: Sequence[Sequence[Candidate]], caller: str, quote_balance: int, *,
                   batch: bool = True, allowance: int = UINT256_MAX, timestamp: int | None = None) -> list[Preflight]:
    """:func:`simulate_calls` of the liquidator's transaction units (:func:`unit_call` each)."""
    return simulate_calls(state, [unit_call(u, batch) for u in units], caller, quote_balance,
                          allowance=allowance, timestamp=timestamp)


def needs_quote(units: Sequence[Sequence[Candidate]]) -> bool:
    """Whether any unit pulls quote from the caller (a collateral liquidation)."""
    return any(c.kind == LIQUIDATE_COLLATERAL for u in units for c in u)


__all__ = ["EngineCall", "needs_quote", "order_of", "simulate_calls", "simulate_units", "unit_call"]
