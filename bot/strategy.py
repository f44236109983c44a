"""Choosing liquidations: the model's previews, priced net of gas, most profitable first.

The strategy reads nothing from the chain. Given the mirrored :class:`ProtocolState`, one
liquidatable account, the gas price of the head and the USD price of ETH, :meth:`Planner.plan`

1. previews every candidate action with :mod:`protocol_model.actions` - each open position
   (``preview_liquidate``) and, while the account's cash is negative and the bot holds quote
   tokens, each collateral (``preview_liquidate_collateral``);
2. prices each one: the reward (the keeper's share of the penalty, or the collateral discount),
   minus the gas at the head's base fee plus the fee strategy's tip, converted to USD with the ETH
   feed (:class:`GasModel`);
3. keeps the most profitable one whose profit reaches ``min_profit_usd_wad`` (in backstop mode, for a
   bankrupt account - equity < 0 - the most profitable one whatever its profit: its keeper is paid
   by the insurance fund like any other, so only a position too small to pay for its gas is left
   to the operator's keeper, which closes it at a loss), applies it to a scratch
   copy of the account with the model's own ``liquidate`` / ``liquidate_collateral`` (strict
   prices, as the engine will execute it), and starts again on the result, until the account is
   healthy or nothing profitable is left. So the second action of an account is planned on the
   state the first one leaves behind, and no action is planned that the first makes invalid.

:func:`merge_by_profit` orders the plans of many accounts most profitable first while keeping each
account's own sequence in order.

All amounts are exact integers: USD in WAD, quote and collateral in native units, gas in wei.
"""

from __future__ import annotations

import heapq
import logging
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Literal

from protocol_model.actions import (
    CollateralLiquidationPlan,
    LiquidationPlan,
    liquidate,
    liquidate_collateral,
    preview_liquidate,
    preview_liquidate_collateral,
)
from protocol_model.errors import Revert
from protocol_model.health import health
from protocol_model.state import Account, ProtocolState
from protocol_model.wad import UINT256_MAX, WAD

from .txs import FeeStrategy

log = logging.getLogger(__name__)

Kind = Literal["liquidate", "liquidate_collateral", "settle"]
LIQUIDATE: Kind = "liquidate"
LIQUIDATE_COLLATERAL: Kind = "liquidate_collateral"
SETTLE: Kind = "settle"          # settle_bad_debt(account): backstop mode only


# ---------------------------------------------------------------------- gas


@dataclass(frozen=True)
class GasQuote:
    """What one transaction is expected to cost, and the fee inputs the sender must reuse."""

    tip_wei: int                  # priority fee per gas the strategy picks
    cost_wei: int                 # gas units x (base fee + tip), capped by the max fee
    cost_usd_wad: int             # cost_wei at the ETH price, rounded up
    expected_profit_wei: int      # reward - gas at the base fee, in wei: the fee strategy's input


class GasModel:
    """Prices a liquidation's gas in USD: ``gas_units x (base fee + tip) x ETH price``.

    ``gas_units`` is the configured estimate of one liquidation (``liquidation_gas_estimate``);
    the tip comes from the same :class:`~bot.txs.FeeStrategy` the sender uses, fed with the same
    ``expected_profit_wei``, so the priced fee is the fee actually offered.
    """

    def __init__(self, strategy: FeeStrategy, gas_units: int) -> None:
        if gas_units <= 0:
            raise ValueError("gas_units must be > 0")
        self.strategy = strategy
        self.gas_units = gas_units

    def quote(self, reward_usd_wad: int, base_fee_wei: int, eth_price_wad: int) -> GasQuote | None:
        """The gas of a liquidation worth ``reward_usd_wad``; None without a usable ETH price."""
        if eth_price_wad <= 0:
            return None
        reward_wei = max(reward_usd_wad, 0) * WAD // eth_price_wad
        expected_profit_wei = max(reward_wei - self.gas_units * base_fee_wei, 0)
        fees = self.strategy.fees(base_fee_wei, expected_profit_wei)
        per_gas = min(fees.max_fee_per_gas, base_fee_wei + fees.max_priority_fee_per_gas)
        cost_wei = self.gas_units * per_gas
        cost_usd = -(-cost_wei * eth_price_wad // WAD)   # rounded up: never underestimate a cost
        return GasQuote(fees.max_priority_fee_per_gas, cost_wei, cost_usd, expected_profit_wei)


# ---------------------------------------------------------------------- candidates


@dataclass(frozen=True)
class Candidate:
    """One liquidation the bot could send, priced.

    ``target`` is the market id (``liquidate``) or the collateral token (``liquidate_collateral``);
    ``amount`` is the call's ``max_size`` (base units WAD) or ``max_repay`` (quote native units).
    ``reward_usd_wad`` is gross: the keeper reward, or the seized collateral's value at the feed
    price minus the quote paid for it. ``profit_usd_wad`` is net of gas.
    """

    account: str
    kind: Kind
    target: int | str
    target_name: str
    amount: int
    price_wad: int
    reward_native: int            # keeper reward (quote units) or seized collateral (token units)
    reward_usd_wad: int
    gas: GasQuote | None
    profit_usd_wad: int
    step: int = 0                 # position in the account's planned sequence
    plan: LiquidationPlan | CollateralLiquidationPlan | None = field(default=None, compare=False, repr=False)

    @property
    def repay_native(self) -> int:
        """Quote native units the bot pays (collateral liquidations only)."""
        if self.kind == LIQUIDATE_COLLATERAL and isinstance(self.plan, CollateralLiquidationPlan):
            return int(self.plan.repay)
        return 0

    @property
    def expected_profit_wei(self) -> int:
        return self.gas.expected_profit_wei if self.gas is not None else 0


@dataclass
class AccountPlan:
    """What :meth:`Planner.plan` found for one account."""

    account: str
    evaluated: list[Candidate] = field(default_factory=list)   # every priced candidate, all steps
    chosen: list[Candidate] = field(default_factory=list)      # the sequence to send, in order
    skipped: str | None = None                                 # why planning stopped early, if it did


def scratch_state(state: ProtocolState, *addresses: str) -> ProtocolState:
    """A copy of ``state`` in which only ``addresses`` (those it holds), the house, the insurance
    fund and the collateral totals may be changed.

    Configuration, feeds and every other account are shared, not copied: the liquidation actions
    only write the liquidated accounts, the house, the insurance fund and ``total_collateral``.
    The accounts are copied one level deep: the model replaces positions (never mutates a
    :class:`Position`) and writes collateral through the account's own dict.
    """
    return ProtocolState(
        engine=state.engine,
        params=state.params,
        markets=state.markets,
        collaterals=state.collaterals,
        feeds=state.feeds,
        accounts={a: _account_copy(state.accounts[a]) for a in addresses if a in state.accounts},
        house=_account_copy(state.house) if state.house is not None else None,
        insurance_fund=state.insurance_fund,
        total_collateral=dict(state.total_collateral),
        timestamp=state.timestamp,
        block=state.block,
    )


def _account_copy(acc: Account) -> Account:
    return Account(acc.address, acc.cash, dict(acc.collateral), dict(acc.positions))


def can_settle(state: ProtocolState, address: str) -> bool:
    """``settle_bad_debt(address)`` would succeed: no positions, no collateral, negative cash."""
    acc = state.accounts.get(address)
    if acc is None or address == state.engine:
        return False
    return (acc.cash < 0 and not any(p.size != 0 for p in acc.positions.values())
            and not any(v > 0 for v in acc.collateral.values()))


class Planner:
    """Previews, prices and sequences the liquidations of one account at a time (no RPC)."""

    def __init__(
        self,
        gas: GasModel,
        min_profit_usd_wad: int,
        *,
        liquidator: str,
        collateral_liquidation: bool = True,
        backstop: bool = False,
    ) -> None:
        self.gas = gas
        self.backstop = backstop
        self.min_profit_usd_wad = min_profit_usd_wad
        self.liquidator = liquidator
        self.collateral_liquidation = collateral_liquidation

    def needs_quote(self, state: ProtocolState, address: str) -> bool:
        """True when a collateral liquidation of ``address`` could become a candidate (so the bot's
        quote balance matters): it holds collateral."""
        if not self.collateral_liquidation:
            return False
        acc = state.accounts.get(address)
        # Cash that is not negative yet may become so once a position is closed at a loss.
        return acc is not None and any(v > 0 for v in acc.collateral.values())

    def plan(self, state: ProtocolState, address: str, *, base_fee_wei: int, eth_price_wad: int,
             quote_budget: int = 0) -> AccountPlan:
        """The most profitable sequence of liquidations of ``address`` at the state's prices."""
        out = AccountPlan(address)
        if address not in state.accounts:
            out.skipped = "unknown account"
            return out
        sim = scratch_state(state, address)
        acc = sim.accounts[address]
        budget = quote_budget
        max_steps = 2 * (len(acc.positions) + len(acc.collateral)) + 1
        for step in range(max_steps):
            acc = sim.accounts[address]
            try:
                h = health(sim, acc)
            except Revert:
                out.skipped = "health overflows"
                break
            if h.maint_health >= 0:
                break
            cands = self._candidates(sim, address, step, budget, base_fee_wei, eth_price_wad)
            out.evaluated.extend(cands)
            # Backstop: a bankrupt account whose reward does not cover the gas (dust) is closed by
            # nobody else; the operator's keeper closes it anyway (best first), so its losses stop
            # and the engine settles its bad debt.
            floor = None if (self.backstop and h.equity < 0) else self.min_profit_usd_wad
            good = [c for c in cands if c.gas is not None and (floor is None or c.profit_usd_wad >= floor)]
            if not good:
                if not out.chosen:
                    out.skipped = "no candidate reaches the minimum profit" if cands else "nothing to liquidate"
                break
            # Most profitable; ties go to the lower market id / the first collateral, deterministically.
            best = max(good, key=lambda c: (c.profit_usd_wad, -_order_key(sim, c)))
            try:
                self._apply(sim, best)
            except Revert as exc:
                out.skipped = exc.reason or "reverts"   # e.g. "stale price": the engine would revert too
                break
            out.chosen.append(best)
            budget -= best.repay_native
        return out

    # internals ---------------------------------------------------------------
    def _candidates(self, sim: ProtocolState, address: str, step: int, budget: int,
                    base_fee_wei: int, eth_price_wad: int) -> list[Candidate]:
        acc = sim.accounts[address]
        out: list[Candidate] = []
        for m in sorted(acc.positions):
            try:
                plan = preview_liquidate(sim, address, m, UINT256_MAX)
            except Revert:
                continue
            size = abs(int(plan.size_delta))
            if size == 0:
                continue
            reward_usd = int(plan.keeper_reward) * sim.params.quote_scale
            out.append(self._priced(address, LIQUIDATE, m, sim.markets[m].name or f"market {m}", size,
                                    int(plan.price), int(plan.keeper_reward), reward_usd, step, plan,
                                    base_fee_wei, eth_price_wad))
        if self.collateral_liquidation and acc.cash < 0 and budget > 0:
            for col in sorted(sim.collaterals, key=lambda c: c.index):
                if acc.collateral.get(col.token, 0) == 0:
                    continue
                try:
                    cplan = preview_liquidate_collateral(sim, address, col.token, budget)
                except Revert:
                    continue
                if cplan.repay == 0:
                    continue
                value = int(cplan.seized) * int(cplan.price) // col.unit
                reward_usd = value - int(cplan.repay) * sim.params.quote_scale
                out.append(self._priced(address, LIQUIDATE_COLLATERAL, col.token, col.symbol or col.token,
                                        int(cplan.repay), int(cplan.price), int(cplan.seized), reward_usd, step,
                                        cplan, base_fee_wei, eth_price_wad))
        return out

    def _priced(self, address: str, kind: Kind, target: int | str, name: str, amount: int, price: int,
                reward_native: int, reward_usd: int, step: int,
                plan: LiquidationPlan | CollateralLiquidationPlan, base_fee_wei: int,
                eth_price_wad: int) -> Candidate:
        gas = self.gas.quote(reward_usd, base_fee_wei, eth_price_wad)
        profit = reward_usd - gas.cost_usd_wad if gas is not None else reward_usd
        return Candidate(address, kind, target, name, amount, price, reward_native, reward_usd, gas, profit, step, plan)

    def _apply(self, sim: ProtocolState, c: Candidate) -> None:
        if c.kind == LIQUIDATE:
            liquidate(sim, self.liquidator, c.account, int(c.target), c.amount)
        else:
            liquidate_collateral(sim, self.liquidator, c.account, str(c.target), c.amount)


def _order_key(state: ProtocolState, c: Candidate) -> int:
    if c.kind == LIQUIDATE:
        return int(c.target)
    col = state.collateral_by_token(str(c.target))
    return 100 + (col.index if col is not None else 0)


def merge_by_profit(chains: Iterable[Sequence[Candidate]]) -> list[Candidate]:
    """Every candidate of every chain, most profitable first, each chain's own order kept.

    A chain is one account's planned sequence: its second step is only valid after its first, so
    it never goes ahead of it, whatever its profit.
    """
    heap: list[tuple[int, int, int, int]] = []
    lists = [list(c) for c in chains if c]
    for i, chain in enumerate(lists):
        heapq.heappush(heap, (-chain[0].profit_usd_wad, i, 0, i))
    out: list[Candidate] = []
    while heap:
        _, _, pos, i = heapq.heappop(heap)
        chain = lists[i]
        out.append(chain[pos])
        if pos + 1 < len(chain):
            heapq.heappush(heap, (-chain[pos + 1].profit_usd_wad, i, pos + 1, i))
    return out


# ---------------------------------------------------------------------- display


__all__ = [
    "AccountPlan",
    "Candidate",
    "GasModel",
    "GasQuote",
    "LIQUIDATE",
    "LIQUIDATE_COLLATERAL",
    "Planner",
    "merge_by_profit",
    "SETTLE",
    "can_settle",
    "scratch_state",
]
