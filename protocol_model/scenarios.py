"""What-if scenarios on the model: a price shock, and a liquidation cascade (a spiral).

Both work on a copy of the state and never touch the chain or the caller's state. Everything is
the exact integer model: prices move through :func:`actions.set_answer`, accounts are liquidated
with :func:`actions.liquidate`, :func:`actions.liquidate_collateral` and
:func:`actions.settle_bad_debt`, exactly as keepers would on chain, and health is read loosely (as
the engine's ``health`` view does) through :class:`health.HealthBook`.

Conventions
-----------
* A **shock** is a signed WAD fraction of the feed's answer: ``-2 * 10**17`` is -20 %. The shocked
  answer ``answer * (WAD + shock) / WAD`` is rounded *in the direction of the move*: a fall rounds
  down, a rise rounds up, so a risk report never understates a shock (the protocol's side). It is
  then clamped to what the feed can publish and the engine can use:
  ``[max(1, min_answer), min(max_answer, MAX_PRICE // price_scale)]`` (a shock of -100 % or more is
  rejected; a clamped move is flagged).
* Shocks are keyed by feed address, or by a market name (``"ETH-PERP"`` or ``"ETH"``) or collateral
  symbol (``"WETH"``) known to the state; whatever else the same feed prices moves with it.
* Scenarios happen *now*: every feed gets ``updated_at = state.timestamp`` if it would be stale at
  that time, so that the strict price reads of liquidations succeed (listed in ``refreshed_feeds``).
* **Liquidating an account** (one keeper, :data:`SCENARIO_KEEPER`, accounts in order of
  ``maint_health``, worst first): while it is liquidatable and has positions, liquidate the
  position with the largest notional (ties: lowest market id) with ``max_size = 2**256 - 1``; then,
  while it is still liquidatable with ``cash < 0``, liquidate its collateral, largest value first
  (``max_repay = 2**256 - 1``); then, if it has no position and no collateral left and ``cash < 0``,
  settle its bad debt (insurance fund first, then the house). A reverting step is recorded in
  ``errors`` and ends that part for the account.
* **Bad debt** is an account's negative equity after its position and collateral liquidations
  (before settlement); ``covered`` + ``socialised`` is what settlement moved; ``unsettled_bad_debt``
  the rest (an account that could not be settled).
* **Volume** is the notional closed, ``mul_up(|size_delta|, price)`` per liquidation (USD WAD).
* **Cascade impact**: ``impact_per_notional`` is the WAD fraction the price moves per 1,000,000
  USD of net notional liquidated on a feed in one round (``10**16``: 1 % per 1M USD). Liquidating a
  long sells (the price falls), a short buys (it rises): the move of a feed after a round is
  ``net_bought_usd_wad * impact_per_notional / (10**6 * WAD)``, rounded away from zero, applied
  like a shock. Seized collateral is not modelled as sold.

Amounts in reports are USD WAD unless the name says ``native`` (quote token native units).
``to_json()`` gives a JSON-ready dict with exact integers.
"""

from __future__ import annotations

import copy
import logging
from dataclasses import asdict, dataclass, field
from typing import Any

from . import actions
from .errors import ConfigError, Revert
from .health import Health, HealthBook, feed_max_age, health, price
from .state import Account, Feed, ProtocolState
from .wad import MAX_PRICE, UINT256_MAX, WAD, Native, Wad, div_ceil, div_floor, mul_up

log = logging.getLogger(__name__)

SCENARIO_KEEPER = "0x000000000000000000000000000000000000bEEF"   # the simulated liquidator
IMPACT_UNIT_USD = 1_000_000                                         # cascade impact is per this many USD
MAX_LIQUIDATIONS_PER_ACCOUNT = 256                                  # per account and round; a guard


# ---------------------------------------------------------------- reports


@dataclass
class PriceMove:
    """One feed's move: the answer before and after (feed units), and the WAD prices."""

    feed: str
    label: str                 # what the feed prices: market names and collateral symbols
    fraction: Wad              # the requested move, signed WAD fraction
    old_answer: int
    new_answer: int
    old_price: Wad
    new_price: Wad
    clamped: bool = False      # the move hit the feed's or the engine's bounds


@dataclass
class AccountOutcome:
    """What the simulated keepers did to one account."""

    address: str
    equity: Wad                       # at the scenario prices, before liquidation
    maint_health: Wad
    liquidations: int = 0
    volume: Wad = Wad(0)              # notional closed
    penalty: Wad = Wad(0)
    keeper_reward_native: Native = Native(0)
    insurance: Wad = Wad(0)
    collateral_liquidations: int = 0
    collateral_repaid: Wad = Wad(0)   # debt repaid by the keeper (USD WAD)
    collateral_seized: dict[str, int] = field(default_factory=dict)   # token -> native units
    bad_debt: Wad = Wad(0)            # max(0, -equity) after liquidations
    settled: bool = False
    covered: Wad = Wad(0)
    socialised: Wad = Wad(0)
    equity_after: Wad = Wad(0)
    maint_health_after: Wad = Wad(0)
    errors: list[str] = field(default_factory=list)


@dataclass
class Totals:
    """Sums over the liquidated accounts."""

    accounts: int = 0
    liquidations: int = 0
    volume: Wad = Wad(0)
    penalties: Wad = Wad(0)
    keeper_rewards_native: Native = Native(0)
    keeper_rewards: Wad = Wad(0)              # the same in USD WAD
    insurance_inflow: Wad = Wad(0)
    collateral_liquidations: int = 0
    collateral_repaid: Wad = Wad(0)
    settlements: int = 0
    bad_debt: Wad = Wad(0)
    covered: Wad = Wad(0)                     # paid by the insurance fund
    socialised: Wad = Wad(0)                  # absorbed by the house
    unsettled_bad_debt: Wad = Wad(0)

    def add(self, o: AccountOutcome, quote_scale: int) -> None:
        self.accounts += 1
        self.liquidations += o.liquidations
        self.volume = Wad(self.volume + o.volume)
        self.penalties = Wad(self.penalties + o.penalty)
        self.keeper_rewards_native = Native(self.keeper_rewards_native + o.keeper_reward_native)
        self.keeper_rewards = Wad(self.keeper_rewards_native * quote_scale)
        self.insurance_inflow = Wad(self.insurance_inflow + o.insurance)
        self.collateral_liquidations += o.collateral_liquidations
        self.collateral_repaid = Wad(self.collateral_repaid + o.collateral_repaid)
        self.settlements += int(o.settled)
        self.bad_debt = Wad(self.bad_debt + o.bad_debt)
        self.covered = Wad(self.covered + o.covered)
        self.socialised = Wad(self.socialised + o.socialised)
        self.unsettled_bad_debt = Wad(self.unsettled_bad_debt + o.bad_debt - o.covered - o.socialised)

    @property
    def actions(self) -> int:
        """Liquidations, collateral liquidations and settlements: 0 means nothing could be done."""
        return self.liquidations + self.collateral_liquidations + self.settlements

    def merge(self, other: "Totals") -> None:
        for name in ("accounts", "liquidations", "volume", "penalties", "keeper_rewards_native", "keeper_rewards",
                     "insurance_inflow", "collateral_liquidations", "collateral_repaid", "settlements", "bad_debt", "covered",
                     "socialised", "unsettled_bad_debt"):
            setattr(self, name, getattr(self, name) + getattr(other, name))


def _jsonable(obj: Any) -> Any:
    return asdict(obj)


@dataclass
class ShockReport:
    """:func:`price_shock`'s result."""

    block: int
    timestamp: int
    moves: list[PriceMove]
    refreshed_feeds: list[str]
    liquidatable: list[str]             # every account liquidatable after the shock
    newly_liquidatable: list[str]       # ... that was not before it
    stuck: list[str]                    # still liquidatable after every liquidation keepers can send
    totals: Totals
    insurance_fund_before: Wad
    insurance_fund_after: Wad
    house_equity_before: Wad            # the house's equity at the pre-shock prices
    house_equity_after: Wad             # after the shock, the liquidations and the settlements
    accounts: list[AccountOutcome]      # one per liquidatable account, in processing order

    # Convenience views of the totals, as the task names them.
    @property
    def liquidation_volume(self) -> Wad:
        return self.totals.volume

    @property
    def bad_debt(self) -> Wad:
        return self.totals.bad_debt

    def to_json(self) -> dict[str, Any]:
        return _jsonable(self)


@dataclass
class CascadeRound:
    """One round of a cascade: liquidations at ``prices``, then the price impact."""

    round: int
    prices: dict[str, int]              # feed -> the WAD price the round liquidated at
    liquidated: list[str]               # accounts liquidated this round, in order
    newly_liquidatable: list[str]       # ... that were not liquidatable before the shock
    totals: Totals
    net_flow: dict[str, int]            # feed -> signed notional bought (> 0) / sold (< 0), USD WAD
    moves: list[PriceMove]              # the impact applied after the round
    insurance_fund: Wad                 # after the round
    house_equity: Wad                   # after the round, at the round's prices


@dataclass
class CascadeReport:
    """:func:`cascade`'s result."""

    block: int
    timestamp: int
    impact_per_notional: Wad            # WAD fraction per 1,000,000 USD of net notional
    shock: list[PriceMove]
    refreshed_feeds: list[str]
    rounds: list[CascadeRound]
    converged: bool                     # True: nothing liquidatable at the end
    still_liquidatable: list[str]       # when max_rounds ran out or keepers got stuck
    stuck: bool                         # ended because a round could not liquidate anything
    ever_liquidated: list[str]
    totals: Totals
    final_prices: dict[str, int]
    insurance_fund_before: Wad
    insurance_fund_after: Wad
    house_equity_before: Wad
    house_equity_after: Wad

    def to_json(self) -> dict[str, Any]:
        return _jsonable(self)


# ---------------------------------------------------------------- price moves


def moved_answer(answer: int, fraction: int) -> int:
    """``answer * (WAD + fraction) / WAD`` rounded in the direction of the move (down for a fall,
    up for a rise): the move is never understated. Unclamped."""
    if fraction < 0:
        return div_floor(answer * (WAD + fraction), WAD)
    return div_ceil(answer * (WAD + fraction), WAD)


def _answer_bounds(feed: Feed) -> tuple[int, int]:
    return max(1, feed.min_answer), min(feed.max_answer, MAX_PRICE // feed.price_scale)


def _labels(state: ProtocolState) -> dict[str, str]:
    out: dict[str, list[str]] = {}
    for m in state.markets:
        out.setdefault(m.feed, []).append(m.name or f"market {m.id}")
    for c in state.collaterals:
        out.setdefault(c.feed, []).append(c.symbol or c.token)
    return {f: ", ".join(names) for f, names in out.items()}


def resolve_feed(state: ProtocolState, key: str) -> str:
    """A feed address from a feed address, a market name (``ETH-PERP`` or ``ETH``) or a collateral
    symbol known to the state."""
    for address in state.feeds:
        if address.lower() == key.lower():
            return address
    upper = key.upper()
    for m in state.markets:
        if m.name and m.name.upper() in (upper, f"{upper}-PERP"):
            return m.feed
    for c in state.collaterals:
        if c.symbol and c.symbol.upper() == upper:
            return c.feed
    known = [m.name for m in state.markets if m.name] + [c.symbol for c in state.collaterals if c.symbol]
    raise ConfigError(f"unknown price {key!r}: give a feed address or one of {', '.join(known) or 'the listed feeds'}")


def _move_feed(sim: ProtocolState, book: HealthBook, feed_address: str, fraction: int, label: str) -> PriceMove:
    """Move one feed by ``fraction`` in the simulation (clamped), through ``actions.set_answer``."""
    feed = sim.feeds[feed_address]
    old_answer = feed.answer
    old_price = price(sim, feed_address, False)
    target = moved_answer(old_answer, fraction) if fraction > -WAD else 0
    lo, hi = _answer_bounds(feed)
    new_answer = min(max(target, lo), hi)
    actions.set_answer(sim, feed_address, new_answer, sim.timestamp)
    book.update_price(feed_address, new_answer, feed.updated_at, feed.round_id)
    return PriceMove(
        feed=feed_address, label=label, fraction=Wad(fraction), old_answer=old_answer, new_answer=new_answer,
        old_price=old_price, new_price=price(sim, feed_address, False), clamped=new_answer != target,
    )


def _apply_shocks(sim: ProtocolState, book: HealthBook, shocks: dict[str, int]) -> list[PriceMove]:
    labels = _labels(sim)
    resolved: dict[str, int] = {}
    for key, fraction in shocks.items():
        if not isinstance(fraction, int) or isinstance(fraction, bool):
            raise ConfigError(f"shock for {key!r} must be an integer WAD fraction (-20% = -2 * 10**17), got {fraction!r}")
        if fraction <= -WAD:
            raise ConfigError(f"shock for {key!r} is {fraction}: a price cannot fall by 100% or more (give > -10**18)")
        address = resolve_feed(sim, key)
        if address in resolved:
            raise ConfigError(f"two shocks for the feed {address} ({labels.get(address, '')}): give one")
        resolved[address] = fraction
    return [_move_feed(sim, book, a, f, labels.get(a, "")) for a, f in resolved.items()]


def _refresh_stale_feeds(sim: ProtocolState) -> list[str]:
    """Scenarios happen now: a feed that would be stale at ``sim.timestamp`` is marked fresh."""
    refreshed = []
    for address, feed in sim.feeds.items():
        age = feed_max_age(sim, address)
        if feed.updated_at < sim.timestamp and sim.timestamp - feed.updated_at > age:
            feed.updated_at = sim.timestamp
            refreshed.append(address)
    return refreshed


# ---------------------------------------------------------------- simulation copy


class _Sim:
    """A copy-on-write simulation of a state: configuration, feeds, the house and the protocol's
    balances are copied up front; a trader account is copied the first time it is liquidated."""

    def __init__(self, state: ProtocolState) -> None:
        self.state = ProtocolState(
            engine=state.engine,
            params=copy.deepcopy(state.params),
            markets=copy.deepcopy(state.markets),
            collaterals=copy.deepcopy(state.collaterals),
            feeds=copy.deepcopy(state.feeds),
            accounts=dict(state.accounts),
            house=copy.deepcopy(state.house),
            insurance_fund=state.insurance_fund,
            total_collateral=dict(state.total_collateral),
            timestamp=state.timestamp,
            block=state.block,
        )
        self._owned: set[str] = set()
        self.book = HealthBook(self.state)

    def own(self, address: str) -> Account:
        if address not in self._owned:
            self.state.accounts[address] = copy.deepcopy(self.state.accounts[address])
            self._owned.add(address)
        return self.state.accounts[address]

    def liquidatable(self) -> list[str]:
        """Liquidatable accounts, worst ``maint_health`` first (ties by address)."""
        book = self.book
        return sorted(book.liquidatable(), key=lambda a: (book.health(a).maint_health, a))

    def house_equity(self) -> Wad:
        return self.book.health(self.state.engine).equity


def _notional(sim: ProtocolState, market_id: int, size: int) -> int:
    m = sim.markets[market_id]
    return mul_up(abs(size), price(sim, m.feed, False, m.price_scale))


def _collateral_value(sim: ProtocolState, token: str, balance: int) -> int:
    c = sim.collateral_by_token(token)
    if c is None:
        return 0
    return balance * price(sim, c.feed, False, c.price_scale) // c.unit


def _liquidate_account(sim: _Sim, address: str, keeper: str, flow: dict[str, int]) -> AccountOutcome:
    """Liquidate one account as far as the engine allows; see the module docstring."""
    state = sim.state
    acc = sim.own(address)
    h = sim.book.health(address)
    out = AccountOutcome(address=address, equity=h.equity, maint_health=h.maint_health)

    auto_deficit = 0

    def settled_by(plan: actions.LiquidationPlan | actions.CollateralLiquidationPlan) -> None:
        nonlocal auto_deficit
        s = actions.auto_settlement(plan)
        if s is not None:
            auto_deficit += s.deficit
            out.settled = True
            out.covered = Wad(out.covered + s.covered)
            out.socialised = Wad(out.socialised + s.socialised)

    steps = 0
    while h.maint_health < 0 and acc.positions:
        if steps >= MAX_LIQUIDATIONS_PER_ACCOUNT:
            out.errors.append(f"stopped after {steps} liquidations")
            log.warning("account %s still liquidatable after %d liquidations", address, steps)
            break
        market_id = max(acc.positions, key=lambda m: (_notional(state, m, acc.positions[m].size), -m))
        fund_before = state.insurance_fund
        try:
            plan = actions.liquidate(state, keeper, address, market_id, UINT256_MAX)
        except Revert as exc:
            out.errors.append(f"liquidate market {market_id}: {exc.reason}")
            break
        steps += 1
        notional = mul_up(abs(plan.size_delta), plan.price)
        out.liquidations += 1
        out.volume = Wad(out.volume + notional)
        out.penalty = Wad(out.penalty + plan.penalty)
        out.keeper_reward_native = Native(out.keeper_reward_native + plan.keeper_reward)
        out.insurance = Wad(out.insurance + plan.insurance_fund - fund_before)
        settled_by(plan)
        feed = state.markets[market_id].feed
        flow[feed] = flow.get(feed, 0) + (notional if plan.size_delta > 0 else -notional)
        h = health(state, acc)

    failed: set[str] = set()
    steps = 0
    while h.maint_health < 0 and acc.cash < 0:
        tokens = [t for t in acc.collateral if t not in failed]
        if not tokens:
            break
        if steps >= MAX_LIQUIDATIONS_PER_ACCOUNT:
            out.errors.append(f"stopped after {steps} collateral liquidations")
            log.warning("account %s still liquidatable after %d collateral liquidations", address, steps)
            break
        steps += 1
        token = max(tokens, key=lambda t: (_collateral_value(state, t, acc.collateral[t]), t))
        fund_before = state.insurance_fund
        try:
            cplan = actions.liquidate_collateral(state, keeper, address, token, UINT256_MAX)
        except Revert as exc:
            out.errors.append(f"liquidate_collateral {token}: {exc.reason}")
            failed.add(token)
            continue
        out.collateral_liquidations += 1
        out.collateral_repaid = Wad(out.collateral_repaid + cplan.repay * state.params.quote_scale)
        out.collateral_seized[token] = out.collateral_seized.get(token, 0) + cplan.seized
        out.insurance = Wad(out.insurance + cplan.insurance_fund - fund_before)
        settled_by(cplan)
        h = health(state, acc)

    out.bad_debt = Wad(max(0, -h.equity) + auto_deficit)
    if acc.cash < 0 and not acc.positions and not acc.collateral:
        try:
            settled = actions.settle_bad_debt(state, address)
        except Revert as exc:
            out.errors.append(f"settle_bad_debt: {exc.reason}")
        else:
            out.settled = True
            out.covered = Wad(out.covered + settled.covered)
            out.socialised = Wad(out.socialised + settled.socialised)
            h = health(state, acc)

    h = sim.book.apply_account(acc)
    out.equity_after = h.equity
    out.maint_health_after = h.maint_health
    return out


def _liquidate_all(sim: _Sim, addresses: list[str], keeper: str) -> tuple[Totals, list[AccountOutcome], dict[str, int]]:
    totals = Totals()
    outcomes: list[AccountOutcome] = []
    flow: dict[str, int] = {}
    for address in addresses:
        o = _liquidate_account(sim, address, keeper, flow)
        totals.add(o, sim.state.params.quote_scale)
        outcomes.append(o)
    if sim.state.house is not None:
        sim.book.apply_account(sim.state.house)
    return totals, outcomes, flow


def _check_state(state: ProtocolState) -> None:
    if state.house is None:
        raise ConfigError("the state has no house account: load it with protocol_model.loader")


# ---------------------------------------------------------------- scenarios


def price_shock(state: ProtocolState, shocks: dict[str, int], keeper: str = SCENARIO_KEEPER) -> ShockReport:
    """Move prices by ``shocks`` (feed or symbol -> signed WAD fraction), then liquidate everything
    that becomes (or already is) liquidatable, on a copy. See the module docstring for the rules."""
    _check_state(state)
    sim = _Sim(state)
    before: dict[str, Health] = {a: sim.book.health(a) for a in state.accounts}
    house_before = sim.house_equity()
    fund_before = state.insurance_fund
    refreshed = _refresh_stale_feeds(sim.state)
    moves = _apply_shocks(sim.state, sim.book, shocks)

    liquidatable = sim.liquidatable()
    newly = [a for a in liquidatable if before[a].maint_health >= 0]
    totals, outcomes, _ = _liquidate_all(sim, liquidatable, keeper)
    log.info("price shock: %d liquidatable (%d new), volume %d, bad debt %d", len(liquidatable), len(newly),
             totals.volume, totals.bad_debt)
    return ShockReport(
        block=state.block, timestamp=state.timestamp, moves=moves, refreshed_feeds=refreshed,
        liquidatable=liquidatable, newly_liquidatable=newly,
        stuck=[o.address for o in outcomes if o.maint_health_after < 0], totals=totals,
        insurance_fund_before=fund_before, insurance_fund_after=sim.state.insurance_fund,
        house_equity_before=house_before, house_equity_after=sim.house_equity(), accounts=outcomes,
    )


def impact_fraction(net_flow: int, impact_per_notional: int) -> int:
    """The WAD fraction a feed moves for ``net_flow`` USD WAD bought (> 0) or sold (< 0), rounded
    away from zero: ``net_flow * impact_per_notional / (10**6 * WAD)``."""
    denom = IMPACT_UNIT_USD * WAD
    raw = net_flow * impact_per_notional
    return div_ceil(raw, denom) if raw > 0 else div_floor(raw, denom)


def cascade(
    state: ProtocolState,
    shocks: dict[str, int],
    impact_per_notional: int,
    max_rounds: int = 50,
    keeper: str = SCENARIO_KEEPER,
) -> CascadeReport:
    """A liquidation spiral on a copy of ``state``: apply ``shocks``, then round after round
    liquidate everything liquidatable at the round's prices and move each feed by the impact of the
    net notional liquidated on it (``impact_per_notional``: WAD fraction per 1,000,000 USD; longs
    liquidated sell, shorts buy), until nothing is liquidatable, a round can liquidate nothing
    (``stuck``; that round is not reported) or ``max_rounds`` rounds ran."""
    _check_state(state)
    if not isinstance(impact_per_notional, int) or impact_per_notional < 0:
        raise ConfigError(f"impact_per_notional must be an integer WAD fraction >= 0, got {impact_per_notional!r}")
    if max_rounds < 1:
        raise ConfigError(f"max_rounds must be at least 1, got {max_rounds}")
    sim = _Sim(state)
    before: dict[str, Health] = {a: sim.book.health(a) for a in state.accounts}
    house_before = sim.house_equity()
    refreshed = _refresh_stale_feeds(sim.state)
    shock_moves = _apply_shocks(sim.state, sim.book, shocks)
    labels = _labels(sim.state)

    rounds: list[CascadeRound] = []
    totals = Totals()
    ever: list[str] = []
    ever_set: set[str] = set()
    stuck = False
    liquidatable = sim.liquidatable()
    for number in range(1, max_rounds + 1):
        if not liquidatable:
            break
        prices = {f: int(price(sim.state, f, False)) for f in sim.state.feeds}
        round_totals, _, flow = _liquidate_all(sim, liquidatable, keeper)
        if round_totals.actions == 0:
            # Nothing could be done (e.g. collateral too small to liquidate): the next round would
            # be this one again.
            stuck = True
            break
        totals.merge(round_totals)
        for a in liquidatable:
            if a not in ever_set:
                ever_set.add(a)
                ever.append(a)
        moves = []
        for feed in sorted(flow):
            fraction = impact_fraction(flow[feed], impact_per_notional)
            if fraction != 0:
                moves.append(_move_feed(sim.state, sim.book, feed, fraction, labels.get(feed, "")))
        rounds.append(CascadeRound(
            round=number, prices=prices, liquidated=liquidatable,
            newly_liquidatable=[a for a in liquidatable if before[a].maint_health >= 0],
            totals=round_totals, net_flow=dict(sorted(flow.items())), moves=moves,
            insurance_fund=sim.state.insurance_fund, house_equity=sim.house_equity(),
        ))
        log.debug("cascade round %d: %d liquidated, volume %d", number, len(liquidatable), round_totals.volume)
        liquidatable = sim.liquidatable()

    return CascadeReport(
        block=state.block, timestamp=state.timestamp, impact_per_notional=Wad(impact_per_notional),
        shock=shock_moves, refreshed_feeds=refreshed, rounds=rounds, converged=not liquidatable,
        still_liquidatable=liquidatable, stuck=stuck, ever_liquidated=ever, totals=totals,
        final_prices={f: int(price(sim.state, f, False)) for f in sim.state.feeds},
        insurance_fund_before=state.insurance_fund, insurance_fund_after=sim.state.insurance_fund,
        house_equity_before=house_before, house_equity_after=sim.house_equity(),
    )



# ---------------------------------------------------------------- stepping


class Stepper:
    """A copy of ``state`` that evolves step by step under the cascade's rules, for engines that
    replay many price moves (the stress engine): :meth:`publish` sets a feed's answer, :meth:`move`
    moves it by a fraction exactly as a shock or a cascade impact does, :meth:`liquidatable` and
    :meth:`liquidate_round` are one round of :func:`cascade` (the same keeper rules), and
    :meth:`own` / :meth:`touched` let another keeper policy act on the copy through
    :mod:`protocol_model.actions` and keep the health index current. The caller's state is never
    written (copy on write, as the scenarios do)."""

    def __init__(self, state: ProtocolState) -> None:
        _check_state(state)
        self._sim = _Sim(state)
        self._labels = _labels(self._sim.state)

    @property
    def state(self) -> ProtocolState:
        return self._sim.state

    @property
    def book(self) -> HealthBook:
        return self._sim.book

    def publish(self, feed_address: str, answer: int, timestamp: int) -> None:
        """The feed answers ``answer`` (clamped to what it can publish) from ``timestamp`` on."""
        sim = self._sim.state
        feed = sim.feeds[feed_address]
        lo, hi = _answer_bounds(feed)
        actions.set_answer(sim, feed_address, min(max(answer, lo), hi), timestamp)
        self._sim.book.update_price(feed_address, feed.answer, feed.updated_at, feed.round_id)

    def move(self, feed_address: str, fraction: int) -> PriceMove:
        """Move a feed by a signed WAD fraction as a shock or a cascade round does (clamped)."""
        return _move_feed(self._sim.state, self._sim.book, feed_address, fraction, self._labels.get(feed_address, ""))

    def liquidatable(self) -> list[str]:
        """Liquidatable accounts, worst ``maint_health`` first (ties by address)."""
        return self._sim.liquidatable()

    def liquidate_round(self, addresses: list[str], keeper: str = SCENARIO_KEEPER
                        ) -> tuple[Totals, list[AccountOutcome], dict[str, int]]:
        """One cascade round over ``addresses``: totals, outcomes, and the signed net notional
        bought per feed (USD WAD; feed it to :func:`impact_fraction`)."""
        return _liquidate_all(self._sim, addresses, keeper)

    def own(self, address: str) -> Account:
        """The copy's account at ``address``, safe to change with :mod:`protocol_model.actions`."""
        return self._sim.own(address)

    def touched(self, address: str) -> Health | None:
        """Re-index an account (or the house) after an action changed it."""
        acc = self._sim.state.house if address == self._sim.state.engine else self._sim.state.accounts[address]
        return self._sim.book.apply_account(acc)

    def house_equity(self) -> Wad:
        return self._sim.house_equity()

__all__ = [
    "AccountOutcome",
    "CascadeReport",
    "CascadeRound",
    "IMPACT_UNIT_USD",
    "PriceMove",
    "SCENARIO_KEEPER",
    "ShockReport",
    "Stepper",
    "Totals",
    "cascade",
    "impact_fraction",
    "moved_answer",
    "price_shock",
    "resolve_feed",
]
