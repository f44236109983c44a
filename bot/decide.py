"""A keeper's decision for one tick: which liquidations (and settlements) to send, in what order.

One pure function, :func:`decide`, used by the live bot (:class:`bot.liquidator.Liquidator`) and
by the off-chain competition simulator (:class:`simulator.competition.offchain.ModelAgent`), so
that the simulated keeper decides exactly as the real one does. It reads the mirrored state, the
head's prices and the keeper's bookkeeping (backed-off accounts, suppressed targets, accounts
with a transaction in flight); it sends nothing, writes nothing and asks the chain nothing (the
quote balance, needed only for collateral liquidations, is read through a callable at most once).

:func:`after_refusal` is the other half of the policy: what a refused step (a reverted preflight
or a reverted transaction) does to the keeper's bookkeeping.

For each liquidatable account in the given order:

* in backstop mode an account with nothing left but negative cash (bad debt no liquidation
  settled, e.g. after the trader's own close at a loss) is settled (``settle_bad_debt``) after
  every liquidation of the tick;
* an account backed off after a lost race is skipped (listed in ``backed_off``), as is one with a
  transaction of ours in flight (its outcome comes first);
* :meth:`bot.strategy.Planner.plan` plans its steps; a step whose (account, target) the chain
  refused lately ends the account's sequence, since later steps build on it;
* the accounts' sequences are merged most profitable first (:func:`bot.strategy.merge_by_profit`).
"""

from __future__ import annotations

from collections.abc import Callable, Container, Iterable, Mapping
from dataclasses import dataclass, field
from itertools import takewhile
from typing import Literal, TypeVar

from protocol_model.state import ProtocolState

from .strategy import SETTLE, AccountPlan, Candidate, Planner, can_settle, merge_by_profit

K = TypeVar("K")
Target = tuple[str, str]          # (account, str(target)): what a refusal suppresses


@dataclass
class Decision:
    """What :func:`decide` chose: ``chosen`` in sending order (liquidations most profitable first,
    then settlements), ``evaluated`` every priced candidate of the planned accounts, ``backed_off``
    the liquidatable accounts skipped after a lost race, ``skipped`` why an account with a plan got
    no step (account -> the planner's reason)."""

    chosen: list[Candidate] = field(default_factory=list)
    evaluated: list[Candidate] = field(default_factory=list)
    backed_off: list[str] = field(default_factory=list)
    skipped: dict[str, str] = field(default_factory=dict)


def decide(
    state: ProtocolState,
    liquidatable: Iterable[str],
    planner: Planner,
    *,
    base_fee_wei: int,
    eth_price_wad: int,
    backoffs: Container[str],
    suppressed: Container[Target],
    in_flight: Callable[[str], bool],
    quote_balance: Callable[[], int] = lambda: 0,
    backstop: bool = False,
    plan: Callable[[str, int], AccountPlan] | None = None,
) -> Decision:
    """The tick's orders (see the module docstring).

    ``in_flight(account)``: a transaction of ours for it is pending. ``quote_balance()``: the
    keeper's quote tokens, read once and only when an account needs them. ``plan(account,
    quote_budget)``: the planner's plan of one account at this head (default
    ``planner.plan(state, account, ...)``; the simulator passes a cached one).
    """
    if plan is None:
        def plan(address: str, budget: int) -> AccountPlan:
            return planner.plan(state, address, base_fee_wei=base_fee_wei, eth_price_wad=eth_price_wad,
                                quote_budget=budget)
    out = Decision()
    liquidatable = list(liquidatable)
    budget: int | None = None
    chains: list[list[Candidate]] = []
    for address in liquidatable:
        if backstop and can_settle(state, address):
            continue   # nothing to liquidate: settled below
        if address in backoffs:
            out.backed_off.append(address)
            continue
        if in_flight(address):
            continue   # wait for the outcome of what is in flight for this account
        quote_budget = 0
        if planner.needs_quote(state, address):
            if budget is None:
                budget = quote_balance()
            quote_budget = budget
        account_plan = plan(address, quote_budget)
        out.evaluated.extend(account_plan.evaluated)
        chosen = list(takewhile(lambda c: (c.account, str(c.target)) not in suppressed, account_plan.chosen))
        if account_plan.skipped and not account_plan.chosen:
            out.skipped[address] = account_plan.skipped
        if chosen:
            chains.append(chosen)
            if budget is not None:
                budget -= sum(c.repay_native for c in chosen)
    out.chosen = merge_by_profit(chains)
    if backstop:
        for address in liquidatable:
            if address in backoffs or (address, address) in suppressed or not can_settle(state, address):
                continue
            if in_flight(address):
                continue
            out.chosen.append(Candidate(address, SETTLE, address, "bad debt", 0, 0, 0, 0, None, 0))
    return out


Reaction = Literal["wait", "back_off", "suppress"]


def after_refusal(step: int, lost_race: bool, block: int, backoff_blocks: int) -> tuple[Reaction, int]:
    """What a refused step does to the keeper's bookkeeping, and until which block (inclusive).

    * ``wait``: a later step of an account (step > 0) refused at preflight: the preflight runs
      without our own earlier step, still pending; it is planned again once that is mined;
    * ``back_off``: a lost race (a rival changed the account first): the account is left alone for
      ``backoff_blocks`` after ``block`` (the block it was lost in);
    * ``suppress``: any other refusal: that (account, target) is not tried again for at least one
      block (``max(1, backoff_blocks)``).

    Callers pass ``step=0`` for a mined transaction's revert (no ``wait`` then).
    """
    if step > 0:
        return "wait", block
    if lost_race:
        return "back_off", block + backoff_blocks
    return "suppress", block + max(1, backoff_blocks)


def unexpired(marks: Mapping[K, int], head: int) -> dict[K, int]:
    """The entries of ``marks`` (key -> until block, inclusive) still in force at ``head``."""
    return {k: until for k, until in marks.items() if until >= head}


__all__ = ["Decision", "Reaction", "Target", "after_refusal", "decide", "unexpired"]
