"""One stress path over the exact model: prices step by step, keepers, cascades, the fund and the house.

:func:`run_path` replays one price path (:mod:`simulator.stress.paths`) on a copy of the state
(:class:`protocol_model.scenarios.Stepper`). At each step ``t = 1..steps``:

1. **Prices.** Every feed publishes its path answer (times the cumulative price impact of earlier
   cascades, see 3), at the step's time (``step_seconds`` after the previous step), so every
   price is fresh; feeds the path does not price publish their answer again.
2. **Keepers.** An account is *eligible* once it has been liquidatable for ``latency`` steps
   (``latency = 0``: at once). Two policies:

   * ``bot`` (default): the live bot's decision function, :func:`bot.decide.decide` (its
     :class:`bot.strategy.Planner`), over the eligible accounts at the step's gas price
     (``base_fee_wei`` + the fixed tip ``tip_wei``, priced in USD with the ETH feed), with its
     minimum profit. Bankrupt accounts pay their keepers like any other (the insurance fund, then
     the house, pays what the account cannot), so the bot closes them for profit; with
     ``backstop``, the operator's backstop also closes those whose reward does not pay the gas, at
     a loss, and calls ``settle_bad_debt`` on bad debt no liquidation settled. A liquidation that
     leaves only negative cash settles it at once (:func:`protocol_model.actions.auto_settlement`),
     and that settlement is counted like an explicit one. Its orders are executed in its order with
     :mod:`protocol_model.actions` (a refused step ends that account's sequence and is suppressed for
     the rest of the step, as the bot suppresses it for a block). Each round is one tick; nothing is
     in flight between ticks (a step is at least a block). The keeper's quote budget for collateral
     liquidations is unlimited.
   * ``reference``: the model's own keeper (:meth:`Stepper.liquidate_round`, the rules of
     :func:`protocol_model.scenarios.cascade`): worst account first, everything it can do.

3. **Cascade.** After each round of liquidations, every feed moves by the impact of the net
   notional liquidated on it (:func:`protocol_model.scenarios.impact_fraction`,
   ``impact_per_notional`` per 1,000,000 USD), and keepers act again, until nothing eligible is
   left, a round does nothing, or ``max_rounds`` rounds ran. The impact is permanent: later path
   answers are scaled by each feed's cumulative impact ratio (exact fractions, rounded down).

Figures of a path (USD WAD integers): **bad debt** = deficits settled (covered by the insurance
fund + socialised to the house) + the negative equity left unsettled at the end; the **insurance
fund is depleted** when it could not pay every deficit (something was socialised, or the unsettled
rest exceeds what is left in it); **keeper rewards** are the penalty shares paid (collateral
discounts are not counted); **keeper gas** is what the bot policy's transactions cost (0 for the
reference keeper); **house P&L** is the house's equity at the end (end prices) minus at the start;
**liquidatable** is, per step, how many accounts are still liquidatable after the keepers acted.

With zero volatility, one deterministic shock, the reference keeper and no latency, a path is the
model's :func:`~protocol_model.scenarios.cascade` of that shock (tests/unit/test_stress.py).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from fractions import Fraction
from typing import Any, Literal, Protocol

from bot.decide import decide
from bot.strategy import LIQUIDATE, SETTLE, GasModel, Planner
from bot.txs import FixedTip
from protocol_model.actions import BadDebtSettlement, auto_settlement, liquidate, liquidate_collateral, settle_bad_debt
from protocol_model.errors import ConfigError, Revert
from protocol_model.health import price
from protocol_model.scenarios import SCENARIO_KEEPER, Stepper, impact_fraction
from protocol_model.state import ProtocolState
from protocol_model.wad import GWEI, mul_up
from simulator.defaults import LIQUIDATION_GAS, MIN_PROFIT_USD_WAD

Policy = Literal["bot", "reference"]
POLICIES: tuple[str, ...] = ("bot", "reference")
KEEPER_QUOTE_BUDGET = 10**40          # native quote units: an unlimited budget for collateral liquidations


class Paths(Protocol):
    feeds: tuple[str, ...]

    def answers(self, seed: int, index: int) -> list[list[int]]: ...


@dataclass(frozen=True)
class KeeperSettings:
    """How keepers act (see the module docstring)."""

    policy: str = "bot"
    latency: int = 0                    # steps an account waits, liquidatable, before keepers act
    base_fee_wei: int = 30 * GWEI
    tip_wei: int = 1 * GWEI
    gas_units: int = LIQUIDATION_GAS    # per liquidation (the bot's liquidation_gas_estimate)
    min_profit_usd_wad: int = MIN_PROFIT_USD_WAD
    backstop: bool = True
    impact_per_notional: int = 10**16   # WAD fraction per 1,000,000 USD of net notional (1 %)
    max_rounds: int = 20                # cascade rounds per step
    step_seconds: int = 6 * 3600
    gas_feed: str | None = None         # the ETH feed, to price gas in USD (bot policy)

    def __post_init__(self) -> None:
        if self.policy not in POLICIES:
            raise ConfigError(f"unknown keeper policy {self.policy!r}: give one of {', '.join(POLICIES)}")
        if self.latency < 0:
            raise ConfigError(f"--latency must be >= 0 steps, got {self.latency}")
        if self.base_fee_wei < 0 or self.tip_wei < 0 or self.min_profit_usd_wad < 0:
            raise ConfigError("gas prices and the minimum profit must be >= 0")
        if self.impact_per_notional < 0:
            raise ConfigError("--impact must be >= 0")
        if self.max_rounds < 1:
            raise ConfigError("--max-rounds must be at least 1")
        if self.policy == "bot" and self.gas_feed is None:
            raise ConfigError("the bot policy prices gas with an ETH feed, and the state has none: use --keeper reference")


@dataclass
class PathResult:
    """What happened on one path (USD WAD integers unless named otherwise)."""

    index: int
    bad_debt: int = 0
    covered: int = 0
    socialised: int = 0
    unsettled: int = 0
    insurance_fund_end: int = 0
    insurance_fund_min: int = 0
    depleted: bool = False
    liquidations: int = 0
    collateral_liquidations: int = 0
    settlements: int = 0
    volume: int = 0
    keeper_rewards: int = 0
    keeper_gas: int = 0
    house_pnl: int = 0
    rounds: int = 0
    liquidatable: list[int] = field(default_factory=list)   # per step, after the keepers
    account_steps_liquidatable: int = 0
    longest_liquidatable: int = 0                           # steps, the longest any account stayed

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


class _Tally:
    def __init__(self) -> None:
        self.liquidations = self.collateral_liquidations = self.settlements = 0
        self.volume = self.rewards = self.gas = self.covered = self.socialised = 0


def _reference_round(st: Stepper, eligible: list[str], tally: _Tally) -> tuple[int, dict[str, int]]:
    totals, _, flow = st.liquidate_round(eligible, SCENARIO_KEEPER)
    tally.liquidations += totals.liquidations
    tally.collateral_liquidations += totals.collateral_liquidations
    tally.settlements += totals.settlements
    tally.volume += totals.volume
    tally.rewards += totals.keeper_rewards
    tally.covered += totals.covered
    tally.socialised += totals.socialised
    return totals.actions, flow


def _bot_round(st: Stepper, planner: Planner, k: KeeperSettings, eligible: list[str], tally: _Tally,
               refused: set[tuple[str, str]]) -> tuple[int, dict[str, int]]:
    """One tick of the live bot's decision function (:func:`bot.decide.decide`) on the step's state;
    a refused step is suppressed for the rest of the step (a step is at least a block)."""
    state = st.state
    eth_price = int(price(state, k.gas_feed, False)) if k.gas_feed else 0
    decision = decide(state, eligible, planner, base_fee_wei=k.base_fee_wei, eth_price_wad=eth_price,
                      backoffs=(), suppressed=refused, in_flight=lambda _a: False,
                      quote_balance=lambda: KEEPER_QUOTE_BUDGET, backstop=k.backstop)
    flow: dict[str, int] = {}
    failed: set[str] = set()
    touched: list[str] = []
    actions = 0
    qs = state.params.quote_scale
    for c in decision.chosen:
        if c.account in failed:
            continue
        st.own(c.account)
        settled: BadDebtSettlement | None = None
        try:
            if c.kind == LIQUIDATE:
                plan = liquidate(state, planner.liquidator, c.account, int(c.target), c.amount)
                settled = auto_settlement(plan)
            elif c.kind == SETTLE:
                settled = settle_bad_debt(state, c.account)
            else:
                settled = auto_settlement(
                    liquidate_collateral(state, planner.liquidator, c.account, str(c.target), c.amount))
        except Revert:
            failed.add(c.account)      # the rest of its sequence was planned on this step's result
            refused.add((c.account, str(c.target)))
            continue
        actions += 1
        tally.gas += c.gas.cost_usd_wad if c.gas is not None else 0
        if c.kind == LIQUIDATE:
            notional = mul_up(abs(plan.size_delta), plan.price)
            tally.liquidations += 1
            tally.volume += notional
            tally.rewards += plan.keeper_reward * qs
            feed = state.markets[int(c.target)].feed
            flow[feed] = flow.get(feed, 0) + (notional if plan.size_delta > 0 else -notional)
        elif c.kind != SETTLE:
            tally.collateral_liquidations += 1
        if settled is not None:          # settle_bad_debt, or the automatic settlement of a liquidation
            tally.settlements += 1
            tally.covered += settled.covered
            tally.socialised += settled.socialised
        if c.account not in touched:
            touched.append(c.account)
    for a in touched:
        st.touched(a)
    if touched:
        st.touched(state.engine)
    return actions, flow


def run_path(state: ProtocolState, paths: Paths, keepers: KeeperSettings, seed: int, index: int) -> PathResult:
    """Replay path ``index`` of ``paths`` (seeded by ``seed``) on a copy of ``state``."""
    st = Stepper(state)
    sim = st.state
    planner = Planner(GasModel(FixedTip(keepers.tip_wei), keepers.gas_units), keepers.min_profit_usd_wad,
                      liquidator=SCENARIO_KEEPER, backstop=keepers.backstop)
    out = PathResult(index=index, insurance_fund_min=sim.insurance_fund)
    house_before = st.house_equity()
    tally = _Tally()
    impact: dict[str, Fraction] = {}
    others = [f for f in sim.feeds if f not in paths.feeds]
    first_seen: dict[str, int] = {}
    refused: set[tuple[str, str]] = set()
    for t, row in enumerate(paths.answers(seed, index), start=1):
        sim.timestamp += keepers.step_seconds
        for feed, answer in zip(paths.feeds, row):
            r = impact.get(feed)
            st.publish(feed, answer if r is None else answer * r.numerator // r.denominator, sim.timestamp)
        for feed in others:
            st.publish(feed, sim.feeds[feed].answer, sim.timestamp)
        before = {f: feed.answer for f, feed in sim.feeds.items()}
        refused.clear()
        for _ in range(keepers.max_rounds):
            liquidatable = st.liquidatable()
            for a in liquidatable:
                first_seen.setdefault(a, t)
            eligible = [a for a in liquidatable if t - first_seen[a] >= keepers.latency]
            if not eligible:
                break
            if keepers.policy == "reference":
                acted, flow = _reference_round(st, eligible, tally)
            else:
                acted, flow = _bot_round(st, planner, keepers, eligible, tally, refused)
            if not acted:
                break
            out.rounds += 1
            for feed in sorted(flow):
                fraction = impact_fraction(flow[feed], keepers.impact_per_notional)
                if fraction:
                    st.move(feed, fraction)
        for f, old in before.items():
            new = sim.feeds[f].answer
            if new != old:
                impact[f] = impact.get(f, Fraction(1)) * Fraction(new, old)
        left = st.liquidatable()
        first_seen = {a: first_seen.get(a, t) for a in left}
        out.liquidatable.append(len(left))
        out.account_steps_liquidatable += len(left)
        if left:
            out.longest_liquidatable = max(out.longest_liquidatable, max(t - s + 1 for s in first_seen.values()))
        out.insurance_fund_min = min(out.insurance_fund_min, sim.insurance_fund)

    out.unsettled = sum(max(0, -st.book.health(a).equity) for a in st.liquidatable())
    out.covered, out.socialised = tally.covered, tally.socialised
    out.bad_debt = tally.covered + tally.socialised + out.unsettled
    out.insurance_fund_end = sim.insurance_fund
    out.depleted = tally.socialised > 0 or out.unsettled > sim.insurance_fund
    out.liquidations, out.collateral_liquidations = tally.liquidations, tally.collateral_liquidations
    out.settlements, out.volume = tally.settlements, tally.volume
    out.keeper_rewards, out.keeper_gas = tally.rewards, tally.gas
    out.house_pnl = st.house_equity() - house_before
    return out


__all__ = ["KeeperSettings", "POLICIES", "PathResult", "Paths", "run_path"]
