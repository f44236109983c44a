"""Measure the off-chain simulator's built-in gas table (:mod:`simulator.competition.gas_table`) on a chain.

    python -m simulator.competition.calibrate              # measure on an in-process dev node, print the fit
    python -m simulator.competition.calibrate --write      # ... and rewrite simulator/competition/gas_table.py
    python -m simulator.competition.calibrate --check      # exit 1 unless simulator/competition/gas_table.py equals the measurement
    python -m simulator.competition.calibrate --rpc URL    # on another node (its account 0 unlocked and funded)

:func:`measure` (about a minute) deploys the default listing (:class:`~protocol_model.deploy.DeployConfig`)
and sends, from traders and keepers it creates, every kind of ``liquidate`` the simulator meets,
mirrored on the model (:class:`~simulator.competition.offchain.ModelChain`) so that each receipt gets the path
key the simulator gives it:

* **successes** on every path ``(market, active markets, held collaterals, reward paid or not)``:
  for each set of collaterals (none, WETH, WBTC, both) and of positions (ETH-PERP, BTC-PERP, both),
  with every combination of long and short positions, two partial liquidations by one keeper (the
  first one's quote balance goes from zero: first-touch storage; then warm) and one of a single
  unit (no reward: no transfer); a whole close that pays a reward (to a new keeper or to one
  paid before), long and short; and the whole close of a bankrupt account, for each of those
  (the insurance fund pays the reward; the engine's automatic settlement checks the account:
  without collateral or another position, the close settles the bad debt it leaves);
* the rarer writes of the house: its position in a market closed (to zero) and opened (from
  zero), with and without a position in the other market (two more deployments); the main
  deployment meets some of them too, and accounts whose cash closes at exactly zero;
* **reverts**: ``"healthy"`` for every set of positions (long and short) and collaterals,
  including none (an account a rival's liquidation restored: the lost race), and
  ``"no position"`` for liquidatable accounts without a position in the market (a rival closed
  it), including bankrupt accounts left with nothing but their negative cash and collateral.

Each account trades at the listing's prices and then gets its own price shock, found on the
model (the smallest move against its positions that puts it where the case needs it). Every
receipt's status must match the model's, and every case ends by comparing the model's account,
house and insurance fund with the chain's.

:func:`fit` turns the samples into the table. The execution gas of a transaction is modelled as
in :class:`~simulator.competition.offchain.GasTable`: its path's gas, plus the gas of the engine's branches
(:data:`BRANCHES`: a position closed, the house's position to or from zero, short positions, bad
debt settled in the call) times how often the transaction runs them, plus its storage writes at their EIP-2200/2929 prices,
minus its capped refund. The branches' gas is the least-squares fit over all samples (exact
arithmetic, so the table is reproducible to the gas), each path's gas the mean of its samples.
:func:`errors` gives each sample's error against a table; the largest is a hundred gas or so (the
engine's rounding helpers branch on their operands), about 0.1 % of a transaction's gas.
"""

from __future__ import annotations

import argparse
import copy
import functools
import logging
import sys
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from typing import Any

from eth_account import Account as EthAccount
from eth_account.signers.local import LocalAccount
from eth_utils import keccak
from web3 import HTTPProvider, Web3

from protocol_model.actions import deposit, liquidate, set_answer, trade
from protocol_model.chain import Sender, connect
from protocol_model.deploy import DeployConfig, Deployment, compile_contracts, contract_at, deploy_protocol
from protocol_model.wad import ETHER, UINT256_MAX, WAD
from protocol_model.errors import ChainError, ConfigError, Revert
from protocol_model.health import health, price
from protocol_model.loader import load_state
from protocol_model.scenarios import moved_answer
from protocol_model.state import Account, Position, ProtocolState

from .agents import intrinsic_gas, liquidate_calldata
from .offchain import (GasKey, GasSample, GasTable, ModelChain, ModelTx, exec_gas_before_refund, settle_gas, short_gas,
                       write_gas)

log = logging.getLogger(__name__)

TABLE_PATH = Path(__file__).with_name("gas_table.py")
FUNDS_WEI = ETHER                  # gas money of each calibration key
LIQUIDATE_GAS = 600_000            # gas limit of every liquidation (reverts are mined, not estimated)
SETUP_GAS = 400_000
SHOCK_STEP = WAD // 400            # 0.25 %: the search grid of price moves
MAX_SHOCK = 90 * WAD // 100
# The largest error the built-in table may make on one transaction, as a fraction of its gas used.
# The fit's largest error is 0.11 % (106 gas, on a liquidation that pays no reward, which bots do
# not send for profit; under 90 gas, 0.07 %, on the others): the engine's rounding helpers branch on
# their operands, which no key captures. 0.15 % leaves a third more for roundings the calibration did not meet, and
# a path off by 200 gas still fails on transactions of up to 130,000 gas, one off by 300 on all.
# --write and --check refuse a fit beyond it; tests/e2e/test_simulation.py holds each transaction
# of its on-chain runs to it.
MAX_ERROR = 0.0015
ETH, BTC = 0, 1                    # market ids (and collateral indexes) of the default listing
MARKETS = (ETH, BTC)
Progress = Callable[[str], Any]


# ---------------------------------------------------------------------- the chain


def _key(label: str) -> LocalAccount:
    return EthAccount.from_key(keccak(b"xmargin-gas-calibration:" + label.encode()))


class _Chain:
    """Sends transactions one at a time, each waiting for its receipt."""

    def __init__(self, w3: Web3) -> None:
        self.w3 = w3
        self.owner = Sender.unlocked(w3, 0)
        self.chain_id = int(w3.eth.chain_id)
        self._labels = 0

    def new_key(self, kind: str) -> Sender:
        self._labels += 1
        sender = Sender.from_key(self.w3, _key(f"{kind}:{self._labels}"))
        self.send(self.owner, None, 21_000, to=sender.address, value=FUNDS_WEI)
        return sender

    def send(self, sender: Sender, call: Any, gas: int, *, to: str | None = None, value: int = 0) -> Any:
        nonce = int(self.w3.eth.get_transaction_count(sender.address, "pending"))
        base = int(self.w3.eth.get_block("latest")["baseFeePerGas"])
        tx_hash = sender.submit(call, gas, nonce, to=to, value=value, max_fee=2 * base + sender.tip_wei,
                                chain_id=self.chain_id)
        return self.w3.eth.wait_for_transaction_receipt(tx_hash, timeout=120)

    def timestamp(self, receipt: Any) -> int:
        return int(self.w3.eth.get_block(receipt["blockNumber"])["timestamp"])


class _Venue:
    """One deployment and its mirror on the model; every action goes to both and must agree."""

    def __init__(self, chain: _Chain, config: DeployConfig, name: str) -> None:
        self.chain = chain
        self.name = name
        self.config = config
        self.dep: Deployment = deploy_protocol(chain.w3, chain.owner, config)
        state = load_state(chain.w3, self.dep, [])
        self.model = ModelChain(state, GasTable(), head=state.block, timestamp=state.timestamp)
        self.base_answers = {self.dep.feeds[f.asset]: f.price for f in config.feeds}
        self.tokens = (self.dep.quote, self.dep.collaterals["WETH"]["token"], self.dep.collaterals["WBTC"]["token"])
        self.samples: list[GasSample] = []

    @property
    def state(self) -> ProtocolState:
        return self.model.state

    def _mirror(self, receipt: Any, what: str, action: Callable[[], Any]) -> None:
        self.state.timestamp = self.chain.timestamp(receipt)
        try:
            action()
            ok = True
        except Revert as exc:
            ok, reason = False, exc.reason
        if ok != (int(receipt["status"]) == 1):
            raise ChainError(f"calibration ({self.name}): {what}: chain {'ok' if receipt['status'] else 'reverted'}, "
                             f"model {'ok' if ok else 'reverted: ' + str(reason)}")

    # actions ------------------------------------------------------------------------
    def set_prices(self, answers: dict[str, int]) -> None:
        for address, answer in answers.items():
            feed = contract_at(self.chain.w3, "PriceFeed", address)
            r = self.chain.send(self.chain.owner, feed.functions.set_answer(answer), SETUP_GAS)
            self._mirror(r, "set_answer", lambda: set_answer(self.state, address, answer, self.state.timestamp))

    def reset_prices(self) -> None:
        self.set_prices(self.base_answers)

    def open_account(self, deposits: tuple[int, int, int], sizes: tuple[int, int]) -> Sender:
        """A funded trader with ``deposits`` (quote, WETH, WBTC native units) and positions ``sizes``."""
        chain, eng = self.chain, self.dep.engine_contract
        trader = chain.new_key("trader")
        contracts = (self.dep.quote_contract, self.dep.token_contract("WETH"), self.dep.token_contract("WBTC"))
        for token, contract, amount in zip(self.tokens, contracts, deposits):
            if not amount:
                continue
            chain.send(chain.owner, contract.functions.mint(trader.address, amount), SETUP_GAS)
            chain.send(trader, contract.functions.approve(eng.address, UINT256_MAX), SETUP_GAS)
            r = chain.send(trader, eng.functions.deposit(token, amount), SETUP_GAS)
            self._mirror(r, "deposit", lambda: deposit(self.state, trader.address, token, amount))
        for market, size in zip(MARKETS, sizes):
            if size:
                limit = UINT256_MAX if size > 0 else 0
                r = chain.send(trader, eng.functions.trade(market, size, limit), SETUP_GAS)
                self._mirror(r, "trade", lambda: trade(self.state, trader.address, market, size, limit))
        return trader

    def liquidate(self, keeper: Sender, account: str, market: int, max_size: int, case: str) -> GasSample:
        data = liquidate_calldata(account, market, max_size)
        call = self.dep.engine_contract.functions.liquidate(account, market, max_size)
        r = self.chain.send(keeper, call, LIQUIDATE_GAS)
        self.state.timestamp = self.chain.timestamp(r)
        tx = ModelTx(r["transactionHash"].hex(), keeper.address, 0, account, market, max_size, data,
                    LIQUIDATE_GAS, 0, 0, 0)
        model = self.model.execute(tx, int(r["blockNumber"]), 0, 0, 0)
        if model.ok != (int(r["status"]) == 1):
            raise ChainError(f"calibration ({self.name}, {case}): liquidate: chain "
                             f"{'ok' if r['status'] else 'reverted'}, model "
                             f"{'ok' if model.ok else 'reverted: ' + str(model.reason)}")
        intrinsic = intrinsic_gas(data)
        sample = GasSample(model.key, int(r["gasUsed"]) - intrinsic, intrinsic, case)
        self.samples.append(sample)
        return sample

    def check_mirror(self, addresses: Iterable[str]) -> None:
        """The model's accounts and house equal the chain's (the mirror did not drift)."""
        addresses = list(addresses)
        chain = load_state(self.chain.w3, self.dep, addresses)
        for a in addresses:
            if chain.accounts.get(a) != self.state.accounts.get(a):
                raise ChainError(f"calibration ({self.name}): the model's account {a} differs from the chain's")
        if chain.house != self.state.house or chain.insurance_fund != self.state.insurance_fund:
            raise ChainError(f"calibration ({self.name}): the model's house or insurance fund differs from the chain's")


# ---------------------------------------------------------------------- the model's view of a shock


def _scratch(state: ProtocolState, address: str) -> ProtocolState:
    """A copy of ``state`` with ``address``, the house and the feeds only, free to change."""
    acc = state.accounts[address]
    house = state.house
    assert house is not None
    return ProtocolState(
        engine=state.engine, params=state.params, markets=state.markets, collaterals=state.collaterals,
        feeds={a: copy.copy(f) for a, f in state.feeds.items()},
        accounts={address: Account(acc.address, acc.cash, dict(acc.collateral), dict(acc.positions))},
        house=Account(house.address, house.cash, dict(house.collateral), dict(house.positions)),
        insurance_fund=state.insurance_fund, total_collateral=dict(state.total_collateral),
        timestamp=state.timestamp, block=state.block,
    )


def _plan(state: ProtocolState, account: str, market: int, max_size: int) -> Any:
    """The liquidation's plan on a scratch copy, or None when it reverts."""
    try:
        return liquidate(_scratch(state, account), state.engine, account, market, max_size)
    except Revert:
        return None


def _adverse(venue: _Venue, account: str) -> dict[str, int]:
    """Each feed's adverse direction for ``account``: up for the feed of a short position, else down."""
    acc = venue.state.accounts[account]
    out = {a: -1 for a in venue.base_answers}
    for m, pos in acc.positions.items():
        if pos.size < 0:
            out[venue.state.markets[m].feed] = 1
    return out


def _find_shock(venue: _Venue, account: str, ok: Callable[[ProtocolState], bool], why: str) -> dict[str, int]:
    """The answers of the smallest move of every feed against ``account`` (a multiple of
    :data:`SHOCK_STEP`, from the listing's prices) under which ``ok(scratch state)`` holds."""
    directions = _adverse(venue, account)
    for step in range(1, MAX_SHOCK // SHOCK_STEP + 1):
        answers = {a: moved_answer(x, directions[a] * step * SHOCK_STEP) for a, x in venue.base_answers.items()}
        scratch = _scratch(venue.state, account)
        for address, answer in answers.items():
            set_answer(scratch, address, answer, scratch.timestamp)
        if ok(scratch):
            return answers
    raise ConfigError(f"calibration: no price move puts account {account} where the case needs it ({why})")


def _liquidatable(state: ProtocolState, account: str) -> bool:
    return health(state, state.accounts[account]).maint_health < 0


def _size(state: ProtocolState, account: str, market: int) -> int:
    acc = state.accounts.get(account)
    return abs(int(acc.positions.get(market, Position()).size)) if acc is not None else 0


# ---------------------------------------------------------------------- the cases


@dataclass(frozen=True)
class AccountSpec:
    """A trader: positions in ``markets`` (bit mask; short in those of ``shorts``), collateral
    ``collaterals`` (bit mask of WETH, WBTC; quote cash only when 0), leverage in percent of its
    initial margin, and ``small``: a market that gets a tenth of the notional (the other the rest)."""

    markets: int
    collaterals: int
    shorts: int = 0
    leverage_pct: int = 900
    small: int | None = None

    def label(self) -> str:
        return f"a{self.markets}|s{self.shorts}|c{self.collaterals}|x{self.leverage_pct / 100:g}"


def _deposits_and_sizes(venue: _Venue, spec: AccountSpec) -> tuple[tuple[int, int, int], tuple[int, int]]:
    cfg = venue.config
    state = venue.state
    weth = 5 * 10 ** cfg.collaterals[0].decimals if spec.collaterals & 1 else 0
    wbtc = 2 * 10 ** (cfg.collaterals[1].decimals - 1) if spec.collaterals & 2 else 0
    usdc = 10_000 * 10**cfg.quote_decimals if spec.collaterals == 0 else 0
    prices = [price(state, m.feed, False) for m in state.markets]
    margin = usdc * 10 ** (18 - cfg.quote_decimals)
    for amount, col in ((weth, cfg.collaterals[0]), (wbtc, cfg.collaterals[1])):
        margin += amount * prices[ETH if col.asset == "ETH" else BTC] // 10**col.decimals * col.init_weight // WAD
    notional = margin * spec.leverage_pct // 100
    if spec.markets == 3:
        shares = [50, 50] if spec.small is None else [90, 90]
        if spec.small is not None:
            shares[spec.small] = 10
    else:
        shares = [100 if spec.markets & (1 << m) else 0 for m in MARKETS]
    sizes = tuple((-1 if spec.shorts >> m & 1 else 1) * (notional * shares[m] // 100 * WAD // prices[m])
                  for m in MARKETS)
    return (usdc, weth, wbtc), sizes  # type: ignore[return-value]


def _subsets(mask: int) -> list[int]:
    return [s for s in range(mask + 1) if s & mask == s]


class _Calibration:
    def __init__(self, chain: _Chain, progress: Progress | None) -> None:
        self.chain = chain
        self.progress = progress
        self._paid_keeper: Sender | None = None

    def say(self, text: str) -> None:
        log.info("%s", text)
        if self.progress is not None:
            self.progress(text)

    def fresh_keeper(self) -> Sender:
        return self.chain.new_key("keeper")

    def paid_keeper(self, venue: _Venue) -> Sender:
        """A keeper whose quote balance is not zero (paid before)."""
        if self._paid_keeper is None:
            self._paid_keeper = self.fresh_keeper()
            venue.chain.send(venue.chain.owner, venue.dep.quote_contract.functions.mint(self._paid_keeper.address, 1),
                             SETUP_GAS)
            venue.model.rewards[self._paid_keeper.address] = 1      # the model's view of its quote balance
        return self._paid_keeper

    def account(self, venue: _Venue, spec: AccountSpec) -> str:
        venue.reset_prices()
        deposits, sizes = _deposits_and_sizes(venue, spec)
        return venue.open_account(deposits, sizes).address

    # partial liquidations ------------------------------------------------------------
    def partial(self, venue: _Venue, spec: AccountSpec) -> None:
        """Per market: two partial liquidations paying a reward (the first to a keeper never paid:
        its quote balance goes from zero), then one of one unit (no reward: no transfer)."""
        case = f"partial {spec.label()}"
        address = self.account(venue, spec)
        markets = [m for m in MARKETS if spec.markets >> m & 1]

        def deep_enough(s: ProtocolState) -> bool:
            """Liquidatable by 1 % of its notional: room for three liquidations per market."""
            notional = sum(_size(s, address, m) * price(s, s.markets[m].feed, False) // WAD for m in markets)
            return health(s, s.accounts[address]).maint_health < -notional // 100

        venue.set_prices(_find_shock(venue, address, deep_enough, case))
        for m in MARKETS:
            if m not in markets:        # a rival closed it: a lost race
                venue.liquidate(self.fresh_keeper(), address, m, 1, case)
        for m in markets:
            keeper = self.fresh_keeper()
            for _ in range(2):
                venue.liquidate(keeper, address, m, self._partial_size(venue.state, address, m), case)
            venue.liquidate(keeper, address, m, 1, case)
        venue.check_mirror([address])

    @staticmethod
    def _partial_size(state: ProtocolState, address: str, market: int) -> int:
        """A size that pays a reward, keeps the position open, and leaves the account more than half
        as far below its maintenance margin as it is (room for the next liquidation)."""
        before = health(state, state.accounts[address]).maint_health
        q = _size(state, address, market) // 4
        while q > 1:
            after = _scratch(state, address)
            p = liquidate(after, state.engine, address, market, q)
            if p.keeper_reward > 0 and p.size != 0 and 2 * health(after, after.accounts[address]).maint_health < before:
                return q
            q //= 2
        raise ConfigError(f"calibration: no partial liquidation of {address} in market {market} pays a reward")

    # whole closes ----------------------------------------------------------------------
    def close(self, venue: _Venue, spec: AccountSpec, market: int, keeper: Sender, bankrupt: bool = False) -> str:
        """A whole close of ``market`` that pays a reward (``bankrupt``: of an account with no
        equity left whose cash the close takes below zero, so the account pays nothing, the
        insurance fund pays the reward, and the engine checks whether to settle; an account left
        with nothing but its negative cash is settled in the same call), then the lost races that
        may follow it."""
        case = f"{'bankrupt' if bankrupt else 'close'} m{market} {spec.label()}"
        address = self.account(venue, spec)

        def closes(s: ProtocolState) -> bool:
            p = _plan(s, address, market, UINT256_MAX)
            if p is None or p.size != 0 or p.keeper_reward == 0:
                return False
            return p.charged == 0 and p.cash < 0 if bankrupt else p.charged > 0

        venue.set_prices(_find_shock(venue, address, closes, case))
        venue.liquidate(keeper, address, market, UINT256_MAX, case)
        for m in MARKETS:
            if m == market or _liquidatable(venue.state, address):
                venue.liquidate(self.fresh_keeper(), address, m, 1, case)
        venue.check_mirror([address])
        return address

    # reverts of healthy accounts -------------------------------------------------------
    def healthy(self, venue: _Venue, spec: AccountSpec) -> None:
        case = f"healthy {spec.label()}"
        if spec.markets == 0 and spec.collaterals == 0:
            address = self.fresh_keeper().address          # never deposited: no state at all
        else:
            address = self.account(venue, spec)
        for m in MARKETS:
            venue.liquidate(self.fresh_keeper(), address, m, 1, case)

    # the house's position crossing zero ------------------------------------------------
    def house(self, other_market: bool) -> _Venue:
        """A fresh deployment where only calibration traders trade ETH-PERP: a whole close takes
        the house's position to zero, and a partial one opens it from zero (``other_market``: the
        house also holds BTC-PERP, so its active-markets word stays non-zero)."""
        venue = _Venue(self.chain, DeployConfig(), f"house{'+btc' if other_market else ''}")
        if other_market:
            self.account(venue, AccountSpec(2, 0, leverage_pct=200))
        self.close(venue, AccountSpec(1, 0), ETH, self.fresh_keeper())
        # a long and a short of one size: the house's ETH-PERP position is zero again
        venue.reset_prices()
        deposits, sizes = _deposits_and_sizes(venue, AccountSpec(1, 0))
        long = venue.open_account(deposits, sizes).address
        venue.open_account(deposits, (-sizes[0], 0))
        assert venue.state.house is not None and ETH not in venue.state.house.positions
        venue.set_prices(_find_shock(venue, long, lambda s: _liquidatable(s, long), "house open"))
        venue.liquidate(self.fresh_keeper(), long, ETH, self._partial_size(venue.state, long, ETH), "house open")
        venue.check_mirror([long])
        return venue

    # all of it --------------------------------------------------------------------------
    def run(self) -> list[GasSample]:
        venue = _Venue(self.chain, DeployConfig(), "main")
        for c in range(4):
            self.say(f"collaterals c{c}: partial liquidations, whole closes, bankrupt accounts, healthy accounts")
            for a in (1, 2, 3):
                for shorts in _subsets(a):
                    self.partial(venue, AccountSpec(a, c, shorts))
            closes = [(1, ETH, 0), (1, ETH, 1), (2, BTC, 0), (2, BTC, 2),
                      (3, ETH, 0), (3, ETH, 1), (3, BTC, 0), (3, BTC, 2)]
            for i, (a, m, shorts) in enumerate(closes):
                keeper = self.fresh_keeper() if (c + i) % 2 == 0 else self.paid_keeper(venue)
                self.close(venue, AccountSpec(a, c, shorts, small=m if a == 3 else None), m, keeper)
            # the bankrupt close of an account's larger position: its loss takes the cash below zero
            # while the other position is open (the settlement's check of the positions)
            for a, m, shorts in closes:
                self.close(venue, AccountSpec(a, c, shorts, small=1 - m if a == 3 else None), m, self.fresh_keeper(),
                           bankrupt=True)
            for a in range(4):
                for shorts in _subsets(a):
                    self.healthy(venue, AccountSpec(a, c, shorts, leverage_pct=200))
        self.say("the house's position crossing zero")
        venues = [venue, self.house(False), self.house(True)]
        return [s for v in venues for s in v.samples]


def measure(w3: Web3 | None = None, progress: Progress | None = None) -> list[GasSample]:
    """Every calibration liquidation's sample, on ``w3`` (default: a new in-process dev node)."""
    compile_contracts()
    if w3 is not None:
        return _Calibration(_Chain(w3), progress).run()
    from devnode import DevNode

    node = DevNode(port=0)
    node.start()
    try:
        return _Calibration(_Chain(Web3(HTTPProvider(node.url))), progress).run()
    finally:
        node.stop()


# ---------------------------------------------------------------------- the fit


BRANCHES = ("close", "house_close", "house_open", "short", "short_plan", "short_close", "settle", "settle_check",
            "settle_check_positions")


@dataclass
class Table:
    """A built-in gas table (:mod:`simulator.competition.gas_table`): paths, reverts, branches, and what it was fit to."""

    paths: dict[str, int]
    reverts: dict[str, int]
    branches: dict[str, int]
    contracts: str = ""                     # contracts_hash() of the contracts it was measured on
    samples: int = 0

    def gas_table(self) -> GasTable:
        return GasTable(paths=dict(self.paths), reverts=dict(self.reverts), branches=dict(self.branches))

    def values(self) -> tuple[dict[str, int], dict[str, int], dict[str, int], str]:
        return self.paths, self.reverts, self.branches, self.contracts


def _unit(name: str) -> dict[str, int]:
    return {b: int(b == name) for b in BRANCHES}


def _row(sample: GasSample) -> tuple[str, bool, int, list[int]]:
    """(table path, success?, gas of the path alone, coefficient of each branch) of a sample."""
    k = GasKey.parse(sample.key)
    zero = _unit("")
    if not k.ok:
        return k.path, False, sample.exec_gas, [short_gas(k, _unit(b)) + settle_gas(k, _unit(b)) for b in BRANCHES]
    writes, refund = write_gas(k.slots, zero)
    before = exec_gas_before_refund(sample.exec_gas, refund, sample.intrinsic)
    coefficients = [write_gas(k.slots, _unit(b))[0] - writes + short_gas(k, _unit(b)) + settle_gas(k, _unit(b))
                    for b in BRANCHES]
    return k.path, True, before - writes, coefficients


def _solve(matrix: list[list[Fraction]], vector: list[Fraction]) -> list[Fraction]:
    """Gauss-Jordan elimination in exact arithmetic (the normal equations of the fit)."""
    n = len(vector)
    rows = [list(r) + [v] for r, v in zip(matrix, vector)]
    for col in range(n):
        pivot = next((r for r in range(col, n) if rows[r][col] != 0), None)
        if pivot is None:
            raise ConfigError(f"calibration: the samples do not determine the branch {BRANCHES[col]!r}")
        rows[col], rows[pivot] = rows[pivot], rows[col]
        lead = rows[col][col]
        rows[col] = [x / lead for x in rows[col]]
        for r in range(n):
            if r != col and rows[r][col] != 0:
                f = rows[r][col]
                rows[r] = [x - f * y for x, y in zip(rows[r], rows[col])]
    return [rows[i][n] for i in range(n)]


def fit(samples: list[GasSample]) -> Table:
    """The table that fits ``samples`` best (least squares, in exact arithmetic: reproducible).

    Each sample's gas is its path's gas plus the branches' (:data:`BRANCHES`) times their
    coefficients (:func:`~simulator.competition.offchain.write_gas`, :func:`~simulator.competition.offchain.short_gas`); a
    success's before its refund is capped, so the cap is undone first. The branches' gas comes
    from the samples with their paths' means taken out (each path's gas is then the mean of its
    samples'), rounded to whole gas.
    """
    groups: dict[str, list[tuple[int, list[int]]]] = {}
    kinds: dict[str, bool] = {}
    for s in samples:
        path, ok, y, x = _row(s)
        groups.setdefault(path, []).append((y, x))
        kinds[path] = ok
    n = len(BRANCHES)
    matrix = [[Fraction(0)] * n for _ in range(n)]
    vector = [Fraction(0)] * n
    for rows in groups.values():
        my = Fraction(sum(y for y, _ in rows), len(rows))
        mx = [Fraction(sum(x[i] for _, x in rows), len(rows)) for i in range(n)]
        for y, x in rows:
            cx = [x[i] - mx[i] for i in range(n)]
            for i in range(n):
                vector[i] += cx[i] * (y - my)
                for j in range(n):
                    matrix[i][j] += cx[i] * cx[j]
    branches = {b: round(v) for b, v in zip(BRANCHES, _solve(matrix, vector))}
    beta = [branches[b] for b in BRANCHES]
    paths: dict[str, int] = {}
    reverts: dict[str, int] = {}
    for path in sorted(groups, key=_path_order):
        rows = groups[path]
        gas = round(Fraction(sum(y - sum(c * b for c, b in zip(x, beta)) for y, x in rows), len(rows)))
        (paths if kinds[path] else reverts)[path] = gas
    return Table(paths, reverts, branches, contracts_hash(), len(samples))


def _path_order(path: str) -> tuple[Any, ...]:
    parts = path.split("|")
    return (parts[0] != "ok", parts[1] if parts[0] == "revert" else "", *(int(p[1:]) for p in parts if p[1:].isdigit()))


@dataclass(frozen=True)
class Error:
    sample: GasSample
    predicted: int                   # execution gas the table predicts

    @property
    def gas(self) -> int:
        return self.predicted - self.sample.exec_gas

    @property
    def relative(self) -> float:
        """Of the transaction's gas used."""
        return self.gas / self.sample.gas_used


def errors(samples: list[GasSample], table: Table | GasTable | None = None) -> list[Error]:
    """Each sample's execution gas as ``table`` (default: the built-in one) predicts it."""
    gt = table.gas_table() if isinstance(table, Table) else table if table is not None else GasTable()
    return [Error(s, gt.exec_gas(s.key, s.intrinsic)) for s in samples]


# ---------------------------------------------------------------------- the table's module


@functools.cache
def contracts_hash() -> str:
    """keccak of the runtime code of the contracts a liquidation runs (engine, token, feed)."""
    from vyper.compiler import compile_code

    import contracts

    h = b""
    for name in GAS_CONTRACTS:
        code = compile_code(contracts.source(name), contract_path=f"{name}.vy", output_formats=["bytecode_runtime"])
        h += name.encode() + bytes.fromhex(code["bytecode_runtime"].removeprefix("0x"))
    return "0x" + keccak(h).hex()


GAS_CONTRACTS = ("MarginEngine", "Token", "PriceFeed")


def render(table: Table, errs: list[Error]) -> str:
    """The source of :mod:`simulator.competition.gas_table` for ``table`` fit to the samples of ``errs``."""
    worst = max(errs, key=lambda e: abs(e.relative))

    def block(name: str, d: dict[str, int], comment: str) -> str:
        lines = "".join(f'    "{k}": {v},\n' for k, v in d.items())
        return f"# {comment}\n{name}: dict[str, int] = {{\n{lines}}}\n"

    return (
        '"""The off-chain simulator\'s built-in gas table (see :class:`simulator.competition.offchain.GasTable`).\n\n'
        "Generated by ``python -m simulator.competition.calibrate --write``; do not edit. Measured on the contracts whose\n"
        f"runtime code hashes to ``CONTRACTS_HASH``, from {table.samples} liquidations of every path; against them\n"
        f"its largest error is {max(abs(e.gas) for e in errs)} gas, {abs(worst.relative) * 100:.2f} % of a "
        "transaction's gas used.\n"
        '"""\n\n'
        f'CONTRACTS_HASH = "{table.contracts}"\n\n'
        + block("PATH_GAS", table.paths, "A success's execution gas before its storage writes, every position long.")
        + "\n" + block("REVERT_GAS", table.reverts, "A revert's execution gas, every position long.")
        + "\n" + block("BRANCH_GAS", table.branches, "The gas of the engine's branches (write_gas, short_gas).")
    )


def builtin() -> Table:
    """The committed table (:mod:`simulator.competition.gas_table`)."""
    from . import gas_table

    return Table(dict(gas_table.PATH_GAS), dict(gas_table.REVERT_GAS), dict(gas_table.BRANCH_GAS),
                 gas_table.CONTRACTS_HASH)


def summary(errs: list[Error]) -> str:
    """Per table path: samples, their gas used (least - most) and the largest error (gas, % of gas used)."""
    by_path: dict[str, list[Error]] = {}
    for e in errs:
        by_path.setdefault(GasKey.parse(e.sample.key).path, []).append(e)
    lines = [f"{'path':34s} {'n':>3s} {'measured':>17s} {'max error':>16s}"]
    for path in sorted(by_path, key=_path_order):
        es = by_path[path]
        used = [e.sample.gas_used for e in es]
        w = max(es, key=lambda x: abs(x.relative))
        lines.append(f"{path:34s} {len(es):3d} {min(used):8d}-{max(used):8d} {w.gas:+6d} {w.relative * 100:+6.3f} %")
    w = max(errs, key=lambda x: abs(x.relative))
    lines.append(f"{len(errs)} liquidations: largest error {max(abs(e.gas) for e in errs)} gas, "
                 f"{abs(w.relative) * 100:.3f} % of gas used ({w.sample.key}, {w.sample.case})")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m simulator.competition.calibrate",
                                 description="Measure the off-chain simulator's built-in gas table on a chain.")
    ap.add_argument("--rpc", help="a node's JSON-RPC URL (default: a new in-process dev node)")
    mode = ap.add_mutually_exclusive_group()
    mode.add_argument("--write", action="store_true", help=f"rewrite {TABLE_PATH}")
    mode.add_argument("--check", action="store_true", help=f"exit 1 unless {TABLE_PATH.name} equals the measurement")
    ap.add_argument("-q", "--quiet", action="store_true", help="no progress and no per-path listing")
    args = ap.parse_args(argv)

    def say(text: str) -> None:
        if not args.quiet:
            print(text, file=sys.stderr)

    samples = measure(connect(args.rpc, timeout=60) if args.rpc else None, progress=say)
    table = fit(samples)
    errs = errors(samples, table)
    if not args.quiet:
        print(summary(errs))
        print("branches: " + ", ".join(f"{k} {v}" for k, v in table.branches.items()))
    worst = max(errs, key=lambda e: abs(e.relative))
    if abs(worst.relative) > MAX_ERROR:
        print(f"the fit misses {worst.sample.key} ({worst.sample.case}) by {worst.gas:+d} gas, more than "
              f"{MAX_ERROR:.2%} of its gas: the contracts have a branch the gas model (GasTable) does not know",
              file=sys.stderr)
        return 1
    if args.write:
        TABLE_PATH.write_text(render(table, errs))
        say(f"wrote {TABLE_PATH}")
    elif args.check:
        if builtin().values() != table.values():
            print(f"{TABLE_PATH} is stale: run python -m simulator.competition.calibrate --write", file=sys.stderr)
            return 1
        say(f"{TABLE_PATH} is up to date")
    return 0


if __name__ == "__main__":
    sys.exit(main())
