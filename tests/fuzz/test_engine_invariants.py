"""Stateful property test of the real MarginEngine: SPEC section 7, invariants 1 to 4.

Three traders (``trader``, ``trader2``, ``rival``) deposit, withdraw and trade while prices move;
the ``liquidator`` (and, now and then, a trader) liquidates positions and collateral and settles
bad debt. Each example starts with a decimals case drawn from q6/q8/q18 and runs inside its own
chain snapshot (taken in ``__init__``, reverted in ``teardown``).

Every action's outcome is predicted exactly before it is sent (success or the exact revert
reason, from the account's state and SPEC sections 5-6 in integer arithmetic) and checked after.
On top of that:

1. **Conservation** (checked after every step): ``quote.balanceOf(engine) * quote_scale >=
   insurance_fund + sum over the traders, the liquidator and the house of (cash + sum_m quote_m)``,
   and for every market the sizes of all those accounts sum to zero.
2. **Healthy accounts are not liquidatable**: whenever ``maint_health >= 0``, ``liquidate`` and
   ``liquidate_collateral`` revert ``"healthy"``.
3. **A liquidation does not hurt the account** (``liquidate``): with ``(E0, M0)`` the equity and
   maint_health before and ``(E1, M1)`` after, ``M1 >= M0 - 3`` and ``E1 >= min(E0, 0) - 1``, and if
   ``E1 < 0`` the penalty was 0. The wei of slack are the rounding of one close at one price: the
   account's upnl loses at most 1 wei when its position is split (``mul_down(a) + mul_down(b) >=
   mul_down(a + b) - 1``), the maintenance requirement falls by at least its exact share minus 1,
   and the penalty is rounded up by at most 1; equity moves only by the upnl split and the penalty,
   which is capped at the equity after the close. For ``liquidate_collateral`` the bound is
   ``M1 >= M0 - 2`` except when the whole balance is taken for its whole discounted value
   (docs/protocol.md, "the last collateral unit"), where the extra collateral given up is worth
   less than one native quote unit: ``M1 > M0 - quote_scale``.
4. **Nobody withdraws more than its equity**: a successful withdrawal of ``a`` takes at most the
   equity the account had (``value(a) <= E0``, value rounded down) and leaves ``E1 >= 0`` and
   ``init_health >= 0``; and a rule tries, for every trader, to withdraw quote worth ``E0 + 1``
   wei rounded up to a native unit, or the smallest collateral amount worth more than ``E0``,
   and requires a revert. Per trader the USD value withdrawn and deposited (at the prices of the
   moment) is tracked and shown with ``note()``.

Account state is read through ``Lens.accounts`` (one call for every account), which
tests/integration/test_lens.py holds equal to the engine's own views.
"""

from __future__ import annotations

from collections import Counter
from typing import Any

import pytest
from eth_tester.exceptions import TransactionFailed
from hypothesis import note, settings
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

from engine_helpers import ceil_div, mul_down, mul_up, perp_term  # the contract tests' own arithmetic
from protocol_model.chain import revert_reason
from protocol_model.errors import Revert

WAD = 10**18
MAX_UINT = 2**256 - 1
GAS = 5_000_000
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


# ---------------------------------------------------------------- chain access


def send(sender, call) -> Any:
    """Send with a fixed gas limit (no gas estimation: a third of the cost of ``Sender.send``);
    when it reverts, replay it as an ``eth_call`` on the unchanged state to read the reason."""
    try:
        return sender.send(call, gas=GAS)
    except Revert:
        pass
    try:
        call.call({"from": sender.address})
    except (ContractLogicError, TransactionFailed) as exc:
        raise Revert(revert_reason(exc) or "") from exc
    raise AssertionError("the transaction reverted but the same call succeeds")


def outcome(sender, call) -> tuple[str | None, Any]:
    """(None, receipt) on success, (reason, None) on revert."""
    try:
        return None, send(sender, call)
    except Revert as exc:
        return exc.reason, None


class Account:
    """One row of Lens.accounts."""

    def __init__(self, row: tuple) -> None:
        (self.address, self.cash, self.active, self.held, self.sizes, self.quotes, self.collateral,
         self.equity, self.init, self.maint) = row


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
        case=st.sampled_from(["q6", "q8", "q18"]),
        first=st.lists(st.sampled_from([0, 0, 100, 1_000, 5_000, 30_000]), min_size=3, max_size=3),
        collateral=st.lists(st.tuples(st.sampled_from(["WETH", "WBTC", None]), st.integers(100, 10_000)), min_size=3, max_size=3),
        opening=st.lists(st.tuples(st.sampled_from([ETH, BTC]), st.booleans(), st.integers(5_000, 95_000)), min_size=3, max_size=3),
    )
    def pick_case_and_open(self, case: str, first: list[int], collateral: list, opening: list) -> None:
        """A decimals case; for every trader maybe a quote deposit, maybe a collateral deposit (up
        to 10_000 USD of it) and an attempt at a position of 0.5x to 9.5x its equity. A trader with
        only collateral pays the taker fee from its cash, which goes negative."""
        p = self.p = self.deployments[case]
        note(f"decimals case {case}")
        e = self.e = p.engine
        self.house = e.address
        self.qs = e.functions.quote_scale().call()
        self.tokens = {"USDC": p.quote, "WETH": p.token("WETH"), "WBTC": p.token("WBTC")}
        self.dec = {s: p.decimals(s) for s in self.tokens}
        self.col_index = {s: p.dep.collateral(s)["index"] for s in COLLATERAL_ASSET}
        self.answers = {x: p.feed(x).functions.latestRoundData().call()[1] for x in ("ETH", "BTC")}
        self.markets = {m: tuple(e.functions.market(m).call())[2:6] for m in (ETH, BTC)}  # imf mmf fee taker
        self.col_params = {s: tuple(e.functions.collateral_config(self.tokens[s].address).call())[4:7] for s in COLLATERAL_ASSET}
        self.keeper_share = e.functions.keeper_share().call()
        self.accounts = [t.address for t in self.traders] + [self.liquidator.address, self.house]
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

    # ------------------------------------------------------------ deposit / withdraw

    def _deposit(self, trader, symbol: str, amount: int) -> None:
        token = self.tokens[symbol]
        value = amount * self.qs if symbol == "USDC" else self.value(symbol, amount)
        send(trader, self.e.functions.deposit(token.address, amount))
        self.sent()
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
        if symbol == "USDC":
            if acct.cash - amount * self.qs < 0:
                return "insufficient cash", 0
            return ("insufficient margin" if acct.init - amount * self.qs < 0 else None), amount * self.qs
        balance = self.balance(acct, symbol)
        if balance < amount:
            return "insufficient collateral", 0
        iw = self.col_params[symbol][0]
        init_after = acct.init - mul_down(self.value(symbol, balance), iw) + mul_down(self.value(symbol, balance - amount), iw)
        return ("insufficient margin" if init_after < 0 else None), self.value(symbol, amount)

    def _withdraw(self, trader, symbol: str, amount: int) -> str | None:
        acct = self.state(trader.address)
        expected, taken = self.expected_withdraw(acct, symbol, amount)
        reason, _ = outcome(trader, self.e.functions.withdraw(self.tokens[symbol].address, amount))
        self.sent()
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
        reason, _ = outcome(trader, self.e.functions.withdraw(self.tokens[symbol].address, amount))
        self.sent()
        note(f"{trader.address[:8]} tries to withdraw {amount} {symbol} > equity {acct.equity}: {reason}")
        assert reason in ("insufficient cash", "insufficient margin")
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
        expected = "insufficient margin" if increases and init_after < 0 else None

        reason, receipt = outcome(trader, self.e.functions.trade(m, delta, price))
        self.sent()
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

    @rule(asset=st.sampled_from(["ETH", "BTC"]), move_bps=st.integers(-3_000, 3_000))
    def move_price(self, asset: str, move_bps: int) -> None:
        self._move_price(asset, move_bps)

    def _move_price(self, asset: str, move_bps: int) -> None:
        if move_bps == 0:
            return
        lo, hi = ANSWER_BOUNDS[asset]
        answer = min(hi, max(lo, self.answers[asset] * (10_000 + move_bps) // 10_000))
        send(self.p.owner, self.p.feed(asset).functions.set_answer(answer))
        self.answers[asset] = answer
        self.sent()
        self.counts["move price"] += 1
        note(f"{asset} -> {answer / 1e8:.8f}")

    # ------------------------------------------------------------ liquidations

    def keeper(self, k: int):
        return self.liquidator if k == 3 else self.traders[k]

    def worst(self, key) -> int:
        """The trader for which ``key(account)`` is lowest."""
        return min(range(3), key=lambda i: key(self.state(self.traders[i].address)))

    @rule(k=KEEPERS, t=TARGETS, m=st.sampled_from([ETH, BTC, None]), max_size=MAX_SIZES)
    def liquidate(self, k: int, t: int | None, m: int | None, max_size: int) -> None:
        self._liquidate(k, t, m, max_size, 0)

    @rule(k=KEEPERS, m=st.sampled_from([ETH, BTC, None]), max_size=MAX_SIZES, shock_bps=st.integers(500, 5_000))
    def shock_then_liquidate(self, k: int, m: int | None, max_size: int, shock_bps: int) -> None:
        self._liquidate(k, None, m, max_size, shock_bps)

    def _liquidate(self, k: int, t: int | None, m: int | None, max_size: int, shock_bps: int) -> None:
        """``t`` None: the trader with the lowest maint_health; ``m`` None: its largest position.
        The price first moves ``shock_bps`` against the target's position in ``m``."""
        t = self.worst(lambda a: a.maint) if t is None else t
        keeper, target = self.keeper(k), self.traders[t]
        before = self.state(target.address)
        if m is None:
            m = max((ETH, BTC), key=lambda i: abs(before.sizes[i]) * self.price(MARKET_ASSET[i]))
        if before.sizes[m] != 0 and shock_bps:
            self._move_price(MARKET_ASSET[m], -shock_bps if before.sizes[m] > 0 else shock_bps)
            before = self.state(target.address)
        if before.maint >= 0:
            expected = "healthy"
        elif before.sizes[m] == 0:
            expected = "no position"
        else:
            expected = None
        plan = None
        if expected is None:
            plan = self.e.functions.preview_liquidate(target.address, m, max_size).call()
        wallet0 = self.p.quote.functions.balanceOf(keeper.address).call()
        fund0 = self.e.functions.insurance_fund().call()

        reason, receipt = outcome(keeper, self.e.functions.liquidate(target.address, m, max_size))
        self.sent()
        note(f"{keeper.address[:8]} liquidates {target.address[:8]} market {m} max {max_size}: {reason or 'ok'}")
        assert reason == expected  # invariant 2 when maint_health >= 0
        self.counts[f"liquidate {reason or 'ok'}"] += 1
        if reason is not None:
            return
        (size_delta, price, quote_delta, penalty, reward, insurance, size, quote, cash, equity, init, maint) = plan
        [ev] = self.e.events.Liquidation().process_receipt(receipt, errors=DISCARD)
        assert (ev.args.size_delta, ev.args.price, ev.args.quote_delta, ev.args.penalty, ev.args.keeper_reward,
                ev.args.insurance, ev.args.size, ev.args.quote, ev.args.cash) == tuple(plan[:9])
        after = self.state(target.address)
        assert (after.sizes[m], after.quotes[m], after.cash) == (size, quote, cash)
        assert (after.equity, after.init, after.maint) == (equity, init, maint)
        # The close: |size_delta| <= max_size, never past zero, priced at P.
        assert 0 < abs(size_delta) <= min(abs(before.sizes[m]), max_size)
        assert size_delta * before.sizes[m] < 0 and price == self.price(MARKET_ASSET[m])
        assert quote_delta == mul_down(-size_delta, price)
        # Penalty and its split.
        fee = self.markets[m][2]
        assert penalty <= mul_up(mul_up(abs(size_delta), price), fee)
        assert reward == mul_down(penalty, self.keeper_share) // self.qs
        assert insurance == penalty - reward * self.qs
        assert self.p.quote.functions.balanceOf(keeper.address).call() == wallet0 + reward
        assert self.e.functions.insurance_fund().call() == fund0 + insurance
        # Invariant 3.
        assert after.maint >= before.maint - 3
        assert after.equity >= min(before.equity, 0) - 1
        assert after.equity >= 0 or penalty == 0
        note(f"  maint {before.maint} -> {after.maint}, equity {before.equity} -> {after.equity}, penalty {penalty}")

    @rule(k=KEEPERS, t=TARGETS, symbol=st.sampled_from(["WETH", "WBTC"]), max_repay=MAX_REPAYS)
    def liquidate_collateral(self, k: int, t: int | None, symbol: str, max_repay: int) -> None:
        self._liquidate_collateral(k, t, symbol, max_repay, 0)

    @rule(k=KEEPERS, symbol=st.sampled_from(["WETH", "WBTC"]), max_repay=MAX_REPAYS, shock_bps=st.integers(1_000, 5_000))
    def shock_then_liquidate_collateral(self, k: int, symbol: str, max_repay: int, shock_bps: int) -> None:
        self._liquidate_collateral(k, None, symbol, max_repay, shock_bps)

    def _liquidate_collateral(self, k: int, t: int | None, symbol: str, max_repay: int, shock_bps: int) -> None:
        """``t`` None: the trader with the lowest cash among the liquidatable (else lowest maint).
        The collateral's price first falls by ``shock_bps``."""
        if t is None:
            t = self.worst(lambda a: (a.maint >= 0, a.cash))
        keeper, target = self.keeper(k), self.traders[t]
        token = self.tokens[symbol]
        self._move_price(COLLATERAL_ASSET[symbol], -shock_bps)
        before = self.state(target.address)
        balance = self.balance(before, symbol)
        expected, plan = None, None
        if before.maint >= 0:
            expected = "healthy"
        elif before.cash >= 0:
            expected = "no debt"
        elif balance == 0:
            expected = "no collateral"
        else:
            unit = 10 ** self.dec[symbol]
            price = self.price(COLLATERAL_ASSET[symbol])
            discounted = mul_up(price, WAD - self.col_params[symbol][2])
            cap = balance * discounted // unit // self.qs
            repay = min(ceil_div(-before.cash, self.qs), max_repay, cap)
            seized = balance if repay == cap else repay * self.qs * unit // discounted
            plan = (repay, seized, price, before.cash + repay * self.qs, balance - seized)
        quote0 = self.p.quote.functions.balanceOf(keeper.address).call()
        tok0 = token.functions.balanceOf(keeper.address).call()

        reason, receipt = outcome(keeper, self.e.functions.liquidate_collateral(target.address, token.address, max_repay))
        self.sent()
        note(f"{keeper.address[:8]} liquidates {symbol} of {target.address[:8]} max {max_repay}: {reason or 'ok'}")
        assert reason == expected  # invariant 2 when maint_health >= 0
        self.counts[f"liquidate_collateral {reason or 'ok'}"] += 1
        if reason is not None:
            return
        [ev] = self.e.events.CollateralLiquidation().process_receipt(receipt, errors=DISCARD)
        assert (ev.args.repay, ev.args.seized, ev.args.price, ev.args.cash, ev.args.collateral) == plan
        repay, seized = plan[0], plan[1]
        assert self.p.quote.functions.balanceOf(keeper.address).call() == quote0 - repay
        assert token.functions.balanceOf(keeper.address).call() == tok0 + seized
        after = self.state(target.address)
        assert (after.cash, self.balance(after, symbol)) == (plan[3], plan[4])
        whole_for_cap = seized == balance
        assert after.maint > before.maint - self.qs if whole_for_cap else after.maint >= before.maint - 2
        note(f"  repay {repay} seized {seized}; maint {before.maint} -> {after.maint}")

    @precondition(lambda self: any(self.state(t.address).cash < 0 for t in self.traders))
    @rule(t=st.sampled_from([0, 1, 2, None, None]))
    def settle_bad_debt(self, t: int | None) -> None:
        """``t`` None: the trader with the lowest cash among those without positions and
        collateral (else among all)."""
        t = self.worst(lambda a: (a.active != 0 or a.held != 0, a.cash)) if t is None else t
        target = self.traders[t]
        before, house = self.state(target.address), self.state(self.house)
        fund0 = self.e.functions.insurance_fund().call()
        if before.active:
            expected = "open positions"
        elif before.held:
            expected = "has collateral"
        elif before.cash >= 0:
            expected = "no bad debt"
        else:
            expected = None
        reason, receipt = outcome(self.liquidator, self.e.functions.settle_bad_debt(target.address))
        self.sent()
        note(f"settle {target.address[:8]}: {reason or 'ok'}")
        assert reason == expected
        self.counts[f"settle {reason or 'ok'}"] += 1
        if reason is None:
            deficit = -before.cash
            covered = min(deficit, fund0)
            [ev] = self.e.events.BadDebtSettled().process_receipt(receipt, errors=DISCARD)
            assert (ev.args.deficit, ev.args.covered, ev.args.socialised) == (deficit, covered, deficit - covered)
            assert self.state(target.address).cash == 0
            assert self.state(self.house).cash == house.cash - (deficit - covered)
            assert self.e.functions.insurance_fund().call() == fund0 - covered

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


@pytest.fixture
def funded(deployments, actors, tester):
    """Every actor of the machine holds plenty of every token, approved to each engine. Runs
    inside the test's own snapshot, before the per-example snapshots."""
    for p in deployments.values():
        for actor in (actors.trader, actors.trader2, actors.rival, actors.liquidator):
            for symbol, whole in FUND_WHOLE.items():
                token = p.token(symbol)
                p.owner.send(token.functions.mint(actor.address, whole * 10 ** p.decimals(symbol)), gas=GAS)
                actor.send(token.functions.approve(p.engine.address, MAX_UINT), gas=GAS)
    return deployments


def test_engine_invariants(funded, actors, tester):
    EngineMachine.deployments = funded
    EngineMachine.actors = actors
    EngineMachine.tester = tester
    run_state_machine_as_test(
        EngineMachine,
        settings=settings(),   # the loaded profile (conftest.py): its numbers and its health checks
    )
    print("engine invariants, outcomes over all examples:", dict(sorted(OUTCOMES.items())))
