"""MarginEngine deposit and withdraw: balances, events, caps, margin and every revert reason.

Expected values are computed by hand with the integer helpers of ``engine_helpers`` (Python's
``//`` floors, which is what the spec's floor means; ceil is ``-((-a) // b)``).
"""

from __future__ import annotations

import pytest

from engine_helpers import (
    MAX_AMOUNT,
    MAX_PRICE,
    WAD,
    events,
    largest_passing,
    mul_down,
    mul_up,
    new_feed,
    new_token,
    quote_scale,
    reverts,
    set_next_timestamp,
    updated_at,
    value_of,
)

# ---------------------------------------------------------------- helpers


def weights(p, symbol: str) -> tuple[int, int]:
    cfg = p.engine.functions.collateral_config(p.token(symbol).address).call()
    return cfg[4], cfg[5]


def list_extra_collateral(p, *, feed_answer: int, feed_max: int, decimals: int = 18):
    """A new token priced by a new 8-decimal feed, listed with weights 0.5/0.6 and 5% discount."""
    token = new_token(p, decimals, "XTR", name="Extra")
    feed = new_feed(p, 8, feed_answer, feed_max, "XTR / USD")
    p.owner.send(p.engine.functions.list_collateral(token.address, feed.address, 5 * 10**17, 6 * 10**17, 5 * 10**16, 0))
    return token, feed


def fund_token(p, actor, token, amount: int) -> None:
    p.owner.send(token.functions.mint(actor.address, amount))
    actor.send(token.functions.approve(p.engine.address, 2**256 - 1))


# ---------------------------------------------------------------- deposit


def test_deposit_quote_credits_cash_and_emits_event(any_protocol, actors):
    p, trader = any_protocol, actors.trader
    amount = p.units("USDC", "1234.567891")
    engine_before = p.quote.functions.balanceOf(p.engine.address).call()

    receipt = p.deposit(trader, "USDC", amount)

    expected_cash = amount * quote_scale(p)
    assert p.cash(trader.address) == expected_cash
    assert p.quote.functions.balanceOf(trader.address).call() == 0
    assert p.quote.functions.balanceOf(p.engine.address).call() == engine_before + amount
    [ev] = events(p, receipt, "Deposit")
    assert ev.args.account == trader.address
    assert ev.args.token == p.quote.address
    assert ev.args.amount == amount
    assert ev.args.cash == expected_cash
    assert ev.args.collateral == 0
    assert p.health(trader.address) == (expected_cash, expected_cash, expected_cash)


def test_deposit_quote_twice_accumulates(protocol, actors):
    p, trader = protocol, actors.trader
    p.deposit(trader, "USDC", 7)
    receipt = p.deposit(trader, "USDC", 5)
    assert p.cash(trader.address) == 12 * 10**12
    assert events(p, receipt, "Deposit")[0].args.cash == 12 * 10**12


@pytest.mark.parametrize("symbol", ["WETH", "WBTC"])
def test_deposit_collateral_credits_balance_and_values_it_rounded_down(any_protocol, actors, symbol):
    p, trader = any_protocol, actors.trader
    dec = p.decimals(symbol)
    # 1.5 tokens plus one native unit: the extra unit's value is fractional for low-decimals tokens.
    amount = 3 * 10**dec // 2 + 1
    token = p.token(symbol)
    idx = p.dep.collateral(symbol)["index"]

    receipt = p.deposit(trader, symbol, amount)

    assert p.engine.functions.collateral(trader.address, token.address).call() == amount
    assert p.engine.functions.total_collateral(token.address).call() == amount
    assert p.engine.functions.held_collaterals(trader.address).call() == 1 << idx
    assert p.cash(trader.address) == 0
    assert token.functions.balanceOf(p.engine.address).call() == amount
    [ev] = events(p, receipt, "Deposit")
    assert (ev.args.account, ev.args.token, ev.args.amount, ev.args.cash, ev.args.collateral) == (
        trader.address, token.address, amount, 0, amount,
    )
    price = p.price("ETH" if symbol == "WETH" else "BTC")
    value = value_of(amount, price, dec)
    iw, mw = weights(p, symbol)
    assert p.health(trader.address) == (value, mul_down(value, iw), mul_down(value, mw))


def test_deposit_collateral_from_two_accounts_counts_towards_total(protocol, actors):
    p = protocol
    weth = p.token("WETH")
    p.deposit(actors.trader, "WETH", 3 * 10**18)
    p.deposit(actors.trader2, "WETH", 2 * 10**18)
    assert p.engine.functions.total_collateral(weth.address).call() == 5 * 10**18
    assert p.engine.functions.collateral(actors.trader2.address, weth.address).call() == 2 * 10**18


def test_deposit_cap_allows_up_to_cap_then_reverts(protocol, actors):
    p = protocol
    weth = p.token("WETH")
    iw, mw = weights(p, "WETH")
    cap = 5 * 10**18
    p.owner.send(p.engine.functions.set_collateral_params(weth.address, iw, mw, 5 * 10**16, cap))
    p.deposit(actors.trader, "WETH", 3 * 10**18)
    p.deposit(actors.trader2, "WETH", 2 * 10**18)  # exactly the cap, across two accounts
    p.fund(actors.trader, "WETH", 1)
    assert reverts(actors.trader, p.engine.functions.deposit(weth.address, 1)) == "deposit cap"
    # Withdrawing frees room under the cap.
    actors.trader2.send(p.engine.functions.withdraw(weth.address, 1))
    actors.trader.send(p.engine.functions.deposit(weth.address, 1))
    assert p.engine.functions.total_collateral(weth.address).call() == cap


# The hard bound on a collateral's total deposits (docs/protocol.md): the largest number of whole
# tokens for which balance * P and value * weight stay inside int256 at every P <= MAX_PRICE.
MAX_TOTAL_COLLATERAL = (2**255 - 1) // (MAX_PRICE * WAD)


@pytest.mark.parametrize("decimals", [0, 6, 8])
def test_deposit_total_bound_allows_up_to_it_then_reverts_deposit_cap(protocol, actors, decimals):
    p = protocol
    token, feed = list_extra_collateral(p, feed_answer=10**8, feed_max=2**200, decimals=decimals)
    bound = MAX_TOTAL_COLLATERAL * 10**decimals
    assert bound < MAX_AMOUNT                          # one deposit can reach it
    fund_token(p, actors.trader, token, bound + 1)
    fund_token(p, actors.trader2, token, 1)

    receipt = actors.trader.send(p.engine.functions.deposit(token.address, bound - 1))
    [ev] = events(p, receipt, "Deposit")
    assert (ev.args.account, ev.args.token, ev.args.amount, ev.args.cash, ev.args.collateral) == (
        actors.trader.address, token.address, bound - 1, 0, bound - 1,
    )
    receipt = actors.trader2.send(p.engine.functions.deposit(token.address, 1))   # exactly the bound
    [ev] = events(p, receipt, "Deposit")
    assert (ev.args.amount, ev.args.cash, ev.args.collateral) == (1, 0, 1)
    assert p.engine.functions.total_collateral(token.address).call() == bound

    assert reverts(actors.trader, p.engine.functions.deposit(token.address, 1)) == "deposit cap"
    assert p.engine.functions.total_collateral(token.address).call() == bound
    assert p.engine.functions.collateral(actors.trader.address, token.address).call() == bound - 1
    assert token.functions.balanceOf(actors.trader.address).call() == 2

    # The worst case for health: the largest weight and a price above the range, read as MAX_PRICE.
    p.owner.send(p.engine.functions.set_collateral_params(token.address, WAD - 1, WAD - 1, 0, 0))
    p.owner.send(feed.functions.set_answer(2**200))
    value = value_of(bound - 1, MAX_PRICE, decimals)
    assert p.health(actors.trader.address) == (value, mul_down(value, WAD - 1), mul_down(value, WAD - 1))

    # A withdrawal makes room again.
    p.owner.send(feed.functions.set_answer(10**8))
    actors.trader2.send(p.engine.functions.withdraw(token.address, 1))
    actors.trader.send(p.engine.functions.deposit(token.address, 1))
    assert p.engine.functions.total_collateral(token.address).call() == bound


def test_deposit_total_bound_order_and_owner_cap(protocol, actors):
    p = protocol
    token, _ = list_extra_collateral(p, feed_answer=10**8, feed_max=2**200, decimals=8)
    bound = MAX_TOTAL_COLLATERAL * 10**8
    fund_token(p, actors.trader, token, MAX_AMOUNT + 1)
    # "amount too large" is checked first; an amount within MAX_AMOUNT but above the bound: "deposit cap"
    assert reverts(actors.trader, p.engine.functions.deposit(token.address, MAX_AMOUNT + 1)) == "amount too large"
    assert reverts(actors.trader, p.engine.functions.deposit(token.address, MAX_AMOUNT)) == "deposit cap"
    # An owner's cap above the bound does not lift it.
    p.owner.send(p.engine.functions.set_collateral_params(token.address, 5 * 10**17, 6 * 10**17, 5 * 10**16, bound + 10))
    actors.trader.send(p.engine.functions.deposit(token.address, bound))
    assert reverts(actors.trader, p.engine.functions.deposit(token.address, 1)) == "deposit cap"
    # The quote token has no cap: MAX_AMOUNT is far above the bound of a 6-decimal token.
    p.fund(actors.trader, "USDC", MAX_AMOUNT)
    actors.trader.send(p.engine.functions.deposit(p.quote.address, MAX_AMOUNT))


def test_deposit_zero_amount_reverts(protocol, actors):
    assert reverts(actors.trader, protocol.engine.functions.deposit(protocol.quote.address, 0)) == "zero amount"


def test_deposit_amount_too_large_reverts(protocol, actors):
    p = protocol
    p.fund(actors.trader, "USDC", MAX_AMOUNT + 1)
    assert reverts(actors.trader, p.engine.functions.deposit(p.quote.address, MAX_AMOUNT + 1)) == "amount too large"
    # The bound itself is accepted.
    actors.trader.send(p.engine.functions.deposit(p.quote.address, MAX_AMOUNT))
    assert p.cash(actors.trader.address) == MAX_AMOUNT * quote_scale(p)


def test_deposit_unlisted_token_reverts(protocol, actors):
    p = protocol
    token = new_token(p, 18, "UNL", name="Unlisted")
    fund_token(p, actors.trader, token, 10**18)
    assert reverts(actors.trader, p.engine.functions.deposit(token.address, 10**18)) == "not listed"


def test_deposit_without_allowance_or_balance_reverts_with_token_reason(protocol, actors):
    p = protocol
    assert reverts(actors.trader, p.engine.functions.deposit(p.quote.address, 10)) == "insufficient allowance"
    p.fund(actors.trader, "USDC", 9)
    assert reverts(actors.trader, p.engine.functions.deposit(p.quote.address, 10)) == "insufficient balance"
    assert p.cash(actors.trader.address) == 0


def test_deposit_allowed_while_paused(protocol, actors):
    p = protocol
    p.owner.send(p.engine.functions.pause())
    p.deposit(actors.trader, "USDC", 10**6)
    p.deposit(actors.trader, "WETH", 10**18)
    assert p.cash(actors.trader.address) == WAD
    assert p.engine.functions.collateral(actors.trader.address, p.token("WETH").address).call() == 10**18


# ---------------------------------------------------------------- withdraw: quote


def test_withdraw_quote_partial_and_full(any_protocol, actors):
    p, trader = any_protocol, actors.trader
    qs = quote_scale(p)
    amount = p.units("USDC", 500)
    p.deposit(trader, "USDC", amount)
    part = p.units("USDC", "123.45")

    receipt = trader.send(p.engine.functions.withdraw(p.quote.address, part))

    assert p.cash(trader.address) == (amount - part) * qs
    assert p.quote.functions.balanceOf(trader.address).call() == part
    [ev] = events(p, receipt, "Withdraw")
    assert (ev.args.account, ev.args.token, ev.args.amount, ev.args.cash, ev.args.collateral) == (
        trader.address, p.quote.address, part, (amount - part) * qs, 0,
    )
    trader.send(p.engine.functions.withdraw(p.quote.address, amount - part))
    assert p.cash(trader.address) == 0
    assert p.quote.functions.balanceOf(trader.address).call() == amount


def test_withdraw_quote_more_than_cash_reverts(any_protocol, actors):
    p, trader = any_protocol, actors.trader
    amount = p.units("USDC", 100)
    p.deposit(trader, "USDC", amount)
    assert reverts(trader, p.engine.functions.withdraw(p.quote.address, amount + 1)) == "insufficient cash"
    assert p.cash(trader.address) == amount * quote_scale(p)


def test_withdraw_quote_cannot_borrow_against_collateral(protocol, actors):
    """Cash may not go below zero even when collateral would cover it: no borrowing."""
    p, trader = protocol, actors.trader
    p.deposit(trader, "WETH", 10 * 10**18)
    p.deposit(trader, "USDC", 10**6)
    assert reverts(trader, p.engine.functions.withdraw(p.quote.address, 10**6 + 1)) == "insufficient cash"


def test_withdraw_quote_limited_by_margin_exact_boundary(protocol, actors):
    p, trader = protocol, actors.trader
    p.deposit(trader, "USDC", 1000 * 10**6)
    p.trade(trader, "ETH-PERP", WAD)  # 1 ETH at 2000: fee 1 USD, initial requirement 200 USD
    price = p.price("ETH")
    fee = mul_up(mul_up(WAD, price), 5 * 10**14)
    cash = 1000 * WAD - fee
    quote = -mul_up(WAD, price)
    init = cash + mul_down(WAD, price) + quote - mul_up(mul_up(WAD, price), 10**17)
    assert p.health(trader.address)[1] == init == 799 * WAD
    max_units = init // 10**12

    assert reverts(trader, p.engine.functions.withdraw(p.quote.address, max_units + 1)) == "insufficient margin"
    trader.send(p.engine.functions.withdraw(p.quote.address, max_units))
    assert p.health(trader.address)[1] == 0


# ---------------------------------------------------------------- withdraw: collateral


@pytest.mark.parametrize("symbol", ["WETH", "WBTC"])
def test_withdraw_collateral_partial_then_all_clears_bit(any_protocol, actors, symbol):
    p, trader = any_protocol, actors.trader
    token = p.token(symbol)
    dec = p.decimals(symbol)
    amount = 2 * 10**dec
    p.deposit(trader, symbol, amount)
    part = 10**dec // 4

    receipt = trader.send(p.engine.functions.withdraw(token.address, part))

    [ev] = events(p, receipt, "Withdraw")
    assert (ev.args.account, ev.args.token, ev.args.amount, ev.args.cash, ev.args.collateral) == (
        trader.address, token.address, part, 0, amount - part,
    )
    assert p.engine.functions.total_collateral(token.address).call() == amount - part
    assert token.functions.balanceOf(trader.address).call() == part

    receipt = trader.send(p.engine.functions.withdraw(token.address, amount - part))
    assert events(p, receipt, "Withdraw")[0].args.collateral == 0
    assert p.engine.functions.collateral(trader.address, token.address).call() == 0
    assert p.engine.functions.held_collaterals(trader.address).call() == 0
    assert p.engine.functions.total_collateral(token.address).call() == 0
    assert token.functions.balanceOf(trader.address).call() == amount
    assert p.health(trader.address) == (0, 0, 0)


def test_withdraw_collateral_more_than_balance_reverts(protocol, actors):
    p, trader = protocol, actors.trader
    p.deposit(trader, "WBTC", 10**8)
    assert reverts(trader, p.engine.functions.withdraw(p.token("WBTC").address, 10**8 + 1)) == "insufficient collateral"


def test_withdraw_collateral_never_deposited_reverts(protocol, actors):
    call = protocol.engine.functions.withdraw(protocol.token("WETH").address, 1)
    assert reverts(actors.trader, call) == "insufficient collateral"


def test_withdraw_collateral_limited_by_margin_exact_boundary(protocol, actors):
    """The largest withdrawal leaving init_health >= 0 goes through; one more wei does not."""
    p, trader = protocol, actors.trader
    weth = p.token("WETH")
    balance = 10**18
    p.deposit(trader, "WETH", balance)
    size = 5 * WAD
    p.trade(trader, "ETH-PERP", size)  # notional 10_000 USD against 1 WETH
    price = p.price("ETH")
    iw, _ = weights(p, "WETH")
    cash = -mul_up(mul_up(size, price), 5 * 10**14)
    perp = mul_down(size, price) - mul_up(size, price) - mul_up(mul_up(size, price), 10**17)

    def init_after(withdrawn: int) -> int:
        return mul_down(value_of(balance - withdrawn, price, 18), iw) + cash + perp

    assert p.health(trader.address)[1] == init_after(0)
    lo = largest_passing(lambda w: init_after(w) >= 0, 0, balance)  # init_after(0) >= 0 > init_after(balance)
    assert reverts(trader, p.engine.functions.withdraw(weth.address, lo + 1)) == "insufficient margin"
    trader.send(p.engine.functions.withdraw(weth.address, lo))
    assert p.health(trader.address)[1] == init_after(lo) >= 0


# ---------------------------------------------------------------- withdraw: guards


def test_withdraw_while_paused_reverts_then_works_after_unpause(protocol, actors):
    p, trader = protocol, actors.trader
    p.deposit(trader, "USDC", 10**6)
    p.deposit(trader, "WETH", 10**18)
    p.owner.send(p.engine.functions.pause())
    for token in (p.quote.address, p.token("WETH").address):
        assert reverts(trader, p.engine.functions.withdraw(token, 1)) == "paused"
    p.owner.send(p.engine.functions.unpause())
    trader.send(p.engine.functions.withdraw(p.quote.address, 1))
    assert p.cash(trader.address) == WAD - 10**12


def test_withdraw_zero_amount_reverts(protocol, actors):
    p = protocol
    p.deposit(actors.trader, "USDC", 10**6)
    assert reverts(actors.trader, p.engine.functions.withdraw(p.quote.address, 0)) == "zero amount"


def test_withdraw_amount_too_large_reverts(protocol, actors):
    p = protocol
    p.deposit(actors.trader, "USDC", 10**6)
    assert reverts(actors.trader, p.engine.functions.withdraw(p.quote.address, MAX_AMOUNT + 1)) == "amount too large"
    # At the bound the next check speaks instead.
    assert reverts(actors.trader, p.engine.functions.withdraw(p.quote.address, MAX_AMOUNT)) == "insufficient cash"


def test_withdraw_unlisted_token_reverts(protocol, actors):
    p = protocol
    token = new_token(p, 18, "UNL", name="Unlisted")
    assert reverts(actors.trader, p.engine.functions.withdraw(token.address, 1)) == "not listed"


# ---------------------------------------------------------------- withdraw: prices


def test_withdraw_stale_price_of_held_collateral_reverts_at_age_limit_plus_one(protocol, actors, tester):
    p, trader = protocol, actors.trader
    weth = p.token("WETH")
    p.deposit(trader, "USDC", 10**6)
    p.deposit(trader, "WETH", 10**18)
    p.set_price("ETH", 2000)
    max_age = p.engine.functions.max_price_age().call()
    assert max_age == 3600
    t0 = updated_at(p, "ETH")

    set_next_timestamp(tester, t0 + max_age)  # exactly max_price_age old: usable
    trader.send(p.engine.functions.withdraw(weth.address, 1))

    set_next_timestamp(tester, t0 + max_age + 1)
    assert reverts(trader, p.engine.functions.withdraw(weth.address, 1)) == "stale price"
    # A quote withdrawal checks the same held feed.
    assert reverts(trader, p.engine.functions.withdraw(p.quote.address, 1)) == "stale price"
    # A fresh answer makes it usable again.
    p.set_price("ETH", 2000)
    trader.send(p.engine.functions.withdraw(weth.address, 1))
    assert p.engine.functions.collateral(trader.address, weth.address).call() == 10**18 - 2


def test_withdraw_stale_price_with_short_max_age(protocol, actors, tester):
    p, trader = protocol, actors.trader
    p.deposit(trader, "WBTC", 10**8)
    p.set_price("BTC", 60_000)
    receipt = p.owner.send(p.engine.functions.set_collateral_price_age(p.token("WBTC").address, 5))
    assert events(p, receipt, "CollateralPriceAgeSet")[0].args.max_price_age == 5
    set_next_timestamp(tester, updated_at(p, "BTC") + 6)
    assert reverts(trader, p.engine.functions.withdraw(p.token("WBTC").address, 1)) == "stale price"
    # Views read stale prices without reverting.
    value = value_of(10**8, p.price("BTC"), 8)
    assert p.health(trader.address)[0] == value


def test_withdraw_without_priced_holdings_ignores_stale_feeds(protocol, actors, tester):
    """An account holding only quote cash reads no feed, so stale feeds do not block it."""
    p, trader = protocol, actors.trader
    p.deposit(trader, "USDC", 10**6)
    set_next_timestamp(tester, max(updated_at(p, "ETH"), updated_at(p, "BTC")) + 10 * 3600)
    trader.send(p.engine.functions.withdraw(p.quote.address, 10**6))
    assert p.cash(trader.address) == 0


def test_withdraw_all_of_a_stale_collateral_needs_no_price(protocol, actors, tester):
    """Withdrawing a collateral balance in full drops the asset before the health check."""
    p, trader = protocol, actors.trader
    p.deposit(trader, "WETH", 10**18)
    set_next_timestamp(tester, updated_at(p, "ETH") + 3601)
    assert reverts(trader, p.engine.functions.withdraw(p.token("WETH").address, 10**18 - 1)) == "stale price"
    trader.send(p.engine.functions.withdraw(p.token("WETH").address, 10**18))
    assert p.engine.functions.held_collaterals(trader.address).call() == 0


def test_withdraw_bad_price_zero_answer_reverts(protocol, actors):
    """A listed collateral whose feed has no answer yet (answer 0) is unusable."""
    p, trader = protocol, actors.trader
    token, feed = list_extra_collateral(p, feed_answer=0, feed_max=10**20)
    fund_token(p, trader, token, 10**18)
    trader.send(p.engine.functions.deposit(token.address, 10**18))
    assert feed.functions.latestRoundData().call()[1] == 0
    assert reverts(trader, p.engine.functions.withdraw(token.address, 1)) == "bad price"
    # Views read it as worth 0.
    assert p.health(trader.address) == (0, 0, 0)


def test_withdraw_bad_price_above_max_price_reverts(protocol, actors):
    """An answer above MAX_PRICE (after normalising to WAD) is unusable; views clamp it."""
    p, trader = protocol, actors.trader
    scale = 10**10  # 8-decimal feed
    token, feed = list_extra_collateral(p, feed_answer=10**8, feed_max=2**120)
    fund_token(p, trader, token, 10**18)
    trader.send(p.engine.functions.deposit(token.address, 10**18))
    p.owner.send(feed.functions.set_answer(MAX_PRICE // scale))  # the largest usable answer
    trader.send(p.engine.functions.withdraw(token.address, 1))
    p.owner.send(feed.functions.set_answer(MAX_PRICE // scale + 1))
    assert reverts(trader, p.engine.functions.withdraw(token.address, 1)) == "bad price"
    balance = 10**18 - 1
    value = value_of(balance, MAX_PRICE, 18)
    assert p.health(trader.address) == (value, mul_down(value, 5 * 10**17), mul_down(value, 6 * 10**17))
