"""The off-chain mode: the same agents, node and ordering on :mod:`protocol_model`, no EVM.

What runs here mirrors the on-chain mode step for step, with the keeper's own decision function:

* **The state.** :func:`build_initial_state` lists the default deployment (:class:`DeployConfig`) in
  a :class:`ProtocolState` and seeds the same traders as :func:`protocol_model.seeding.seed_accounts` (the same
  :func:`protocol_model.seeding.plan_traders`, deposits and trades applied with :mod:`protocol_model.actions`),
  so the state equals what the Lens reads after on-chain seeding. The shock's price updates
  (:class:`OracleTx`: every feed re-published, the shocked ones moved by
  :func:`protocol_model.scenarios.moved_answer`) wait in the pool with the backruns of the update
  round and are mined in block ``S`` by the same block builder as every transaction.
* **The node** (:class:`ModelChain`): a pool keyed by sender and nonce with the dev node's
  replacement rule (:func:`devnode.mempool.outbids`: both fees at least 10 % higher), and blocks
  built by the dev node's own :class:`devnode.mempool.BlockSelector`: among the senders' next nonces, the highest effective
  priority fee first, ties by arrival; a transaction whose gas limit does not fit what is left of
  the block waits (its sender's later nonces too). Each liquidation executes with
  :func:`protocol_model.actions.liquidate` on the block's state, so rewards and revert reasons are
  exact. The base fee follows EIP-1559 from the gas used; the block gas limit is eth-tester's
  constant one.
* **The bots** (:class:`ModelAgent`): one :class:`bot.liquidator.Liquidator` tick, deciding with the
  bot's own decision function :func:`bot.decide.decide` (the same :class:`bot.strategy.Planner`, so
  the same previews, gas pricing, minimum profit and sequencing) and booking refusals with
  :func:`bot.decide.after_refusal`: settle the in-flight transactions mined since the last tick,
  decide, then a preflight on the head state (the bot's ``eth_call``) and the fees of
  :func:`bot.txs.strategy_from_config`. Accounts are visited in address order (the bot's order only
  matters between candidates of exactly equal profit). A ``backrun`` agent's update round
  (:meth:`ModelAgent.backrun`) runs the same decision on a view of the head state with the pending
  prices (:func:`pending_view`), preflights each liquidation on that view and sends it with the
  backrun's fees (:func:`simulator.competition.agents.backrun_fees`).
* **Gas** (:class:`GasTable`): a transaction uses its intrinsic gas (21,000 plus its call data,
  computed exactly) plus the execution gas of the path it takes through the engine, keyed by what
  decides the engine's gas: success or revert reason, the market, the account's active markets,
  short positions and held collaterals (the loops of ``_health``, cold or warm feeds, the signed
  roundings of short positions), and for a success whether a reward is paid (the token transfer)
  and how each written storage slot changes (zero / non-zero / unchanged, priced by EIP-2200 and
  EIP-2929 with the engine's branches, minus the capped refund of cleared slots). An on-chain run
  measures ``gas used - intrinsic`` for every key it meets (``report.gas_table``); keys it did not
  meet use the built-in table (:data:`DEFAULT_PATH_GAS`, :data:`DEFAULT_REVERT_GAS`,
  :data:`BRANCH_GAS`), measured on the contracts by :mod:`simulator.competition.calibrate` for every path of the
  default listing. The engine's rounding helpers also branch on the values of their operands, so
  two transactions with one key can differ by some tens of gas (about a hundred at most): off-chain
  gas matches on-chain gas within 0.15 % per transaction (:data:`simulator.competition.calibrate.MAX_ERROR`), not
  to the unit, while winners, rewards, reverts, bad debt and timing match exactly.
  In the update's own block (backruns) the engine skips the staleness arithmetic of the feeds
  published in that block (``updated_at == block.timestamp`` in ``MarginEngine._read``): each such
  feed read costs :data:`FRESH_READ_GAS` less (:func:`fresh_reads` counts them; the tables hold
  gas with older prices, and the on-chain replay records measurements that way too).
"""

from __future__ import annotations

import copy
import dataclasses
import itertools
import logging
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

from eth_utils import keccak, to_checksum_address

from protocol_model.actions import (LiquidationPlan, auto_settlement, deposit, liquidate, seed_house, seed_insurance,
                                    set_answer, trade)
from protocol_model.deploy import DeployConfig, Deployment, feed_age
from protocol_model.errors import ConfigError, Revert
from protocol_model.health import feed_max_age, health, price
from protocol_model.scenarios import moved_answer
from protocol_model.state import Collateral, Feed, Market, Params, Position, ProtocolState
from protocol_model.wad import MAX_PRICE, UINT256_MAX

from protocol_model.seeding import TraderPlan, plan_traders
from devnode.mempool import BlockSelector, outbids
from bot.decide import Reaction, after_refusal, decide, unexpired
from bot.pending import DecoderRegistry, PriceUpdate
from bot.strategy import AccountPlan, Candidate, GasModel, Planner, scratch_state
from bot.txs import Fees, FixedTip, classify_revert, strategy_from_config
from . import gas_table as _builtin
from .agents import (
    BASE_FEE_FLOOR_WEI,
    COLLATERAL_LIQUIDATION,
    MAX_REBID_ROUNDS,
    AgentSpec,
    PoolEntry,
    Scenario,
    SimSettings,
    backrun_fees,
    intrinsic_gas,
    oracle_fees,
    set_answer_calldata,
    liquidate_calldata,
    next_base_fee,
    by_target,
    parse_strategies,
    rebid_fees,
    resolve_asset,
    ticks_at,
)
from .report import BotResult, CompetitionReport, Liquidated, SweepPoint

log = logging.getLogger(__name__)

BLOCK_GAS_LIMIT = 30_029_122          # eth-tester's block gas limit (constant from block to block)
SET_ANSWER_GAS = 45_000               # about one feed update: only decides the update block's base fee change
START_TIMESTAMP = 1_700_000_000
SHOCK_BLOCK = 1                       # off-chain block numbers: setup is block 0

# Execution gas of the default listing (DeployConfig: ETH-PERP, BTC-PERP; WETH, WBTC), measured on
# the contracts by ``python -m simulator.competition.calibrate --write`` (simulator/competition/gas_table.py): a success's path
# gas (``ok|m<market>|a<active markets>|c<held collaterals>|r<reward paid>``, every position long,
# before its storage writes), a revert's (``revert|<reason>|m|a|c``), and the gas of the engine's
# branches (:func:`write_gas`, :func:`short_gas`). See GasTable.
DEFAULT_PATH_GAS: dict[str, int] = dict(_builtin.PATH_GAS)
DEFAULT_REVERT_GAS: dict[str, int] = dict(_builtin.REVERT_GAS)
BRANCH_GAS: dict[str, int] = dict(_builtin.BRANCH_GAS)
FALLBACK_OK_PATH_GAS = 115_000
FALLBACK_REVERT_GAS = 55_000
FALLBACK_SETTLE_GAS = 10_000          # a table measured before automatic settlement has no settlement branches
# The gas a feed read saves when the feed was published in the same block: MarginEngine._read skips
# ``block.timestamp - updated_at > max_age``. Measured on reverts in an update's block (no storage
# writes, so no rounding branches): exactly 49 per read (3 reads 147, 2 reads 98).
FRESH_READ_GAS = 49


# ---------------------------------------------------------------------- initial state


def _address(label: str) -> str:
    return to_checksum_address(keccak(text=f"xmargin-sim:{label}")[-20:])


def synthetic_deployment(config: DeployConfig) -> Deployment:
    """A deployment with made-up addresses for the model-only run (no chain)."""
    feeds = {f.asset: _address(f"feed:{f.asset}") for f in config.feeds}
    return Deployment(
        chain_id=0, block=0, owner=_address("owner"), engine=_address("engine"), lens=_address("lens"),
        quote=_address(f"token:{config.quote_symbol}"), quote_symbol=config.quote_symbol,
        quote_decimals=config.quote_decimals, feeds=feeds,
        collaterals={c.symbol: {"token": _address(f"token:{c.symbol}"), "feed": feeds[c.asset], "decimals": c.decimals,
                                "index": i, "asset": c.asset} for i, c in enumerate(config.collaterals)},
        markets={m.name: {"id": i, "feed": feeds[m.asset], "asset": m.asset} for i, m in enumerate(config.markets)},
    )


def listed_state(config: DeployConfig, dep: Deployment, timestamp: int = START_TIMESTAMP) -> ProtocolState:
    """The protocol right after :func:`protocol_model.deploy.deploy_protocol`: listings, house and
    insurance seeded, prices published at ``timestamp``."""
    feeds: dict[str, Feed] = {}
    for f in config.feeds:
        address = dep.feeds[f.asset]
        feeds[address] = Feed(address, f.decimals, f.price, timestamp, round_id=1, min_answer=1,
                              max_answer=MAX_PRICE // 10 ** (18 - f.decimals))
    markets = [
        Market(i, dep.feeds[m.asset], 10 ** (18 - feeds[dep.feeds[m.asset]].decimals), m.imf, m.mmf, m.liquidation_fee,
               m.taker_fee, m.oi_cap, m.name, max_price_age=feed_age(config, m.asset))
        for i, m in enumerate(config.markets)
    ]
    collaterals = [
        Collateral(dep.collaterals[c.symbol]["token"], dep.feeds[c.asset],
                   10 ** (18 - feeds[dep.feeds[c.asset]].decimals), c.decimals, 10**c.decimals, c.init_weight, c.maint_weight, c.liquidation_discount, c.deposit_cap, i,
                   c.symbol, max_price_age=feed_age(config, c.asset))
        for i, c in enumerate(config.collaterals)
    ]
    params = Params(dep.quote, 10 ** (18 - config.quote_decimals), config.keeper_share, config.max_price_age,
                    config.dust_notional, owner=dep.owner)
    state = ProtocolState(engine=dep.engine, params=params, markets=markets, collaterals=collaterals, feeds=feeds,
                          timestamp=timestamp)
    unit = 10**config.quote_decimals
    if config.house_seed:
        seed_house(state, dep.owner, config.house_seed * unit)
    if config.insurance_seed:
        seed_insurance(state, dep.owner, config.insurance_seed * unit)
    return state


def build_initial_state(accounts: int, seed: int, config: DeployConfig | None = None,
                        dep: Deployment | None = None) -> tuple[ProtocolState, list[TraderPlan]]:
    """The default deployment seeded with ``accounts`` traders as :func:`protocol_model.seeding.seed_accounts`
    does on chain (``dep`` gives real addresses; by default made-up ones)."""
    config = config or DeployConfig()
    dep = dep or synthetic_deployment(config)
    state = listed_state(config, dep)
    prices = {a: price(state, dep.feeds[a], False) for a in ("ETH", "BTC")}
    plans = plan_traders(dep, accounts, seed, prices)
    tokens = (dep.quote, dep.collaterals["WETH"]["token"], dep.collaterals["WBTC"]["token"])
    try:
        for p in plans:
            for token, amount in zip(tokens, (p.usdc, p.weth, p.wbtc)):
                if amount:
                    deposit(state, p.address, token, amount)
        for p in plans:
            for market, size in ((0, p.eth_size), (1, p.btc_size)):
                if size:
                    trade(state, p.address, market, size, UINT256_MAX if size > 0 else 0)
    except Revert as exc:  # dev: the plans are built to pass
        raise ConfigError(f"seeding the model failed: {exc.reason}") from exc
    state.block = 0
    return state, plans


def shocked_answers(state: ProtocolState, dep_feeds: dict[str, str], scenario: Scenario) -> dict[str, int]:
    """Every feed's answer in the shock block: moved for the shocked assets, re-published as it is
    for the others (so that every price is fresh). Raises :class:`ConfigError` for a move out of the
    feed's range."""
    shocks = scenario.shock_map()
    out: dict[str, int] = {}
    for asset, address in dep_feeds.items():
        feed = state.feeds[address]
        answer = feed.answer
        if asset in shocks:
            answer = moved_answer(answer, shocks[asset])
            if not max(1, feed.min_answer) <= answer <= min(feed.max_answer, MAX_PRICE // feed.price_scale):
                raise ConfigError(f"shock {asset}: the price leaves the feed's range")
        out[address] = answer
    unknown = set(shocks) - set(dep_feeds)
    if unknown:
        raise ConfigError(f"unknown asset {sorted(unknown)[0]!r}: known assets are {', '.join(dep_feeds)}")
    return out


# ---------------------------------------------------------------------- gas


def _slot(old: int, new: int) -> str:
    if old == new:
        return "="
    return ("Z" if old == 0 else "N") + ("z" if new == 0 else "n")


@dataclass(frozen=True)
class _Slots:
    """The storage slots a liquidation writes, read from the model state (and the keeper's balance)."""

    values: tuple[int, ...]

    @classmethod
    def read(cls, state: ProtocolState, account: str, market: int, keeper_balance: int,
             engine_balance: int) -> "_Slots":
        acc = state.accounts.get(account)
        pos = acc.positions.get(market, Position()) if acc is not None else Position()
        house = state.house
        assert house is not None
        hpos = house.positions.get(market, Position())
        return cls((
            int(pos.size), int(pos.quote), int(acc.cash) if acc else 0, acc.active_markets if acc else 0,
            int(hpos.size), int(hpos.quote), int(house.cash), house.active_markets,
            int(state.insurance_fund), keeper_balance, engine_balance,
        ))


def _masks(state: ProtocolState, account: str) -> tuple[int, int, int]:
    """(active markets, short positions, held collaterals) of an account, as bit masks."""
    acc = state.accounts.get(account)
    if acc is None:
        return 0, 0, 0
    shorts = sum(1 << m for m, pos in acc.positions.items() if pos.size < 0)
    return acc.active_markets, shorts, state.held_mask(acc)


# How far a liquidation runs the engine's automatic settlement (the key's ``d`` field): not at all
# (the position stays open or the cash is not negative), settled (BadDebtSettled), or checked and
# stopped by the account's collateral, or by its other open positions.
NO_SETTLEMENT, SETTLED, KEPT_BY_COLLATERAL, KEPT_BY_POSITIONS = 0, 1, 2, 3


def fresh_reads(state: ProtocolState, market: int, masks: tuple[int, int, int]) -> int:
    """How many of a liquidation's feed reads find a price published at the state's timestamp (in
    the same block): the market's price (read first, whatever the outcome), then ``_health``'s
    other active markets and held collaterals (``masks`` as :func:`_masks`)."""
    active, _, held = masks
    feeds = [state.markets[market].feed]
    feeds += [m.feed for m in state.markets if active >> m.id & 1 and m.id != market]
    feeds += [c.feed for i, c in enumerate(state.collaterals) if held >> i & 1]
    return sum(state.feeds[f].updated_at == state.timestamp for f in feeds)


def settlement_path(plan: LiquidationPlan, masks: tuple[int, int, int]) -> int:
    """The engine's automatic settlement branch a liquidation took (``masks`` before it, as
    :func:`_masks`): its checks run once the position is closed with the cash negative."""
    if plan.size != 0 or plan.cash >= 0:
        return NO_SETTLEMENT
    if plan.bad_debt > 0:
        return SETTLED
    return KEPT_BY_COLLATERAL if masks[2] else KEPT_BY_POSITIONS


def success_key(market: int, masks: tuple[int, int, int], before: _Slots, after: _Slots, reward: int,
                settlement: int = NO_SETTLEMENT) -> str:
    """``settlement``: :func:`settlement_path`."""
    slots = ",".join(_slot(o, n) for o, n in zip(before.values, after.values))
    return f"ok|m{market}|a{masks[0]}|s{masks[1]}|c{masks[2]}|r{int(reward > 0)}|d{settlement}|{slots}"


def revert_key(reason: str, market: int, masks: tuple[int, int, int]) -> str:
    return f"revert|{reason}|m{market}|a{masks[0]}|s{masks[1]}|c{masks[2]}"


@dataclass(frozen=True)
class GasKey:
    """The parts of a path key (:func:`success_key`, :func:`revert_key`)."""

    reason: str | None                  # None for a success
    market: int
    active: int                         # bit masks: markets with a position, short ones, held collaterals
    shorts: int
    collaterals: int
    reward: bool = False
    settlement: int = NO_SETTLEMENT     # a success's automatic settlement branch (:func:`settlement_path`)
    slots: tuple[str, ...] = ()         # a success's storage writes by class (:data:`SLOTS`)

    @classmethod
    def parse(cls, key: str) -> "GasKey":
        parts = key.split("|")
        try:
            if parts[0] == "ok" and len(parts) == 8 and parts[6][:1] == "d":
                m, a, s, c, r, d = (int(x[1:]) for x in parts[1:7])
                if d in SETTLEMENT_BRANCHES or d == NO_SETTLEMENT:
                    return cls(None, m, a, s, c, bool(r), d, tuple(parts[7].split(",")))
            if parts[0] == "ok" and len(parts) == 7:       # a key measured before automatic settlement: d0
                m, a, s, c, r = (int(x[1:]) for x in parts[1:6])
                return cls(None, m, a, s, c, bool(r), NO_SETTLEMENT, tuple(parts[6].split(",")))
            if parts[0] == "revert" and len(parts) == 6:
                m, a, s, c = (int(x[1:]) for x in parts[2:6])
                return cls(parts[1], m, a, s, c)
        except ValueError:
            pass
        raise ConfigError(f"not a gas table key: {key!r}")

    @property
    def ok(self) -> bool:
        return self.reason is None

    @property
    def settled(self) -> bool:
        return self.settlement == SETTLED

    @property
    def path(self) -> str:
        """The key of the tables (:data:`DEFAULT_PATH_GAS`, :data:`DEFAULT_REVERT_GAS`): the path
        with every position long and, for a success, before its storage writes."""
        if self.reason is None:
            return f"ok|m{self.market}|a{self.active}|c{self.collaterals}|r{int(self.reward)}"
        return f"revert|{self.reason}|m{self.market}|a{self.active}|c{self.collaterals}"

    @property
    def coarse(self) -> str:
        """The class of the key: outcome (and reason), number of active markets and of collaterals."""
        head = "ok" if self.reason is None else f"revert|{self.reason}"
        return f"{head}|{self.active.bit_count()}|{self.collaterals.bit_count()}"


def coarse_key(key: str) -> str:
    """The class of a key: outcome (and reason), number of active markets and of collaterals."""
    return GasKey.parse(key).coarse


def _path_class(path: str) -> str:
    """The class of a table path (:attr:`GasKey.path`), as :func:`coarse_key`."""
    parts = path.split("|")
    head, a, c = ("ok", parts[2], parts[3]) if parts[0] == "ok" else (f"revert|{parts[1]}", parts[3], parts[4])
    return f"{head}|{int(a[1:]).bit_count()}|{int(c[1:]).bit_count()}"


# EIP-2200 / EIP-2929 price of one SSTORE to a slot the call has already accessed (warm), whose
# value is still the transaction's original one (a liquidation writes each slot at most once), by
# class; and the refund of clearing a slot (EIP-3529).
SSTORE_GAS = {"=": 100, "Nn": 2_900, "Nz": 2_900, "Zn": 20_000, "Zz": 100}
CLEAR_REFUND = 4_800
COLD_SLOAD_GAS = 2_100
NOMINAL_INTRINSIC_GAS = 21_800         # a liquidate call's intrinsic gas, about (its call data varies)
# The slots of a success's key (the order of _Slots), and which of them ``liquidate`` writes only in
# a branch: the account's active-markets word when its position closes (read warm by _health), the
# house's when its position closes or opens (read cold, only then), and the two quote balances only
# when a reward is paid (the token's transfer; its cold reads are part of the path's gas, ``r1``).
SLOTS = ("size", "quote", "cash", "active", "house size", "house quote", "house cash", "house active",
         "insurance", "keeper balance", "engine balance")
ACCOUNT_ACTIVE, HOUSE_SIZE, HOUSE_ACTIVE, KEEPER_BALANCE, ENGINE_BALANCE = 3, 4, 7, 9, 10
_BRANCH_WRITES = (ACCOUNT_ACTIVE, HOUSE_ACTIVE, KEEPER_BALANCE, ENGINE_BALANCE)


def write_gas(slots: tuple[str, ...] | list[str], branches: dict[str, int] | None = None) -> tuple[int, int]:
    """(gas, refund) of a success's storage writes, slot by slot (:data:`SLOTS`), beyond its path's gas.

    Every slot costs :data:`SSTORE_GAS` by class, except the ones written only in a branch
    (:data:`_BRANCH_WRITES`): unchanged, they are not written at all (0); the house's active-markets
    word is read cold before it is written (+ :data:`COLD_SLOAD_GAS`). The code of the branches
    themselves is priced by ``branches`` (default :data:`BRANCH_GAS`, measured): ``close`` when the
    account's position closes, ``house_close`` / ``house_open`` when the house's goes to / from
    zero. Cleared slots earn :data:`CLEAR_REFUND` each (the caller caps the refund)."""
    b = BRANCH_GAS if branches is None else branches
    gas = 0
    for i, s in enumerate(slots):
        if i in _BRANCH_WRITES and s == "=":
            continue
        gas += SSTORE_GAS[s] + (COLD_SLOAD_GAS if i == HOUSE_ACTIVE else 0)
    if slots[0] == "Nz":
        gas += b["close"]
    if slots[HOUSE_SIZE] == "Nz":
        gas += b["house_close"]
    elif slots[HOUSE_SIZE] == "Zn":
        gas += b["house_open"]
    return gas, CLEAR_REFUND * sum(s == "Nz" for s in slots)


def short_gas(key: GasKey, branches: dict[str, int] | None = None) -> int:
    """The extra gas of short positions (the engine's signed floor division rounds a negative
    product down: one more multiplication and comparison): ``short`` for each short position
    ``_health`` values, and for a success in a short position the plan's own products of its
    size, ``short_plan`` (``short_close`` when the position closes: one product fewer)."""
    b = BRANCH_GAS if branches is None else branches
    gas = b["short"] * (key.shorts & key.active).bit_count()
    if key.ok and key.shorts >> key.market & 1:
        gas += b["short_close"] if key.slots[0] == "Nz" else b["short_plan"]
    return gas


# The branch of each settlement path but the first (its gas in BRANCH_GAS).
SETTLEMENT_BRANCHES = {SETTLED: "settle", KEPT_BY_COLLATERAL: "settle_check", KEPT_BY_POSITIONS: "settle_check_positions"}


def settle_gas(key: GasKey, branches: dict[str, int] | None = None) -> int:
    """The extra gas of a liquidation's automatic settlement branch (:func:`settlement_path`):
    ``settle`` when it settles the bad debt it leaves (the checks, then the engine's ``_settle``:
    the fund, the house's cash and the account's cash written a second time, ``BadDebtSettled``
    logged; the slots' classes of :func:`write_gas` already compare the values before the call with
    those after the settlement, so a second write costs what a dirty slot costs), ``settle_check``
    when the account's collateral stops it, ``settle_check_positions`` when its other positions do."""
    name = SETTLEMENT_BRANCHES.get(key.settlement)
    if name is None:
        return 0
    b = BRANCH_GAS if branches is None else branches
    return b.get(name, FALLBACK_SETTLE_GAS if key.settled else 0)


def capped_refund(refund: int, gas_before_refund: int) -> int:
    """The refund a transaction gets: at most a fifth of its gas used before refunds (EIP-3529)."""
    return min(refund, gas_before_refund // 5)


def exec_gas_before_refund(exec_gas: int, refund: int, intrinsic: int = NOMINAL_INTRINSIC_GAS) -> int:
    """The execution gas before refunds of a transaction that used ``intrinsic + exec_gas`` and
    earned ``refund`` (the inverse of :func:`capped_refund`)."""
    if refund <= (intrinsic + exec_gas + refund) // 5:
        return exec_gas + refund
    used = intrinsic + exec_gas
    total = 5 * used // 4 - 2
    while total - total // 5 < used:
        total += 1
    return total - intrinsic


@dataclass(frozen=True)
class GasSample:
    """One mined liquidation: its path key, ``gas used - intrinsic gas``, its intrinsic gas, and
    where it comes from (for reports)."""

    key: str
    exec_gas: int
    intrinsic: int
    case: str = ""

    @property
    def gas_used(self) -> int:
        return self.intrinsic + self.exec_gas


@dataclass
class GasTable:
    """Execution gas (gas used - intrinsic gas) by path key; see the module docstring.

    ``measured`` comes from an on-chain run (``report.gas_table``). A success's execution gas is
    the gas of its path (market, active markets, held collaterals, reward paid or not; every
    position long) plus that of its short positions (:func:`short_gas`) and the price of its
    storage writes (:func:`write_gas`) minus the refunds of cleared slots (capped at a fifth of the
    gas, as the EVM does). A revert's is the gas of its path plus that of its short positions. A key
    not measured takes its path's gas from any measured key of the same path, else from ``paths``
    / ``reverts`` (default :data:`DEFAULT_PATH_GAS` / :data:`DEFAULT_REVERT_GAS`, with the
    branches' gas :data:`BRANCH_GAS`), else the median of its class. ``misses`` counts the lookups
    that were not exact. The built-in tables are measured by :mod:`simulator.competition.calibrate` on every path
    of the default listing; their predictions are within the engine's rounding branches (about a
    hundred gas at most) of the chain's.
    """

    measured: dict[str, int] = field(default_factory=dict)
    misses: int = 0
    paths: dict[str, int] = field(default_factory=lambda: dict(DEFAULT_PATH_GAS))
    reverts: dict[str, int] = field(default_factory=lambda: dict(DEFAULT_REVERT_GAS))
    branches: dict[str, int] = field(default_factory=lambda: dict(BRANCH_GAS))

    def __post_init__(self) -> None:
        self._paths: dict[str, int] = dict(self.paths)
        self._reverts: dict[str, int] = dict(self.reverts)
        for key, gas in self.measured.items():
            k = GasKey.parse(key)
            if k.ok:
                cost, refund = write_gas(k.slots, self.branches)
                # dev: a capped refund is undone for a typical intrinsic gas (off by a quarter of the difference)
                self._paths[k.path] = (exec_gas_before_refund(gas, refund) - short_gas(k, self.branches)
                                       - settle_gas(k, self.branches) - cost)
            else:
                self._reverts[k.path] = gas - short_gas(k, self.branches)
        self._classes: dict[str, list[int]] = {}
        for path, gas in (*self._paths.items(), *self._reverts.items()):
            self._classes.setdefault(_path_class(path), []).append(gas)

    def _class(self, key: GasKey, fallback: int) -> int:
        seen = self._classes.get(key.coarse)
        return sorted(seen)[len(seen) // 2] if seen else fallback

    def exec_gas(self, key: str, intrinsic: int = 21_000) -> int:
        gas = self.measured.get(key)
        if gas is not None:
            return gas
        self.misses += 1
        k = GasKey.parse(key)
        extra = short_gas(k, self.branches)
        if not k.ok:
            return (self._reverts.get(k.path) or self._class(k, FALLBACK_REVERT_GAS)) + extra
        base = (self._paths.get(k.path) or self._class(k, FALLBACK_OK_PATH_GAS)) + extra + settle_gas(k, self.branches)
        cost, refund = write_gas(k.slots, self.branches)
        return base + cost - capped_refund(refund, intrinsic + base + cost)


# ---------------------------------------------------------------------- the node


@dataclass
class ModelTx:
    """A liquidation in the model node's pool."""

    hash: str
    sender: str
    nonce: int
    account: str
    market: int
    max_size: int
    data: bytes
    gas_limit: int
    max_fee_wei: int
    tip_wei: int
    seq: int
    expected_profit_wei: int = 0
    backrun: bool = False                  # sent in the update round, backrunning the pending update

    def entry(self) -> PoolEntry:
        return PoolEntry(self.sender, self.nonce, self.account, self.market, self.tip_wei, self.max_fee_wei)

    def effective_tip(self, base_fee: int) -> int | None:
        if self.max_fee_wei < base_fee:
            return None
        return min(self.tip_wei, self.max_fee_wei - base_fee)


@dataclass
class OracleTx:
    """A price update (``PriceFeed.set_answer``) in the model node's pool."""

    hash: str
    sender: str
    nonce: int
    feed: str
    answer: int
    gas_limit: int
    max_fee_wei: int
    tip_wei: int
    seq: int

    @property
    def data(self) -> bytes:
        return set_answer_calldata(self.answer)

    def node_view(self) -> dict[str, Any]:
        """The transaction as a node's pending-transaction source shows it (:func:`bot.pending.normalize_tx`)."""
        return {"hash": self.hash, "from": self.sender, "to": self.feed, "input": "0x" + self.data.hex(),
                "nonce": self.nonce, "gas": self.gas_limit, "type": 2, "gasPrice": None,
                "maxFeePerGas": self.max_fee_wei, "maxPriorityFeePerGas": self.tip_wei}

    def effective_tip(self, base_fee: int) -> int | None:
        if self.max_fee_wei < base_fee:
            return None
        return min(self.tip_wei, self.max_fee_wei - base_fee)


@dataclass
class Receipt:
    tx: ModelTx | OracleTx
    block: int
    index: int
    ok: bool
    reason: str | None
    gas_used: int
    base_fee: int
    tip: int                               # effective priority fee per gas
    plan: LiquidationPlan | None = None
    key: str = ""
    fresh_reads: int = 0                   # feed reads of a price published in this block (:func:`fresh_reads`)

    @property
    def cost_wei(self) -> int:
        return self.gas_used * (self.base_fee + self.tip)

    @property
    def tips_wei(self) -> int:
        return self.gas_used * self.tip


class ModelChain:
    """The dev node's pool and block builder over a :class:`ProtocolState` (see the module docstring)."""

    def __init__(self, state: ProtocolState, gas: GasTable, *, head: int, timestamp: int,
                 base_fee_wei: int = BASE_FEE_FLOOR_WEI, head_gas_used: int = 0,
                 gas_limit: int = BLOCK_GAS_LIMIT) -> None:
        self.state = state
        self.gas = gas
        self.head = head
        self.timestamp = timestamp
        self.base_fee = base_fee_wei            # of the head block
        self.head_gas_used = head_gas_used
        self.gas_limit = gas_limit
        self.pool: dict[tuple[str, int], ModelTx | OracleTx] = {}
        self.nonces: dict[str, int] = {}        # mined transaction count per sender
        self.receipts: dict[str, Receipt] = {}
        self.blocks: dict[int, list[Receipt]] = {}
        self.rewards: dict[str, int] = {}       # quote native units paid to each liquidator
        self.engine_balance = 10**30            # never zero: only its zero-ness matters for gas
        self._seq = itertools.count()
        self._versions: dict[str, int] = {}     # account -> changes so far (for the caches)
        self._health_cache: dict[str, tuple[int, int, int, int]] = {}   # account -> (version, equity, ih, mh)
        self._order: list[str] = []
        self._liquidatable: tuple[int, list[str]] | None = None
        self.prices_version = 0                 # price updates executed so far (for the caches)

    # views -----------------------------------------------------------------------
    @property
    def next_base_fee(self) -> int:
        return next_base_fee(self.base_fee, self.head_gas_used, self.gas_limit)

    def version(self, account: str) -> int:
        return self._versions.get(account, 0)

    def health_of(self, account: str) -> tuple[int, int, int]:
        """(equity, init_health, maint_health) at the head, loose (the bot's HealthBook reads)."""
        v = self.version(account)
        cached = self._health_cache.get(account)
        if cached is not None and cached[0] == v:
            return cached[1], cached[2], cached[3]
        h = health(self.state, self.state.accounts[account])
        self._health_cache[account] = (v, h.equity, h.init_health, h.maint_health)
        return h.equity, h.init_health, h.maint_health

    def liquidatable(self) -> list[str]:
        """Accounts with ``maint_health < 0`` at the head, in address order."""
        if self._liquidatable is None or self._liquidatable[0] != self.head:
            self._liquidatable = (self.head, [a for a in self.ordered_accounts() if self.health_of(a)[2] < 0])
        return self._liquidatable[1]

    def pending_entries(self) -> list[PoolEntry]:
        return [tx.entry() for tx in sorted(self.pool.values(), key=lambda t: t.seq) if isinstance(tx, ModelTx)]

    def pending_updates(self, decoders: DecoderRegistry) -> list[PriceUpdate]:
        """The price updates ``decoders`` read in the pool, in arrival order (what a backrunner
        watches; the liquidations in the pool are not price updates)."""
        return decoders.updates(tx.node_view() for tx in sorted(self.pool.values(), key=lambda t: t.seq)
                                if isinstance(tx, OracleTx))

    def ordered_accounts(self) -> list[str]:
        """Every account, in address order."""
        if len(self._order) != len(self.state.accounts):
            self._order = sorted(self.state.accounts)
        return self._order

    # submission --------------------------------------------------------------------
    def submit(self, sender: str, nonce: int, account: str, market: int, max_size: int, fees: Fees,
               gas_limit: int, expected_profit_wei: int, backrun: bool = False) -> ModelTx:
        """Add a transaction (or replace the sender's one with this nonce, by the dev node's rule)."""
        old = self.pool.get((sender, nonce))
        if old is not None and not outbids(old.max_fee_wei, old.tip_wei, fees.max_fee_per_gas,
                                           fees.max_priority_fee_per_gas):
            raise ConfigError("replacement transaction underpriced")  # dev: re-bids bump by 12.5 %
        seq = next(self._seq)
        tx = ModelTx(f"{sender}:{nonce}:{seq}", sender, nonce, account, market, max_size,
                    liquidate_calldata(account, market, max_size), gas_limit, fees.max_fee_per_gas,
                    fees.max_priority_fee_per_gas, seq, expected_profit_wei, backrun)
        self.pool[(sender, nonce)] = tx
        return tx

    def submit_update(self, sender: str, nonce: int, feed: str, answer: int, fees: Fees,
                      gas_limit: int = 200_000) -> OracleTx:
        """Add a price update (``set_answer``) from the feeds' updater."""
        seq = next(self._seq)
        tx = OracleTx(f"{sender}:{nonce}:{seq}", sender, nonce, feed, answer, gas_limit, fees.max_fee_per_gas,
                      fees.max_priority_fee_per_gas, seq)
        self.pool[(sender, nonce)] = tx
        return tx

    # blocks ------------------------------------------------------------------------
    def senders(self) -> set[str]:
        """The senders with a pooled transaction (the pool as :class:`devnode.mempool.BlockSelector` reads it)."""
        return {s for s, _ in self.pool}

    def tx_at(self, sender: str, nonce: int) -> ModelTx | OracleTx | None:
        return self.pool.get((sender, nonce))

    def mine(self) -> list[Receipt]:
        """Build and mine the next block from the pool with the dev node's :class:`BlockSelector`."""
        base = self.next_base_fee
        number = self.head + 1
        self.timestamp += 1
        self.state.timestamp = self.timestamp
        used = 0
        receipts: list[Receipt] = []

        def include(tx: ModelTx | OracleTx) -> bool:
            nonlocal used
            # dev: the selector hands out only transactions that pay the base fee (tip not None)
            r = self.execute(tx, number, len(receipts), base, tx.effective_tip(base) or 0)
            used += r.gas_used
            receipts.append(r)
            del self.pool[(tx.sender, tx.nonce)]
            self.nonces[tx.sender] = tx.nonce + 1
            return True

        BlockSelector(self, lambda sender: self.nonces.get(sender, 0), base).fill(lambda: self.gas_limit - used,
                                                                                 include)
        self.head = number
        self.base_fee = base
        self.head_gas_used = used
        self.blocks[number] = receipts
        for r in receipts:
            self.receipts[r.tx.hash] = r
        self.state.block = number
        return receipts

    def execute(self, tx: ModelTx | OracleTx, number: int, index: int, base: int, tip: int) -> Receipt:
        """Apply one transaction to the state as block ``number`` would (no pool bookkeeping)."""
        state = self.state
        if isinstance(tx, OracleTx):
            # the feed's updater publishes at the block's timestamp; every price-dependent cache goes
            set_answer(state, tx.feed, tx.answer, state.timestamp)
            self.prices_version += 1
            self._health_cache.clear()
            self._liquidatable = None
            return Receipt(tx, number, index, True, None, min(SET_ANSWER_GAS, tx.gas_limit), base, tip)
        masks = _masks(state, tx.account)
        fresh = fresh_reads(state, tx.market, masks)
        keeper = self.rewards.get(tx.sender, 0)
        before = _Slots.read(state, tx.account, tx.market, keeper, self.engine_balance)
        try:
            plan = liquidate(state, tx.sender, tx.account, tx.market, tx.max_size)
        except Revert as exc:
            key = revert_key(exc.reason or "", tx.market, masks)
            intrinsic = intrinsic_gas(tx.data)
            gas = intrinsic + self.gas.exec_gas(key, intrinsic) - FRESH_READ_GAS * fresh
            return Receipt(tx, number, index, False, exc.reason or "", min(gas, tx.gas_limit), base, tip, key=key,
                           fresh_reads=fresh)
        reward = int(plan.keeper_reward)
        self.rewards[tx.sender] = keeper + reward
        self.engine_balance -= reward
        self._versions[tx.account] = self.version(tx.account) + 1
        after = _Slots.read(state, tx.account, tx.market, keeper + reward, self.engine_balance)
        key = success_key(tx.market, masks, before, after, reward, settlement_path(plan, masks))
        intrinsic = intrinsic_gas(tx.data)
        gas = intrinsic + self.gas.exec_gas(key, intrinsic) - FRESH_READ_GAS * fresh
        return Receipt(tx, number, index, True, None, min(gas, tx.gas_limit), base, tip, plan, key, fresh)


# ---------------------------------------------------------------------- the bots


def pending_view(state: ProtocolState, updates: Iterable[PriceUpdate], timestamp: int, block: int) -> ProtocolState:
    """``state`` with the pending price ``updates`` applied at ``timestamp`` (the next block's): the
    feeds are copied, everything else is shared (the view is read, and liquidations are previewed on
    :func:`bot.strategy.scratch_state` copies of it)."""
    feeds = {a: copy.copy(f) for a, f in state.feeds.items()}
    view = dataclasses.replace(state, feeds=feeds, timestamp=timestamp, block=block)
    for u in updates:
        set_answer(view, u.feed, u.answer, timestamp)
    return view



class ModelAgent:
    """One :class:`bot.liquidator.Liquidator`, tick for tick, against a :class:`ModelChain`."""

    def __init__(self, spec: AgentSpec, settings: SimSettings) -> None:
        self.spec = spec
        self.settings = settings
        self.address = spec.address
        config = spec.bot_config(settings)
        self.config = config
        self.strategy = strategy_from_config(config)
        self.planner = Planner(GasModel(self.strategy, config.liquidation_gas_estimate), config.min_profit_usd_wad,
                               liquidator=self.address, collateral_liquidation=COLLATERAL_LIQUIDATION)
        self.backoffs: dict[str, int] = {}                    # account -> until block (inclusive)
        self.suppressed: dict[tuple[str, str], int] = {}      # (account, target) -> until block
        self.in_flight: dict[int, ModelTx] = {}                # nonce -> newest transaction
        self.next_nonce = 0
        self.rebids = 0
        self._plans: dict[str, tuple[tuple[int, int, int, int, bool], AccountPlan]] = {}

    # one tick ------------------------------------------------------------------------
    def tick(self, chain: ModelChain, eth_feed: str) -> None:
        head = chain.head
        self._settle(chain, head)
        liquidatable = chain.liquidatable()
        if liquidatable:
            self._liquidate(chain, head, liquidatable, eth_feed)

    def _settle(self, chain: ModelChain, head: int) -> None:
        blocks = self.config.lost_race_backoff_blocks
        for nonce in sorted(self.in_flight):
            tx = self.in_flight[nonce]
            r = chain.receipts.get(tx.hash)
            if r is None:
                continue
            del self.in_flight[nonce]
            if r.ok:
                continue
            lost = classify_revert(r.reason) == "lost_race"
            reaction, until = after_refusal(0, lost, r.block if lost else head, blocks)
            self._mark(reaction, tx.account, str(tx.market), until)

    def _mark(self, reaction: Reaction, account: str, target: str, until: int) -> None:
        """Book a refusal as the bot does (its store's back-off: a later deadline wins)."""
        if reaction == "back_off":
            self.backoffs[account] = max(self.backoffs.get(account, until), until)
        elif reaction == "suppress":
            self.suppressed[(account, target)] = until

    def _plan(self, chain: ModelChain, address: str, base_fee: int, eth_price: int) -> AccountPlan:
        """The planner's plan, cached while the account, the fees, the ETH price and the feeds'
        freshness (each feed's own max age) stay the same (the agents hold no quote: the budget is always 0)."""
        state = chain.state
        fresh = all(f.updated_at >= chain.timestamp or chain.timestamp - f.updated_at <= feed_max_age(state, a)
                    for a, f in state.feeds.items())
        key = (chain.version(address), chain.prices_version, base_fee, eth_price, fresh)
        cached = self._plans.get(address)
        if cached is not None and cached[0] == key:
            return cached[1]
        plan = self.planner.plan(chain.state, address, base_fee_wei=base_fee, eth_price_wad=eth_price, quote_budget=0)
        self._plans[address] = (key, plan)
        return plan

    def _liquidate(self, chain: ModelChain, head: int, liquidatable: list[str], eth_feed: str,
                   view: ProtocolState | None = None, fixed_fees: Fees | None = None,
                   planner: Planner | None = None) -> None:
        """One tick's decision and sends at the head; with ``view`` (a backrun), on the head state
        with the pending prices, planned by ``planner`` and every liquidation sent with ``fixed_fees``."""
        state = chain.state if view is None else view
        # store.backoffs(head): expired entries go; the rest are skipped
        self.backoffs = unexpired(self.backoffs, head)
        self.suppressed = unexpired(self.suppressed, head)
        base_fee = chain.base_fee
        eth_price = price(state, eth_feed, False)
        in_flight = {tx.account for tx in self.in_flight.values()}      # the sender's pending_for()
        cached = None if view is not None else (
            lambda address, _budget: self._plan(chain, address, base_fee, eth_price))
        decision = decide(state, liquidatable, planner or self.planner, base_fee_wei=base_fee, eth_price_wad=eth_price,
                          backoffs=self.backoffs, suppressed=self.suppressed, in_flight=in_flight.__contains__,
                          plan=cached)
        failed: set[str] = set()
        blocks = self.config.lost_race_backoff_blocks
        for cand in decision.chosen:
            if cand.account in failed:
                continue
            reason = self._preflight(state, cand)
            if reason is None:
                fees = fixed_fees or self.strategy.fees(base_fee, cand.expected_profit_wei)
                if fees.max_fee_per_gas < base_fee:
                    failed.add(cand.account)
                    continue
                nonce = self.next_nonce
                self.next_nonce += 1
                self.in_flight[nonce] = chain.submit(self.address, nonce, cand.account, int(cand.target), cand.amount,
                                                     fees, self.config.liquidation_gas_estimate,
                                                     cand.expected_profit_wei, backrun=view is not None)
                continue
            failed.add(cand.account)
            reaction, until = after_refusal(cand.step, classify_revert(reason) == "lost_race", head, blocks)
            self._mark(reaction, cand.account, str(cand.target), until)

    # backrunning -----------------------------------------------------------------------
    def backrun(self, chain: ModelChain, eth_feed: str) -> None:
        """The update round: liquidate what the pending price updates make liquidatable, on a view
        of the head state with those prices, with this agent's backrun fees (the updates' lowest
        tip, or its own; :meth:`AgentSpec.backrun_tip`). The updates are read from the pool with the
        bot's decoders (:class:`bot.pending.DecoderRegistry`: each feed's ``set_answer`` from its
        updater)."""
        state = chain.state
        decoders = DecoderRegistry.for_feeds(dict.fromkeys(state.feeds, state.params.owner or None))
        updates = chain.pending_updates(decoders)
        if not updates:
            return
        head = chain.head
        self._settle(chain, head)
        view = pending_view(chain.state, updates, chain.timestamp + 1, head + 1)
        liquidatable = [a for a in chain.ordered_accounts() if health(view, view.accounts[a]).maint_health < 0]
        if not liquidatable:
            return
        oracle_tip = min(int(u.tx["maxPriorityFeePerGas"]) for u in updates)
        tip = self.spec.backrun_tip(oracle_tip)
        fees = backrun_fees(tip, max(int(u.tx["maxFeePerGas"]) for u in updates), chain.base_fee, self.settings)
        # profits are planned at the backrun's tip, as the bot's backrunner plans them
        planner = Planner(GasModel(FixedTip(tip, self.config.max_fee_cap_wei), self.config.liquidation_gas_estimate),
                          self.config.min_profit_usd_wad, liquidator=self.address,
                          collateral_liquidation=COLLATERAL_LIQUIDATION)
        self._liquidate(chain, head, liquidatable, eth_feed, view=view, fixed_fees=fees, planner=planner)

    def _preflight(self, state: ProtocolState, cand: Candidate) -> str | None:
        """The bot's ``eth_call`` at the head: None when it passes, else the revert reason."""
        try:
            liquidate(scratch_state(state, cand.account), self.address, cand.account, int(cand.target), cand.amount)
        except Revert as exc:
            return exc.reason or ""
        return None

    # re-bidding -------------------------------------------------------------------------
    def rebid(self, chain: ModelChain) -> bool:
        """Outbid rivals on this agent's pending liquidations (see :func:`~simulator.competition.agents.rebid_fees`)."""
        changed = False
        # This agent's replacements do not change its rivals' entries: one view serves the call.
        rivals = by_target(chain.pending_entries(), self.address)
        for nonce in sorted(self.in_flight):
            own = self.in_flight[nonce]
            if chain.pool.get((self.address, nonce)) is not own:
                continue
            fees = rebid_fees(own.entry(), rivals.get((own.account, own.market), []),
                              next_base_fee_wei=chain.next_base_fee, head_base_fee_wei=chain.base_fee,
                              expected_profit_wei=own.expected_profit_wei, settings=self.settings)
            if fees is None:
                continue
            self.in_flight[nonce] = chain.submit(self.address, nonce, own.account, own.market, own.max_size, fees,
                                                 own.gas_limit, own.expected_profit_wei)
            self.rebids += 1
            changed = True
        return changed


# ---------------------------------------------------------------------- the run


@dataclass
class Initial:
    """A seeded state to run scenarios from (copied for each run) and the feeds by asset."""

    state: ProtocolState
    feeds: dict[str, str]               # asset -> feed address
    traders: list[str]
    quote_symbol: str = "USDC"
    quote_decimals: int = 6

    @classmethod
    def build(cls, accounts: int, seed: int, config: DeployConfig | None = None,
              dep: Deployment | None = None) -> "Initial":
        config = config or DeployConfig()
        dep = dep or synthetic_deployment(config)
        state, plans = build_initial_state(accounts, seed, config, dep)
        return cls(state, dict(dep.feeds), [p.address for p in plans], config.quote_symbol, config.quote_decimals)


def run_offchain(scenario: Scenario, agents: list[AgentSpec], settings: SimSettings | None = None, *,
                 gas_table: GasTable | dict[str, int] | None = None,
                 initial: Initial | None = None) -> CompetitionReport:
    """Run the competition on the model; see the module docstring."""
    t0 = time.monotonic()
    settings = settings or SimSettings()
    gas = gas_table if isinstance(gas_table, GasTable) else GasTable(dict(gas_table or {}))
    scenario = _resolved(scenario, settings.deploy)
    if initial is None:
        initial = Initial.build(scenario.accounts, scenario.seed, settings.deploy)
    elif len(initial.traders) != scenario.accounts:
        raise ConfigError(f"the initial state has {len(initial.traders)} traders, the scenario {scenario.accounts}")
    state = copy.deepcopy(initial.state)
    chain = ModelChain(state, gas, head=SHOCK_BLOCK - 1, timestamp=state.timestamp)
    eth_feed = initial.feeds["ETH"]
    bots = [ModelAgent(spec, settings) for spec in agents]
    # The update round: the price updates wait in the pool, the backrunners answer, block S is mined.
    updater = state.params.owner
    fees = oracle_fees(scenario.oracle_tip_wei, chain.base_fee)
    for nonce, (address, answer) in enumerate(shocked_answers(state, initial.feeds, scenario).items()):
        chain.submit_update(updater, nonce, address, answer, fees)
    for b in bots:
        if b.spec.backruns:
            b.backrun(chain, eth_feed)
    chain.mine()
    eth_price = price(state, eth_feed, False)
    for r in range(scenario.blocks):
        h = SHOCK_BLOCK + r
        ticked = [b for b in bots if ticks_at(b.spec.latency, h, SHOCK_BLOCK)]
        for b in ticked:
            b.tick(chain, eth_feed)
        rebidders = [b for b in ticked if b.spec.rebids]
        for _ in range(MAX_REBID_ROUNDS):
            if not any([b.rebid(chain) for b in rebidders]):
                break
        chain.mine()
    report = _report(scenario, agents, bots, chain, initial, eth_price, "offchain")
    report.elapsed_s = time.monotonic() - t0
    if gas.misses:
        log.debug("%d gas lookup(s) fell back to a class value", gas.misses)
    return report


def _resolved(scenario: Scenario, config: DeployConfig) -> Scenario:
    shocks = tuple((resolve_asset(config, a), f) for a, f in scenario.shocks)
    return dataclasses.replace(scenario, shocks=shocks)


def _report(scenario: Scenario, specs: list[AgentSpec], bots: list[ModelAgent], chain: ModelChain,
            initial: Initial, eth_price: int, mode: str) -> CompetitionReport:
    state = chain.state
    results = {b.address: BotResult(s.name, s.strategy, s.kind, s.latency, b.address, rebids=b.rebids)
               for s, b in zip(specs, bots)}
    names = {b.address: s.name for s, b in zip(specs, bots)}
    liquidations: list[Liquidated] = []
    settled = socialised = 0
    updates = [(r.block, r.index) for rs in chain.blocks.values() for r in rs if isinstance(r.tx, OracleTx)]
    update_at = max(updates, default=None)    # the last price update's place; None: never mined
    for number in sorted(chain.blocks):
        for r in chain.blocks[number]:
            if isinstance(r.tx, OracleTx):
                continue
            res = results[r.tx.sender]
            if r.tx.backrun:
                res.count_backrun(update_at is None or (r.block, r.index) < update_at, r.ok, r.cost_wei)
            res.mined += 1
            res.gas_used += r.gas_used
            res.tips_wei += r.tips_wei
            if r.ok:
                assert r.plan is not None
                res.won += 1
                res.gas_success_wei += r.cost_wei
                res.rewards_native += int(r.plan.keeper_reward)
                liquidations.append(Liquidated(number - SHOCK_BLOCK, r.tx.account, r.tx.market, names[r.tx.sender],
                                               int(r.plan.size_delta), int(r.plan.keeper_reward)))
                s = auto_settlement(r.plan)
                if s is not None:
                    settled += s.deficit
                    socialised += s.socialised
            else:
                res.reverted += 1
                res.gas_reverted_wei += r.cost_wei
    for tx in chain.pool.values():
        if isinstance(tx, ModelTx):
            results[tx.sender].pending_at_end += 1
    bad_debt, bankrupt, liquidatable = final_health(state, initial.traders)
    report = CompetitionReport(
        mode=mode, seed=scenario.seed, accounts=scenario.accounts, shocks=scenario.shock_map(), blocks=scenario.blocks,
        quote_symbol=initial.quote_symbol, quote_decimals=initial.quote_decimals,
        eth_price_wad=eth_price, base_fee_wei=BASE_FEE_FLOOR_WEI, bots=list(results.values()),
        liquidations=liquidations, bad_debt_usd_wad=bad_debt, bad_debt_settled_usd_wad=settled,
        socialised_usd_wad=socialised, bankrupt_accounts=bankrupt, liquidatable_at_end=liquidatable,
    )
    return report.finish()


def final_health(state: ProtocolState, traders: Iterable[str]) -> tuple[int, int, int]:
    """(bad debt USD WAD, bankrupt accounts, liquidatable accounts) over ``traders`` (loose reads)."""
    bad = bankrupt = liquidatable = 0
    for address in traders:
        acc = state.accounts.get(address)
        if acc is None:
            continue
        h = health(state, acc)
        if h.equity < 0:
            bad += -h.equity
            bankrupt += 1
        if h.maint_health < 0:
            liquidatable += 1
    return bad, bankrupt, liquidatable


def sweep(scenario: Scenario, strategy: str, counts: Iterable[int] = range(1, 9), settings: SimSettings | None = None,
          *, gas_table: GasTable | dict[str, int] | None = None, initial: Initial | None = None,
          progress: Callable[[int], Any] | None = None) -> list[SweepPoint]:
    """The tip share of the scenario with ``strategy`` cycled over 1, 2, ... bots (off-chain runs)."""
    settings = settings or SimSettings()
    if initial is None:
        initial = Initial.build(scenario.accounts, scenario.seed, settings.deploy)
    table = gas_table if isinstance(gas_table, GasTable) else GasTable(dict(gas_table or {}))
    out: list[SweepPoint] = []
    for k in counts:
        r = run_offchain(scenario, parse_strategies(strategy, k), settings, gas_table=table, initial=initial)
        out.append(SweepPoint(k, r.tip_share_wad, r.tips_usd_wad, r.rewards_usd_wad, len(r.liquidations)))
        if progress is not None:
            progress(k)
    return out


__all__ = [
    "BLOCK_GAS_LIMIT",
    "BRANCH_GAS",
    "DEFAULT_PATH_GAS",
    "DEFAULT_REVERT_GAS",
    "FRESH_READ_GAS",
    "GasKey",
    "GasSample",
    "GasTable",
    "Initial",
    "ModelAgent",
    "ModelChain",
    "build_initial_state",
    "coarse_key",
    "final_health",
    "fresh_reads",
    "listed_state",
    "revert_key",
    "run_offchain",
    "settle_gas",
    "settlement_path",
    "shocked_answers",
    "success_key",
    "sweep",
    "synthetic_deployment",
]
