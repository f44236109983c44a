"""Stateful property test of the real MarginEngine: SPEC section 7, invariants 1 to 4 and 6.

Three traders (``trader``, ``trader2``, ``rival``) deposit, withdraw and trade while prices move
and time passes; the ``liquidator`` (and, now and then, a trader) liquidates positions and
collateral, singly and in ``liquidate_many`` batches, and settles bad debt; the owner changes the
per-feed maximum price ages and seeds the house and the insurance fund. Each example starts with a
case drawn from q6/q8/q18 (decimals) and ``q6-fund50`` (the q6 listing with an insurance fund of
50 USDC, so that the house pays what the fund cannot) and runs inside its own chain snapshot
(taken in ``__init__``, reverted in ``teardown``).

Every action's outcome is predicted exactly before it is sent (success or the exact revert or
skip reason, and every value of its events, from the account's state and SPEC sections 5-6 in
integer arithmetic) and checked after. A liquidation reads health as SPEC section 6 "Prices a
liquidation needs" says: a collateral whose feed is older than its own max age is worth 0, a
position in a market whose feed is older than its max age counts its loss and none of its profit;
the test computes that reading itself and holds ``liquidation_health`` to it for every account
after every step. On top of that:

1. **Conservation** (checked after every step): ``quote.balanceOf(engine) * quote_scale >=
   insurance_fund + sum over the traders, the liquidator and the house of (cash + sum_m quote_m)``,
   and for every market the sizes of all those accounts sum to zero.
2. **Healthy accounts are not liquidatable**: whenever the liquidation reading's
   ``maint_health >= 0``, ``liquidate`` and ``liquidate_collateral`` revert ``"healthy"`` and a
   ``liquidate_many`` order on it is skipped with ``SKIP_HEALTHY``.
3. **A liquidation does not hurt the account and always pays its caller** (both kinds, single and
   batched, every executed order of a batch checked on its own): with ``(E0, M0)`` the equity and
   maint_health (liquidation reading) before and ``(E1, M1)`` after the order (its automatic
   settlement included):
   * ``E1 >= min(E0, 0)`` for ``liquidate_collateral``, exactly; ``E1 >= min(E0, 0) - 1`` for
     ``liquidate``, the wei being the upnl split of one close at one price
     (``mul_down(a) + mul_down(b) >= mul_down(a + b) - 1``; docs/protocol.md);
   * ``M1 >= M0 - 3`` for ``liquidate`` (the upnl split, the requirement's rounding, the penalty
     rounded up); ``M1 >= M0 - 2`` for ``liquidate_collateral``, except when the whole balance
     is taken for its whole discounted value (docs/protocol.md, "the last collateral unit"),
     where ``M1 > M0 - quote_scale``;
   * ``liquidate``: the caller receives ``mul_down(penalty, keeper_share)`` in native quote units,
     rounded down, of the full ``penalty = mul_up(notional(q), liquidation_fee)``, whether or not the
     account is bankrupt; the account pays ``min(penalty, max(equity after the close, 0))``;
     the fund receives the difference, or pays it, and the house pays what the fund cannot;
   * ``liquidate_collateral``: the caller pays ``repay`` and receives collateral worth ``repay``
     at ``P * (1 - discount)`` rounded down (the whole balance when it repays the balance's whole
     discounted value): the full discount; the fund (then the house) credits the account what
     its equity cannot bear.
4. **Nobody withdraws more than its equity**: a successful withdrawal of ``a`` takes at most the
   equity the account had (``value(a) <= E0``, value rounded down) and leaves ``E1 >= 0`` and
   ``init_health >= 0``; and a rule tries, for every trader, to withdraw quote worth ``E0 + 1``
   wei rounded up to a native unit, or the smallest collateral amount worth more than ``E0``,
   and requires a revert. Per trader the USD value withdrawn and deposited (at the prices of the
   moment) is tracked and shown with ``note()``.
6. **Events carry the fund and the house**: a mirror that only ever *sets* the insurance fund and
   the house's cash, sizes and quotes from the resulting values carried by the engine's events
   (``Trade``, ``Liquidation``, ``CollateralLiquidation``, ``BadDebtSettled``, ``HouseSeeded``,
   ``InsuranceSeeded``), in log order, equals the engine after every step; every event that
   changes them is one of those (the others leave them unchanged: checked by the same mirror).

Account state is read through ``Lens.accounts`` (one call for every account), which
tests/integration/test_lens.py holds equal to the engine's own views.
"""

from __future__ import annotations

import copy
import dataclasses
from collections import Counter
from dataclasses import dataclass
from typing import Any

import pytest
from eth_tester.exceptions import TransactionFailed
from eth_utils import event_abi_to_log_topic
from hypothesis import note as hypothesis_note, settings
from hypothesis.errors import InvalidArgument
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    initialize,
    invariant,
    precondition,
    rule,
    run_state_machine_as_test,
)
from web3.exceptions import ContractLogicError
from web3.logs import DISCARD

from conftest import Protocol, config_for
from engine_helpers import ceil_div, div_up, mul_down, mul_up, perp_term  # the contract tests' own arithmetic
from protocol_model.chain import revert_reason
from protocol_model.deploy import deploy_protocol
from protocol_model.errors import Revert

WAD = 10**18
MAX_UINT = 2**256 - 1
GAS = 5_000_000
BATCH_GAS = 12_000_000
ETH, BTC = 0, 1
MARKET_ASSET = {ETH: "ETH", BTC: "BTC"}
COLLATERAL_ASSET = {"WETH": "ETH", "WBTC": "BTC"}
# Feed answers (8 decimals) stay inside these bounds, far inside the feed's own.
ANSWER_BOUNDS = {"ETH": (50 * 10**8, 50_000 * 10**8), "BTC": (1_000 * 10**8, 1_000_000 * 10**8)}
OUTCOMES: Counter[str] = Counter()  # over every example of the run, printed at the end (-s)
KEEPERS = st.sampled_from([3, 3, 3, 0, 1, 2])  # 3: the liquidator; else a trader liquidates
TARGETS = st.sampled_from([0, 1, 2, None, None])  # None: the weakest trader
MAX_SIZES = st.one_of(st.just(MAX_UINT), st.integers(1, 10 * WAD))
MAX_REPAYS = st.one_of(st.just(MAX_UINT), st.integers(1, 10**12))
FUND_WHOLE = {"USDC": 10**9, "WETH": 10**5, "WBTC": 10**4}  # wallet balances minted once per case
# Max price ages the owner sets, and how far a warp moves time: a warp makes every feed not
# updated since older than the short age and, after twelve warps, than the long one. The gaps are
# hours, so the seconds the test itself takes never decide whether a price is usable.
AGES = (3_600, 86_400)
WARP = 7_200
# liquidate_many skip codes (contracts/MarginEngine.vy, SKIP_*)
EXECUTED = 0
SKIP = {"healthy": 1, "no position": 2, "no debt": 3, "no collateral": 4, "bad price": 5, "stale price": 6}
MALFORMED = ("bad order", "not listed market", "not listed token", "zero amount", "house")
FUND_HOUSE_EVENTS = ("Trade", "Liquidation", "CollateralLiquidation", "BadDebtSettled", "HouseSeeded", "InsuranceSeeded")
CASES = ["q6", "q8", "q18", "q6-fund50"]


# ---------------------------------------------------------------- chain access


def note(message: str) -> None:
    """``hypothesis.note`` inside an example; a print in a named regression test that runs steps."""
    try:
        hypothesis_note(message)
    except InvalidArgument:
        print(message)


def send(sender, call, gas: int = GAS) -> Any:
    """Send with a fixed gas limit (no gas estimation: a third of the cost of ``Sender.send``);
    when it reverts, replay it as an ``eth_call`` on the unchanged state to read the reason."""
    try:
        return sender.send(call, gas=gas)
    except Revert:
        pass
    try:
        call.call({"from": sender.address})
    except (ContractLogicError, TransactionFailed) as exc:
        raise Revert(revert_reason(exc) or "") from exc
    raise AssertionError("the transaction reverted but the same call succeeds")


def outcome(sender, call, gas: int = GAS) -> tuple[str | None, Any]:
    """(None, receipt) on success, (reason, None) on revert."""
    try:
        return None, send(sender, call, gas)
    except Revert as exc:
        return exc.reason, None


class Account:
    """One row of Lens.accounts."""

    def __init__(self, row: tuple) -> None:
        (self.address, self.cash, self.active, self.held, self.sizes, self.quotes, self.collateral,
         self.equity, self.init, self.maint) = row


@dataclass
class Row:
    """What a liquidation reads and writes of one account: a mutable copy of a Lens row."""

    cash: int
    sizes: list[int]
    quotes: list[int]
    coll: list[int]

    @classmethod
    def of(cls, a: Account) -> "Row":
        return cls(a.cash, list(a.sizes), list(a.quotes), list(a.collateral))


@dataclass
class World:
    """The accounts, the house and the insurance fund as the test predicts them, order by order."""

    rows: dict[str, Row]
    fund: int


def cover(owed: int, paid: int, fund: int, house_cash: int) -> tuple[int, int]:
    """SPEC 6, liquidate step 5: the fund receives what the account paid minus what the caller
    was paid; a shortfall is paid by the fund, then by the house's cash."""
    if paid >= owed:
        return fund + paid - owed, house_cash
    short = owed - paid
    from_fund = min(short, fund)
    return fund - from_fund, house_cash - (short - from_fund)


class EngineMachine(RuleBasedStateMachine):
    deployments: dict[str, Any] = {}
    actors: Any = None
    tester: Any = None

    def __init__(self) -> None:
        super().__init__()
        self.snapshot = self.tester.take_snapshot()
        a = self.actors
        self.traders = [a.trader, a.trader2, a.rival]
        self.liquidator = a.liquidator
        self.cached: dict[str, Account] | None = None
        self.flows = {t.address: {"in": 0, "out": 0} for t in self.traders}
        self.counts: Counter[str] = Counter()

    def teardown(self) -> None:
        note(f"outcomes: {dict(sorted(self.counts.items()))}")
        OUTCOMES.update(self.counts)
        self.tester.revert_to_snapshot(self.snapshot)

    # ------------------------------------------------------------ set-up

    @initialize(
        case=st.sampled_from(CASES),
        first=st.lists(st.sampled_from([0, 0, 100, 1_000, 5_000, 30_000]), min_size=3, max_size=3),
        collateral=st.lists(st.tuples(st.sampled_from(["WETH", "WBTC", None]), st.integers(100, 10_000)), min_size=3, max_size=3),
        opening=st.lists(st.tuples(st.sampled_from([ETH, BTC]), st.booleans(), st.integers(5_000, 95_000)), min_size=3, max_size=3),
    )
    def pick_case_and_open(self, case: str, first: list[int], collateral: list, opening: list) -> None:
        """A case; for every trader maybe a quote deposit, maybe a collateral deposit (up to
        10_000 USD of it) and an attempt at a position of 0.5x to 9.5x its equity. A trader with
        only collateral pays the taker fee from its cash, which goes negative."""
        p = self.p = self.deployments[case]
        note(f"case {case}")
        e = self.e = p.engine
        self.house = e.address
        self.qs = e.functions.quote_scale().call()
        self.tokens = {"USDC": p.quote, "WETH": p.token("WETH"), "WBTC": p.token("WBTC")}
        self.dec = {s: p.decimals(s) for s in self.tokens}
        self.col_index = {s: p.dep.collateral(s)["index"] for s in COLLATERAL_ASSET}
        self.symbol_at = {i: s for s, i in self.col_index.items()}
        self.answers = {x: p.feed(x).functions.latestRoundData().call()[1] for x in ("ETH", "BTC")}
        self.updated = {x: 0 for x in ("ETH", "BTC")}
        self.markets = {m: tuple(e.functions.market(m).call())[2:6] for m in (ETH, BTC)}  # imf mmf fee taker
        self.col_params = {s: tuple(e.functions.collateral_config(self.tokens[s].address).call())[4:7] for s in COLLATERAL_ASSET}
        self.ages = {("m", m): e.functions.market(m).call()[7] for m in (ETH, BTC)}
        self.ages |= {("c", s): e.functions.collateral_config(self.tokens[s].address).call()[9] for s in COLLATERAL_ASSET}
        self.keeper_share = e.functions.keeper_share().call()
        self.dust = e.functions.dust_notional().call()
        self.accounts = [t.address for t in self.traders] + [self.liquidator.address, self.house]
        self.topics = {event_abi_to_log_topic(x): x["name"] for x in e.abi if x.get("type") == "event"}
        # The mirror of invariant 6: set only from events.
        house = self.state(self.house)
        self.mirror = {"fund": e.functions.insurance_fund().call(), "cash": house.cash,
                       "sizes": list(house.sizes[:2]), "quotes": list(house.quotes[:2])}
        for asset in ("ETH", "BTC"):
            self._set_answer(asset, self.answers[asset])   # fresh feeds, whenever the example starts
        for trader, whole, (symbol, usd) in zip(self.traders, first, collateral):
            if whole:
                self._deposit(trader, "USDC", whole * 10 ** self.dec["USDC"])
            if symbol is not None:
                amount = usd * 10 ** self.dec[symbol] * WAD // self.price(COLLATERAL_ASSET[symbol])
                self._deposit(trader, symbol, max(1, amount))
        for t, (m, short, leverage_bps) in enumerate(opening):
            self.trade(t, m, short, leverage_bps)

    # ------------------------------------------------------------ reading

    def price(self, asset: str) -> int:
        return self.answers[asset] * 10**10

    def read(self) -> dict[str, Account]:
        if self.cached is None:
            rows = self.p.lens.functions.accounts(self.e.address, self.accounts).call()
            self.cached = {r[0]: Account(r) for r in rows}
        return self.cached

    def state(self, address: str) -> Account:
        return self.read()[address]

    def value(self, symbol: str, amount: int) -> int:
        return amount * self.price(COLLATERAL_ASSET[symbol]) // 10 ** self.dec[symbol]

    def balance(self, acct: Account, symbol: str) -> int:
        return acct.collateral[self.col_index[symbol]]

    def sent(self) -> None:
        self.cached = None
        self.pending = None

    def now(self) -> int:
        """The timestamp of the block the next transaction goes into (read once per chain change)."""
        if getattr(self, "pending", None) is None:
            self.pending = int(self.tester.get_block_by_number("pending")["timestamp"])
        return self.pending

    def usable(self, kind: str, key: Any) -> bool:
        """Whether the price of market ``key`` (kind "m") or collateral ``key`` ("c") is usable:
        no older than its own max age (the answers stay in bounds, so never a bad price)."""
        asset = MARKET_ASSET[key] if kind == "m" else COLLATERAL_ASSET[key]
        return self.now() - self.updated[asset] <= self.ages[(kind, key)]

    def stale_terms(self, sizes: list[int], coll: list[int]) -> bool:
        """Whether a strict read (withdraw, a risk-increasing trade) of these holdings meets a
        price that is not usable."""
        return any(sizes[m] != 0 and not self.usable("m", m) for m in (ETH, BTC)) or any(
            coll[i] != 0 and not self.usable("c", s) for s, i in self.col_index.items())

    def world(self) -> World:
        return World({a: Row.of(self.state(a)) for a in self.accounts}, self.e.functions.insurance_fund().call())

    def liq_health(self, row: Row) -> tuple[int, int, int]:
        """SPEC 5 as a liquidation reads it (SPEC 6, "Prices a liquidation needs")."""
        e = i = mt = row.cash
        for m in (ETH, BTC):
            if row.sizes[m] == 0:
                continue
            p = self.price(MARKET_ASSET[m])
            imf, mmf, _fee, _taker = self.markets[m]
            upnl = mul_down(row.sizes[m], p) + row.quotes[m]
            if not self.usable("m", m):
                upnl = min(upnl, 0)
            notional = mul_up(abs(row.sizes[m]), p)
            e += upnl
            i += upnl - mul_up(notional, imf)
            mt += upnl - mul_up(notional, mmf)
        for s, idx in self.col_index.items():
            if row.coll[idx] == 0 or not self.usable("c", s):
                continue
            value = self.value(s, row.coll[idx])
            iw, mw, _disc = self.col_params[s]
            e += value
            i += mul_down(value, iw)
            mt += mul_down(value, mw)
        return e, i, mt

    # ------------------------------------------------------------ transactions and the mirror

    def tx(self, sender, call, gas: int = GAS) -> tuple[str | None, Any]:
        """Send; on success replay the engine's events into the mirror (invariant 6)."""
        reason, receipt = outcome(sender, call, gas)
        self.sent()
        if receipt is not None:
            self.replay(receipt)
        return reason, receipt

    def engine_events(self, receipt: Any) -> list[tuple[str, Any]]:
        out = []
        for log in receipt["logs"]:
            if log["address"] != self.e.address:
                continue
            name = self.topics[bytes(log["topics"][0])]
            out.append((name, getattr(self.e.events, name)().process_log(log).args))
        return out

    def replay(self, receipt: Any) -> None:
        mirror = self.mirror
        for name, a in self.engine_events(receipt):
            if name in ("Trade", "Liquidation"):
                mirror["sizes"][a.market] = a.house_size
                mirror["quotes"][a.market] = a.house_quote
            if name in ("Trade", "Liquidation", "CollateralLiquidation", "BadDebtSettled"):
                mirror["cash"] = a.house_cash
            if name in ("Liquidation", "CollateralLiquidation", "BadDebtSettled", "InsuranceSeeded"):
                mirror["fund"] = a.insurance_fund
            if name == "HouseSeeded":
                mirror["cash"] = a.cash

    def _set_answer(self, asset: str, answer: int) -> None:
        send(self.p.owner, self.p.feed(asset).functions.set_answer(answer))
        self.sent()
        self.answers[asset] = answer
        self.updated[asset] = self.p.feed(asset).functions.latestRoundData().call()[3]

    # ------------------------------------------------------------ deposit / withdraw

    def _deposit(self, trader, symbol: str, amount: int) -> None:
        token = self.tokens[symbol]
        value = amount * self.qs if symbol == "USDC" else self.value(symbol, amount)
        reason, _ = self.tx(trader, self.e.functions.deposit(token.address, amount))
        assert reason is None
        self.flows[trader.address]["in"] += value
        self.counts[f"deposit {symbol}"] += 1
        note(f"{trader.address[:8]} deposits {amount} {symbol}")

    @rule(t=st.integers(0, 2), symbol=st.sampled_from(["USDC", "WETH", "WBTC"]), whole_bps=st.integers(1, 200_000_000))
    def deposit(self, t: int, symbol: str, whole_bps: int) -> None:
        """Up to 20_000 whole tokens (USDC), fewer for the others, in 1/10_000 steps."""
        unit = 10 ** self.dec[symbol]
        scale = {"USDC": 1, "WETH": 1_000, "WBTC": 10_000}[symbol]
        amount = max(1, whole_bps * unit // 10_000 // scale)
        self._deposit(self.traders[t], symbol, amount)

    def expected_withdraw(self, acct: Account, symbol: str, amount: int) -> tuple[str | None, int]:
        """(expected reason or None, the USD value it takes out, rounded down)."""
        coll = list(acct.collateral)
        if symbol == "USDC":
            if acct.cash - amount * self.qs < 0:
                return "insufficient cash", 0
            if self.stale_terms(acct.sizes, coll):
                return "stale price", 0
            return ("insufficient margin" if acct.init - amount * self.qs < 0 else None), amount * self.qs
        balance = self.balance(acct, symbol)
        if balance < amount:
            return "insufficient collateral", 0
        coll[self.col_index[symbol]] -= amount
        if self.stale_terms(acct.sizes, coll):
            return "stale price", 0
        iw = self.col_params[symbol][0]
        init_after = acct.init - mul_down(self.value(symbol, balance), iw) + mul_down(self.value(symbol, balance - amount), iw)
        return ("insufficient margin" if init_after < 0 else None), self.value(symbol, amount)

    def _withdraw(self, trader, symbol: str, amount: int) -> str | None:
        acct = self.state(trader.address)
        expected, taken = self.expected_withdraw(acct, symbol, amount)
        reason, _ = self.tx(trader, self.e.functions.withdraw(self.tokens[symbol].address, amount))
        note(f"{trader.address[:8]} withdraws {amount} {symbol}: {reason or 'ok'}")
        assert reason == expected
        self.counts[f"withdraw {symbol} {reason or 'ok'}"] += 1
        if reason is None:
            after = self.state(trader.address)
            # Invariant 4: what leaves is covered by the equity the account had, and it keeps some.
            assert taken <= acct.equity
            assert after.equity >= 0 and after.init >= 0
            self.flows[trader.address]["out"] += taken
            note(f"  flows {self.flows[trader.address]}, equity {after.equity}")
        return reason

    @rule(t=st.integers(0, 2), symbol=st.sampled_from(["USDC", "WETH", "WBTC"]), bps=st.integers(1, 12_000))
    def withdraw(self, t: int, symbol: str, bps: int) -> None:
        """A fraction (up to 120%) of the cash or of the balance."""
        acct = self.state(self.traders[t].address)
        held = acct.cash // self.qs if symbol == "USDC" else self.balance(acct, symbol)
        self._withdraw(self.traders[t], symbol, max(1, held * bps // 10_000))

    @rule(t=st.integers(0, 2), symbol=st.sampled_from(["USDC", "WETH", "WBTC"]), offset=st.sampled_from([-1, 0, 1]))
    def withdraw_at_margin_boundary(self, t: int, symbol: str, offset: int) -> None:
        """The largest amount leaving init_health >= 0, and one unit either side of it."""
        trader = self.traders[t]
        acct = self.state(trader.address)
        if self.stale_terms(acct.sizes, acct.collateral):
            return   # the margin boundary of a strict read that fails is not defined
        if symbol == "USDC":
            best = max(0, min(acct.cash, acct.init) // self.qs)
        else:
            lo, hi = 0, self.balance(acct, symbol) + 1  # expected_withdraw(lo) ok, (hi) not
            while hi - lo > 1:
                mid = (lo + hi) // 2
                if self.expected_withdraw(acct, symbol, mid)[0] is None:
                    lo = mid
                else:
                    hi = mid
            best = lo
        amount = best + offset
        if amount <= 0:
            return
        reason = self._withdraw(trader, symbol, amount)
        if offset == 1:
            assert reason is not None
        elif best > 0:
            assert reason is None

    @rule(t=st.integers(0, 2), symbol=st.sampled_from(["USDC", "WETH", "WBTC"]))
    def withdraw_more_than_equity(self, t: int, symbol: str) -> None:
        trader = self.traders[t]
        acct = self.state(trader.address)
        equity = max(acct.equity, 0)
        if symbol == "USDC":
            amount = equity // self.qs + 1  # worth at least equity + 1 wei
        else:
            price = self.price(COLLATERAL_ASSET[symbol])
            amount = ceil_div((equity + 1) * 10 ** self.dec[symbol], price)  # value(amount) > equity
            if amount > self.balance(acct, symbol):
                return
        expected, _ = self.expected_withdraw(acct, symbol, amount)
        reason, _ = self.tx(trader, self.e.functions.withdraw(self.tokens[symbol].address, amount))
        note(f"{trader.address[:8]} tries to withdraw {amount} {symbol} > equity {acct.equity}: {reason}")
        assert reason == expected and reason in ("insufficient cash", "insufficient margin", "stale price")
        self.counts["withdraw beyond equity refused"] += 1

    # ------------------------------------------------------------ trading

    def _trade(self, trader, m: int, delta: int) -> None:
        acct = self.state(trader.address)
        house = self.state(self.house)
        price = self.price(MARKET_ASSET[m])
        imf, _mmf, _fee, taker = self.markets[m]
        old_size, old_quote = acct.sizes[m], acct.quotes[m]
        quote_delta = mul_down(-delta, price)
        fee = mul_up(mul_up(abs(delta), price), taker)
        new_size, new_quote = old_size + delta, old_quote + quote_delta
        increases = abs(new_size) > abs(old_size) or old_size * new_size < 0
        init_after = acct.init - perp_term(old_size, old_quote, price, imf) + perp_term(new_size, new_quote, price, imf) - fee
        sizes_after = list(acct.sizes)
        sizes_after[m] = new_size
        if not self.usable("m", m) or (increases and self.stale_terms(sizes_after, acct.collateral)):
            expected = "stale price"
        else:
            expected = "insufficient margin" if increases and init_after < 0 else None

        reason, receipt = self.tx(trader, self.e.functions.trade(m, delta, price))
        note(f"{trader.address[:8]} trades {delta} in market {m} at {price}: {reason or 'ok'}")
        assert reason == expected
        self.counts[f"trade {'reduce' if not increases else 'increase'} {reason or 'ok'}"] += 1
        if reason is None:
            [ev] = self.e.events.Trade().process_receipt(receipt, errors=DISCARD)
            closed = new_size == 0
            assert (ev.args.price, ev.args.quote_delta, ev.args.fee, ev.args.size, ev.args.quote, ev.args.cash) == (
                price, quote_delta, fee, new_size, 0 if closed else new_quote,
                acct.cash - fee + (new_quote if closed else 0),
            )
            after, house_after = self.state(trader.address), self.state(self.house)
            assert after.init == init_after
            # The house books the exact opposite and receives the fee.
            assert house_after.sizes[m] == house.sizes[m] - delta
            house_closed = house_after.sizes[m] == 0
            assert house_after.quotes[m] == (0 if house_closed else house.quotes[m] - quote_delta)
            assert house_after.cash == house.cash + fee + (house.quotes[m] - quote_delta if house_closed else 0)

    @rule(t=st.integers(0, 2), m=st.sampled_from([ETH, BTC]), short=st.booleans(), leverage_bps=st.integers(1, 150_000))
    def trade(self, t: int, m: int, short: bool, leverage_bps: int) -> None:
        """A notional of up to 15x the trader's equity (or of 1_000 USD when it has less)."""
        acct = self.state(self.traders[t].address)
        notional = max(acct.equity, 1_000 * WAD) * leverage_bps // 10_000
        size = max(1, notional * WAD // self.price(MARKET_ASSET[m]))
        self._trade(self.traders[t], m, -size if short else size)

    @rule(t=st.integers(0, 2), m=st.sampled_from([ETH, BTC]), bps=st.sampled_from([2_500, 5_000, 10_000, 10_000, 15_000]))
    def reduce(self, t: int, m: int, bps: int) -> None:
        """Reduce (or close, or flip past zero) the current position."""
        size = self.state(self.traders[t].address).sizes[m]
        delta = -size * bps // 10_000 if size > 0 else ceil_div(-size * bps, 10_000)
        if delta != 0:
            self._trade(self.traders[t], m, delta)

    # ------------------------------------------------------------ prices, time, ages, seeds

    @rule(asset=st.sampled_from(["ETH", "BTC"]), move_bps=st.integers(-3_000, 3_000))
    def move_price(self, asset: str, move_bps: int) -> None:
        """A new answer (also for a move of 0: the same answer again, which makes it fresh)."""
        self._move_price(asset, move_bps)

    def _move_price(self, asset: str, move_bps: int) -> None:
        lo, hi = ANSWER_BOUNDS[asset]
        answer = min(hi, max(lo, self.answers[asset] * (10_000 + move_bps) // 10_000))
        self._set_answer(asset, answer)
        self.counts["move price"] += 1
        note(f"{asset} -> {answer / 1e8:.8f}")

    @rule()
    def warp(self) -> None:
        """Time passes: every feed not updated since is WARP seconds older."""
        self.tester.time_travel(self.now() + WARP)
        self.sent()
        self.counts["warp"] += 1
        note(f"warp {WARP} s; usable: markets {[self.usable('m', m) for m in (ETH, BTC)]}, "
             f"collaterals {[self.usable('c', s) for s in COLLATERAL_ASSET]}")

    @rule(kind=st.sampled_from(["m", "c"]), which=st.integers(0, 1), age=st.sampled_from(AGES), by_owner=st.booleans())
    def set_price_age(self, kind: str, which: int, age: int, by_owner: bool) -> None:
        """The owner sets one market's or one collateral's max price age (an outsider is refused)."""
        sender = self.p.owner if by_owner else self.traders[which]
        if kind == "m":
            key: Any = which
            call = self.e.functions.set_market_price_age(which, age)
        else:
            key = ("WETH", "WBTC")[which]
            call = self.e.functions.set_collateral_price_age(self.tokens[key].address, age)
        reason, receipt = self.tx(sender, call)
        note(f"{'owner' if by_owner else 'outsider'} sets the max price age of {kind} {key} to {age}: {reason or 'ok'}")
        assert reason == (None if by_owner else "not owner")
        self.counts[f"set price age {reason or 'ok'}"] += 1
        if reason is None:
            [(name, args)] = self.engine_events(receipt)
            if kind == "m":
                assert (name, args.market, args.max_price_age) == ("MarketPriceAgeSet", which, age)
                assert self.e.functions.market(which).call()[7] == age
            else:
                assert (name, args.token, args.max_price_age) == ("CollateralPriceAgeSet", self.tokens[key].address, age)
                assert self.e.functions.collateral_config(self.tokens[key].address).call()[9] == age
            self.ages[(kind, key)] = age

    @rule(house=st.booleans(), whole=st.integers(1, 100_000))
    def seed(self, house: bool, whole: int) -> None:
        amount = whole * 10 ** self.dec["USDC"]
        owner = self.p.owner
        send(owner, self.p.quote.functions.mint(owner.address, amount))
        send(owner, self.p.quote.functions.approve(self.e.address, amount))
        fund0, house0 = self.e.functions.insurance_fund().call(), self.state(self.house).cash
        reason, receipt = self.tx(owner, self.e.functions.seed_house(amount) if house else self.e.functions.seed_insurance(amount))
        assert reason is None
        [(name, args)] = self.engine_events(receipt)
        if house:
            assert (name, args.amount, args.cash) == ("HouseSeeded", amount, house0 + amount * self.qs)
        else:
            assert (name, args.amount, args.insurance_fund) == ("InsuranceSeeded", amount, fund0 + amount * self.qs)
        self.counts[f"seed {'house' if house else 'insurance'}"] += 1

    # ------------------------------------------------------------ liquidations: the prediction

    def keeper(self, k: int):
        return self.liquidator if k == 3 else self.traders[k]

    def worst(self, key) -> int:
        """The trader for which ``key(account row, liquidation health)`` is lowest."""
        return min(range(3), key=lambda i: key(self.state(self.traders[i].address),
                                               self.liq_health(Row.of(self.state(self.traders[i].address)))))

    def settle_into(self, w: World, account: str, deficit: int) -> dict[str, int]:
        """SPEC 6, settle_bad_debt, applied to ``w``: the fund covers first, the house the rest."""
        house = w.rows[self.house]
        covered = min(deficit, w.fund)
        w.fund -= covered
        house.cash -= deficit - covered
        w.rows[account].cash = 0
        return {"deficit": deficit, "covered": covered, "socialised": deficit - covered,
                "house_cash": house.cash, "insurance_fund": w.fund}

    def plan_position(self, w: World, account: str, m: int, max_size: int) -> tuple[str | None, dict | None]:
        """SPEC 6, liquidate, on ``w`` (changed in place when it executes): (reason, None) or
        (None, the values of its Liquidation event and of its automatic BadDebtSettled)."""
        if m not in (ETH, BTC):
            return "not listed", None
        if max_size == 0:
            return "zero amount", None
        if account == self.house:
            return "house", None
        row = w.rows[account]
        e0, i0, m0 = self.liq_health(row)
        if m0 >= 0:
            return "healthy", None
        if row.sizes[m] == 0:
            return "no position", None
        if not self.usable("m", m):
            return "stale price", None
        p = self.price(MARKET_ASSET[m])
        imf, _mmf, fee, _taker = self.markets[m]
        s = abs(row.sizes[m])
        need = div_up(div_up(-i0, imf - fee), p)
        q = min(s, need)
        if mul_up(s - q, p) < self.dust:
            q = s
        q = min(q, max_size)
        size_delta = -q if row.sizes[m] > 0 else q
        quote_delta = mul_down(-size_delta, p)
        size, quote = row.sizes[m] + size_delta, row.quotes[m] + quote_delta
        closed_equity = e0 - (mul_down(row.sizes[m], p) + row.quotes[m]) + (mul_down(size, p) + quote)
        penalty = mul_up(mul_up(q, p), fee)
        charged = min(penalty, max(closed_equity, 0))
        reward = mul_down(penalty, self.keeper_share) // self.qs
        cash = row.cash - charged
        if size == 0:
            cash, quote = cash + quote, 0
        house = w.rows[self.house]
        house_size, house_quote, house_cash = house.sizes[m] - size_delta, house.quotes[m] - quote_delta, house.cash
        if house_size == 0:
            house_cash, house_quote = house_cash + house_quote, 0
        fund, house_cash = cover(reward * self.qs, charged, w.fund, house_cash)
        ev = {"size_delta": size_delta, "price": p, "quote_delta": quote_delta, "penalty": penalty, "charged": charged,
              "keeper_reward": reward, "insurance_fund": fund, "house_size": house_size, "house_quote": house_quote,
              "house_cash": house_cash, "size": size, "quote": quote, "cash": cash}
        row.sizes[m], row.quotes[m], row.cash = size, quote, cash
        house.sizes[m], house.quotes[m], house.cash = house_size, house_quote, house_cash
        w.fund = fund
        settled = None
        if cash < 0 and not any(row.sizes) and not any(row.coll):
            settled = self.settle_into(w, account, -cash)
        return None, {"Liquidation": ev, "BadDebtSettled": settled, "e0": e0, "m0": m0, "fee": fee}

    def plan_collateral(self, w: World, account: str, symbol: str | None, max_repay: int) -> tuple[str | None, dict | None]:
        """SPEC 6, liquidate_collateral, on ``w``, as plan_position (``symbol`` None: a token that
        is not listed)."""
        if symbol is None:
            return "not listed", None
        if max_repay == 0:
            return "zero amount", None
        if account == self.house:
            return "house", None
        row = w.rows[account]
        e0, _i0, m0 = self.liq_health(row)
        idx = self.col_index[symbol]
        balance = row.coll[idx]
        if m0 >= 0:
            return "healthy", None
        if row.cash >= 0:
            return "no debt", None
        if balance == 0:
            return "no collateral", None
        if not self.usable("c", symbol):
            return "stale price", None
        unit = 10 ** self.dec[symbol]
        price = self.price(COLLATERAL_ASSET[symbol])
        discounted = mul_up(price, WAD - self.col_params[symbol][2])
        cap = balance * discounted // unit // self.qs
        repay = min(ceil_div(-row.cash, self.qs), max_repay, cap)
        seized = balance if repay == cap else repay * self.qs * unit // discounted
        rest = balance - seized
        equity = e0 + repay * self.qs - (self.value(symbol, balance) - self.value(symbol, rest))
        subsidy = max(min(e0, 0) - equity, 0)
        cash = row.cash + repay * self.qs + subsidy
        house = w.rows[self.house]
        fund, house_cash = cover(subsidy, 0, w.fund, house.cash)
        ev = {"repay": repay, "seized": seized, "price": price, "subsidy": subsidy, "cash": cash, "collateral": rest,
              "insurance_fund": fund, "house_cash": house_cash}
        row.cash, row.coll[idx] = cash, rest
        house.cash, w.fund = house_cash, fund
        settled = None
        if cash < 0 and not any(row.sizes) and not any(row.coll):
            settled = self.settle_into(w, account, -cash)
        return None, {"CollateralLiquidation": ev, "BadDebtSettled": settled, "e0": e0, "m0": m0,
                      "whole_for_cap": seized == balance}

    def check_order(self, w: World, account: str, kind: str, plan: dict) -> None:
        """Invariant 3 for one executed order, on the predicted state right after it (which
        the events and the final state then hold the chain to)."""
        e1, _i1, m1 = self.liq_health(w.rows[account])
        e0, m0 = plan["e0"], plan["m0"]
        if kind == "position":
            ev = plan["Liquidation"]
            assert m1 >= m0 - 3, (m0, m1)
            assert e1 >= min(e0, 0) - 1, (e0, e1)
            # The caller is paid keeper_share of the full penalty, bankrupt account or not.
            assert ev["penalty"] == mul_up(mul_up(abs(ev["size_delta"]), ev["price"]), plan["fee"])
            assert ev["keeper_reward"] == mul_down(ev["penalty"], self.keeper_share) // self.qs
            assert ev["charged"] <= ev["penalty"]
        else:
            ev = plan["CollateralLiquidation"]
            assert (m1 > m0 - self.qs) if plan["whole_for_cap"] else (m1 >= m0 - 2), (m0, m1)
            assert e1 >= min(e0, 0), (e0, e1)
        note(f"  maint {m0} -> {m1}, equity {e0} -> {e1}")

    def check_events(self, receipt: Any, keeper: str, expected: list[tuple[str, dict]]) -> None:
        """The engine's events of ``receipt``, in log order, are exactly ``expected``."""
        got = [(name, {k: args[k] for k in fields}) for (name, args), (_, fields) in
               zip(self.engine_events(receipt), expected)]
        assert len(self.engine_events(receipt)) == len(expected), (self.engine_events(receipt), expected)
        assert got == expected
        for name, args in self.engine_events(receipt):
            if name in ("Liquidation", "CollateralLiquidation", "LiquidationSkipped"):
                assert args.liquidator == keeper

    def expected_events(self, account: str, plan: dict, order: tuple) -> list[tuple[str, dict]]:
        kind, key = order
        out = []
        if kind == "position":
            out.append(("Liquidation", dict(plan["Liquidation"], account=account, market=key)))
        else:
            out.append(("CollateralLiquidation", dict(plan["CollateralLiquidation"], account=account,
                                                      token=self.tokens[key].address)))
        if plan["BadDebtSettled"] is not None:
            out.append(("BadDebtSettled", dict(plan["BadDebtSettled"], account=account)))
        return out

    def check_world(self, w: World) -> None:
        """The chain's accounts, house and fund are the predicted ones."""
        for a in self.accounts:
            got = Row.of(self.state(a))
            assert got == w.rows[a], (a, got, w.rows[a])
        assert self.e.functions.insurance_fund().call() == w.fund

    # ------------------------------------------------------------ liquidations: the rules

    @rule(k=KEEPERS, drop_bps=st.integers(0, 4_000), repay=st.sampled_from(["all", "half"]))
    def crash_then_liquidate_everything(self, k: int, drop_bps: int, repay: str) -> None:
        """The price of the weakest trader's largest position moves ``drop_bps`` against it;
        then one batch orders, for every trader, a close of each of its positions and a seizure of
        each of its collaterals, trader by trader: later orders meet what earlier ones did (skips,
        settlements), as in a keeper's tick."""
        self.shock(self.pick_target(None, "position"), None, drop_bps)
        orders = []
        for t in self.traders:
            acct = self.state(t.address)
            for m in (ETH, BTC):
                if acct.sizes[m]:
                    orders.append((t.address, "position", m, MAX_UINT))
            for symbol in COLLATERAL_ASSET:
                if self.balance(acct, symbol):
                    debt = max(-acct.cash // self.qs, 1)
                    orders.append((t.address, "collateral", symbol, MAX_UINT if repay == "all" else max(debt // 2, 1)))
        if orders:
            self._execute(k, orders, batch=True)

    def _execute(self, k: int, orders: list[tuple], batch: bool) -> None:
        """Predict, send and check ``orders``, each ``(account, kind, key, amount)`` with kind
        "position" (key: market) or "collateral" (key: symbol, None: a token not listed): one
        single action, or one liquidate_many of all of them."""
        keeper = self.keeper(k)
        w = self.world()
        wallet0 = {s: self.tokens[s].functions.balanceOf(keeper.address).call() for s in self.tokens}
        results = []
        for index, (account, kind, key, amount) in enumerate(orders):
            if kind == "bad order":
                reason, plan = "bad order", None
            elif kind == "position":
                reason, plan = self.plan_position(w, account, key, amount)
            else:
                reason, plan = self.plan_collateral(w, account, key, amount)
            if plan is not None:
                self.check_order(w, account, kind, plan)
            results.append((reason, plan))
        self.last = results
        malformed = [r for r, _ in results if r is not None and r not in SKIP]
        if batch:
            expected = malformed[0] if malformed else None
            self.preview_batch(orders, expected)
            call = self.e.functions.liquidate_many([self.order_tuple(o) for o in orders])
            if expected is None:   # what it returns: how many orders executed
                assert call.call({"from": keeper.address}) == sum(p is not None for _, p in results)
            reason, receipt = self.tx(keeper, call, BATCH_GAS)
        else:
            [(expected, _)] = results
            [(account, kind, key, amount)] = orders
            if kind == "position":
                call = self.e.functions.liquidate(account, key, amount)
            else:
                call = self.e.functions.liquidate_collateral(account, self.token_address(key), amount)
            reason, receipt = self.tx(keeper, call)
        what = "a batch of" if batch else ""
        note(f"{keeper.address[:8]} liquidates {what} {[(a[:8], kd, ky, am) for a, kd, ky, am in orders]}: "
             f"{reason or 'ok'} {[r or 'ok' for r, _ in results]}")
        assert reason == expected   # invariant 2: a healthy account is never liquidated (also batched)
        for (r, _), (account, kind, key, amount) in zip(results, orders):
            self.counts[f"{'batched ' if batch else ''}{'liquidate' if kind == 'position' else 'liquidate_collateral'} "
                        f"{'reverted ' + reason if reason else r or 'ok'}"] += 1
        if reason is not None:
            return
        # The events, in order: each executed order's, each skipped order's LiquidationSkipped.
        expected_events = []
        for index, ((r, plan), (account, kind, key, amount)) in enumerate(zip(results, orders)):
            if plan is not None:
                expected_events += self.expected_events(account, plan, (kind, key))
            else:
                expected_events.append(("LiquidationSkipped", {"account": account, "index": index, "reason": SKIP[r]}))
        self.check_events(receipt, keeper.address, expected_events)
        # The caller: paid every reward, pays every repay, receives every seized collateral.
        rewards = sum(p["Liquidation"]["keeper_reward"] for _, p in results if p and "Liquidation" in p)
        repays = sum(p["CollateralLiquidation"]["repay"] for _, p in results if p and "CollateralLiquidation" in p)
        seized = Counter()
        for (_, p), (_, kind, key, _) in zip(results, orders):
            if p and kind == "collateral":
                seized[key] += p["CollateralLiquidation"]["seized"]
        for s, token in self.tokens.items():
            want = wallet0[s] + (rewards - repays if s == "USDC" else seized[s])
            assert token.functions.balanceOf(keeper.address).call() == want, s
        self.check_world(w)

    def preview_batch(self, orders: list[tuple], malformed: str | None) -> Any:
        """preview_liquidate_many reads every order against the current state (docs/protocol.md):
        each order as the first of its batch. It reverts where liquidate_many would."""
        call = self.e.functions.preview_liquidate_many([self.order_tuple(o) for o in orders])
        try:
            got = call.call()
        except (ContractLogicError, TransactionFailed) as exc:
            assert revert_reason(exc) == malformed
            return None
        assert malformed is None
        for order, v in zip(orders, got):
            account, kind, key, amount = order
            reason, plan = (self.plan_position if kind == "position" else self.plan_collateral)(self.world(), account, key, amount)
            assert reason is None or reason in SKIP
            status, reward, repay, seized, size_delta, bad_debt = v
            if plan is None:
                assert (status, reward, repay, seized, size_delta, bad_debt) == (SKIP[reason], 0, 0, 0, 0, 0)
            elif kind == "position":
                ev, s = plan["Liquidation"], plan["BadDebtSettled"]
                assert (status, reward, repay, seized, size_delta, bad_debt) == (
                    EXECUTED, ev["keeper_reward"], 0, 0, ev["size_delta"], s["deficit"] if s else 0)
            else:
                ev, s = plan["CollateralLiquidation"], plan["BadDebtSettled"]
                assert (status, reward, repay, seized, size_delta, bad_debt) == (
                    EXECUTED, 0, ev["repay"], ev["seized"], 0, s["deficit"] if s else 0)
        return got

    def token_address(self, symbol: str | None) -> str:
        return self.p.quote.address if symbol is None else self.tokens[symbol].address

    def order_tuple(self, order: tuple) -> tuple:
        """The LiquidationOrder struct: (account, market, token, amount); a collateral order with
        a market (key "bad") is malformed."""
        account, kind, key, amount = order
        if kind == "position":
            return (account, key, "0x" + "00" * 20, amount)
        if kind == "bad order":
            return (account, 1, self.tokens["WETH"].address, amount)
        return (account, 0, self.token_address(key), amount)

    def pick_target(self, t: int | None, kind: str) -> str:
        if t is not None:
            return self.traders[t].address
        if kind == "position":
            return self.traders[self.worst(lambda a, h: h[2])].address
        return self.traders[self.worst(lambda a, h: (h[2] >= 0, a.cash))].address

    def shock(self, target: str, m: int | None, shock_bps: int) -> int:
        """Move the price of ``m`` (None: the target's largest position) against the target's
        position by ``shock_bps``; returns the market."""
        acct = self.state(target)
        if m is None:
            m = max((ETH, BTC), key=lambda i: abs(acct.sizes[i]) * self.price(MARKET_ASSET[i]))
        if acct.sizes[m] != 0 and shock_bps:
            self._move_price(MARKET_ASSET[m], -shock_bps if acct.sizes[m] > 0 else shock_bps)
        return m

    @rule(k=KEEPERS, t=TARGETS, m=st.sampled_from([ETH, BTC, None]), max_size=MAX_SIZES)
    def liquidate(self, k: int, t: int | None, m: int | None, max_size: int) -> None:
        target = self.pick_target(t, "position")
        m = self.shock(target, m, 0)
        self._execute(k, [(target, "position", m, max_size)], batch=False)

    @rule(k=KEEPERS, m=st.sampled_from([ETH, BTC, None]), max_size=MAX_SIZES, shock_bps=st.integers(500, 5_000))
    def shock_then_liquidate(self, k: int, m: int | None, max_size: int, shock_bps: int) -> None:
        target = self.pick_target(None, "position")
        m = self.shock(target, m, shock_bps)
        self._execute(k, [(target, "position", m, max_size)], batch=False)

    @rule(k=KEEPERS, t=TARGETS, symbol=st.sampled_from(["WETH", "WBTC"]), max_repay=MAX_REPAYS)
    def liquidate_collateral(self, k: int, t: int | None, symbol: str, max_repay: int) -> None:
        self._execute(k, [(self.pick_target(t, "collateral"), "collateral", symbol, max_repay)], batch=False)

    @rule(k=KEEPERS, symbol=st.sampled_from(["WETH", "WBTC"]), max_repay=MAX_REPAYS, shock_bps=st.integers(1_000, 5_000))
    def shock_then_liquidate_collateral(self, k: int, symbol: str, max_repay: int, shock_bps: int) -> None:
        """The collateral's price first falls by ``shock_bps``."""
        self._move_price(COLLATERAL_ASSET[symbol], -shock_bps)
        self._execute(k, [(self.pick_target(None, "collateral"), "collateral", symbol, max_repay)], batch=False)

    @rule(k=KEEPERS, shock_bps=st.sampled_from([0, 0, 1_000, 3_000]),
          picks=st.lists(st.tuples(st.sampled_from(["position", "position", "collateral"]), TARGETS,
                                   st.sampled_from([ETH, BTC]), st.sampled_from(["WETH", "WBTC"]),
                                   st.sampled_from(["all", "all", "half", "one"])),
                         min_size=1, max_size=8),
          bad=st.one_of(st.none(), st.none(), st.none(), st.none(), st.sampled_from(MALFORMED)), at=st.integers(0, 8))
    def liquidate_many(self, k: int, shock_bps: int, picks: list[tuple], bad: str | None, at: int) -> None:
        """A batch of position and collateral orders, often on the same weakest account (so that
        later orders meet what earlier ones did, and skips), now and then a malformed one (the
        whole call reverts with its reason)."""
        if shock_bps:
            self.shock(self.pick_target(None, "position"), None, shock_bps)
        orders = []
        for kind, t, m, symbol, amount in picks:
            target = self.pick_target(t, kind)
            acct = self.state(target)
            if kind == "position":
                size = abs(acct.sizes[m])
                orders.append((target, kind, m, {"all": MAX_UINT, "half": max(size // 2, 1), "one": 1}[amount]))
            else:
                debt = max(-acct.cash // self.qs, 1)
                orders.append((target, kind, symbol, {"all": MAX_UINT, "half": max(debt // 2, 1), "one": 1}[amount]))
        if bad is not None:
            target = self.pick_target(None, "position")
            orders.insert(min(at, len(orders)), {"bad order": (target, "bad order", "WETH", 1),
                                                 "not listed market": (target, "position", 2, 1),
                                                 "not listed token": (target, "collateral", None, 1),
                                                 "zero amount": (target, "position", ETH, 0),
                                                 "house": (self.house, "collateral", "WETH", 1)}[bad])
        self._execute(k, orders, batch=True)

    @precondition(lambda self: any(self.state(t.address).cash < 0 for t in self.traders))
    @rule(t=st.sampled_from([0, 1, 2, None, None]))
    def settle_bad_debt(self, t: int | None) -> None:
        """``t`` None: the trader with the lowest cash among those without positions and
        collateral (else among all)."""
        t = self.worst(lambda a, h: (a.active != 0 or a.held != 0, a.cash)) if t is None else t
        target = self.traders[t]
        before = self.state(target.address)
        if before.active:
            expected = "open positions"
        elif before.held:
            expected = "has collateral"
        elif before.cash >= 0:
            expected = "no bad debt"
        else:
            expected = None
        w = self.world()
        reason, receipt = self.tx(self.liquidator, self.e.functions.settle_bad_debt(target.address))
        note(f"settle {target.address[:8]}: {reason or 'ok'}")
        assert reason == expected
        self.counts[f"settle {reason or 'ok'}"] += 1
        if reason is None:
            settled = self.settle_into(w, target.address, -before.cash)
            self.check_events(receipt, self.liquidator.address, [("BadDebtSettled", dict(settled, account=target.address))])
            self.check_world(w)

    # ------------------------------------------------------------ invariants

    @invariant()
    def conservation(self) -> None:
        if not hasattr(self, "p"):
            return
        accounts = self.read()
        tokens = self.p.quote.functions.balanceOf(self.e.address).call()
        fund = self.e.functions.insurance_fund().call()
        claims = fund + sum(a.cash + sum(a.quotes) for a in accounts.values())
        assert tokens * self.qs >= claims, (tokens * self.qs, claims)
        for m in (ETH, BTC):
            assert sum(a.sizes[m] for a in accounts.values()) == 0

    @invariant()
    def events_rebuild_the_fund_and_the_house(self) -> None:
        """Invariant 6: the mirror built from events alone is the engine's fund and house."""
        if not hasattr(self, "p"):
            return
        house = self.state(self.house)
        assert self.mirror == {"fund": self.e.functions.insurance_fund().call(), "cash": house.cash,
                               "sizes": list(house.sizes[:2]), "quotes": list(house.quotes[:2])}

    @invariant()
    def liquidation_reading(self) -> None:
        """The engine's liquidation_health is the reading of SPEC 6 "Prices a liquidation needs"
        that this test computes (unusable collateral worth 0, unusable positions' profit not
        counted), for every trader."""
        if not hasattr(self, "p"):
            return
        for t in self.traders:
            row = Row.of(self.state(t.address))
            assert tuple(self.e.functions.liquidation_health(t.address).call()) == self.liq_health(row)


@pytest.fixture
def funded(deployments, actors, tester, w3):
    """Every case of the machine: the decimals cases, and the q6 listing deployed again with an
    insurance fund of 50 USDC (deployed inside the test's own snapshot). Every actor holds plenty
    of every token, approved to each engine; before the per-example snapshots."""
    cases = dict(deployments)
    config = dataclasses.replace(config_for("q6"), insurance_seed=50)
    cases["q6-fund50"] = Protocol(w3, deploy_protocol(w3, actors.owner, config), actors.owner, "q6-fund50")
    for p in cases.values():
        for actor in (actors.trader, actors.trader2, actors.rival, actors.liquidator):
            for symbol, whole in FUND_WHOLE.items():
                token = p.token(symbol)
                p.owner.send(token.functions.mint(actor.address, whole * 10 ** p.decimals(symbol)), gas=GAS)
                actor.send(token.functions.approve(p.engine.address, MAX_UINT), gas=GAS)
    return cases


def test_engine_invariants(funded, actors, tester):
    EngineMachine.deployments = funded
    EngineMachine.actors = actors
    EngineMachine.tester = tester
    run_state_machine_as_test(
        EngineMachine,
        settings=settings(),   # the loaded profile (conftest.py): its numbers and its health checks
    )
    print("engine invariants, outcomes over all examples:", dict(sorted(OUTCOMES.items())))


# ---------------------------------------------------------------- regressions (shrunk failures, kept by name)


def replay(funded, actors, tester, steps) -> None:
    EngineMachine.deployments = funded
    EngineMachine.actors = actors
    EngineMachine.tester = tester
    machine = EngineMachine()
    try:
        steps(machine)
        machine.conservation()
        machine.events_rebuild_the_fund_and_the_house()
        machine.liquidation_reading()
    finally:
        machine.teardown()


def test_regression_collateral_liquidation_credits_what_equity_cannot_bear(funded, actors, tester):
    """Shrunk by Hypothesis against 20cce7f (the test then asserted the pre-revision cash): a
    bankrupt trader's WETH liquidated after ETH -28 %; its equity cannot bear the 5 % discount,
    so the fund credits its cash the difference (subsidy > 0) and equity stays at min(E0, 0)."""
    def steps(m: EngineMachine) -> None:
        m.pick_case_and_open(case="q6", first=[0, 0, 0], collateral=[("WETH", 8114), ("WETH", 2149), ("WETH", 1987)],
                             opening=[(0, True, 7013), (1, False, 65535), (0, True, 8091)])
        m.withdraw(bps=83, symbol="WETH", t=1)
        m.trade(leverage_bps=210, m=0, short=False, t=1)
        m.shock_then_liquidate_collateral(k=1, max_repay=128_802_735_468, shock_bps=1209, symbol="WETH")
        m.trade(leverage_bps=25656, m=1, short=False, t=0)
        m.shock_then_liquidate_collateral(k=0, max_repay=114851, shock_bps=2200, symbol="WBTC")
        m.trade(leverage_bps=8961, m=1, short=True, t=2)
        m.shock_then_liquidate_collateral(k=2, max_repay=252, shock_bps=2806, symbol="WETH")
        assert m.counts["liquidate_collateral ok"] == 1
        [(_, plan)] = m.last
        e0, e1 = plan["e0"], m.liq_health(Row.of(m.state(m.traders[1].address)))[0]
        assert plan["CollateralLiquidation"]["subsidy"] > 0 and e1 == min(e0, 0)
    replay(funded, actors, tester, steps)
