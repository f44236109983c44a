"""MarginEngine.liquidate_collateral, preview_liquidate_collateral and settle_bad_debt: exact
repay and seized amounts in every decimals case, the insurance fund and socialised losses, and
every revert reason.

Accounts get negative cash the ordinary way: a losing perp position closed by a reduce-only trade
(allowed however under-margined the account is) realises its loss into cash.
"""

from __future__ import annotations

import pytest

from engine_helpers import (
    MAX_UINT,
    WAD,
    call_struct,
    ceil_div,
    events,
    fee_of,
    mul_down,
    mul_up,
    new_feed,
    new_token,
    quote_scale,
    reverts,
    updated_at,
)

DISCOUNT = 5 * 10**16


# ---------------------------------------------------------------- expected values


def expected_plan(*, cash: int, balance: int, price: int, decimals: int, quote_scale: int, max_repay: int,
                  discount: int = DISCOUNT, fund: int, house_cash: int, other_equity: int = 0,
                  nothing_else: bool = True) -> dict:
    """SPEC section 6 liquidate_collateral in native units, with the rounding of docs/protocol.md:
    the debt rounded up to whole quote units, the discounted price rounded up, the balance's
    discounted worth (``cap``) and the seized amount rounded down; a repay equal to ``cap`` takes
    the whole balance (the documented deviation that leaves no unliquidatable dust)."""
    unit = 10**decimals
    discounted = mul_up(price, WAD - discount)
    debt = ceil_div(-cash, quote_scale)
    cap = balance * discounted // unit // quote_scale
    repay = min(debt, max_repay, cap)
    seized = balance if repay == cap else repay * quote_scale * unit // discounted
    # SPEC 6: the account bears the discount only as far as its equity allows; the fund (then the
    # house) credits the rest; nothing left and the cash negative: settled in the same call.
    equity = balance * price // unit + cash + other_equity
    lost = balance * price // unit - (balance - seized) * price // unit
    after = equity + repay * quote_scale - lost
    subsidy = max(min(equity, 0) - after, 0)
    new_cash = cash + repay * quote_scale + subsidy
    from_fund = min(subsidy, fund)
    return {
        "repay": repay, "seized": seized, "price": price, "subsidy": subsidy,
        "cash": new_cash, "collateral": balance - seized,
        "insurance_fund": fund - from_fund, "house_cash": house_cash - (subsidy - from_fund),
        "equity": after + subsidy,
        "bad_debt": -new_cash if new_cash < 0 and seized == balance and nothing_else else 0,
    }


def event_of(plan: dict) -> dict:
    return {k: v for k, v in plan.items() if k not in ("equity", "bad_debt")}


def fund_and_house(p) -> dict:
    return {"fund": p.engine.functions.insurance_fund().call(), "house_cash": p.cash(p.engine.address)}


# ---------------------------------------------------------------- helpers


def preview(p, account: str, token: str, max_repay: int) -> dict:
    return call_struct(p.engine.functions.preview_liquidate_collateral(account, token, max_repay))


def liquidate_collateral(p, liquidator, account: str, token: str, max_repay: int = MAX_UINT):
    return liquidator.send(p.engine.functions.liquidate_collateral(account, token, max_repay))


def realise_eth_loss(p, trader, size: int, exit_usd: str) -> int:
    """Buy ``size`` ETH-PERP at the current price, move ETH to ``exit_usd`` and close: returns the
    change of cash (fees and the realised loss)."""
    entry = p.price("ETH")
    p.trade(trader, "ETH-PERP", size)
    p.set_price("ETH", exit_usd)
    exit_ = p.price("ETH")
    p.trade(trader, "ETH-PERP", -size)
    return mul_down(-size, entry) + mul_down(size, exit_) - fee_of(size, entry) - fee_of(size, exit_)


def wbtc_account_in_debt(p, trader, btc_usd: str) -> tuple[int, int]:
    """The trader holds 1 WBTC and about -5017.6 USD of cash, then BTC moves to ``btc_usd``."""
    balance = p.units("WBTC", 1)
    p.deposit(trader, "WBTC", balance)
    cash = realise_eth_loss(p, trader, 10 * WAD, "1500.12345678")
    assert p.cash(trader.address) == cash < 0
    p.set_price("BTC", btc_usd)
    return balance, cash


# ---------------------------------------------------------------- liquidate_collateral


@pytest.mark.parametrize(
    "btc_usd,max_repay_usd,limit",
    [
        ("6000.87654321", None, "debt"),          # the whole debt is repaid
        ("6000.87654321", "1000.123456", "max_repay"),
        ("5000.12345678", None, "collateral"),    # the collateral is worth less than the debt
    ],
)
def test_liquidate_collateral_exact_amounts(any_protocol, actors, btc_usd, max_repay_usd, limit):
    p, trader, liquidator = any_protocol, actors.trader, actors.liquidator
    qs = quote_scale(p)
    wbtc = p.token("WBTC")
    dec = p.decimals("WBTC")
    balance, cash = wbtc_account_in_debt(p, trader, btc_usd)
    price = p.price("BTC")
    before = p.health(trader.address)
    assert before[2] < 0
    max_repay = MAX_UINT if max_repay_usd is None else p.units("USDC", max_repay_usd)
    exp = expected_plan(cash=cash, balance=balance, price=price, decimals=dec, quote_scale=qs, max_repay=max_repay,
                        **fund_and_house(p))
    debt, worth = ceil_div(-cash, qs), balance * mul_up(price, WAD - DISCOUNT) // 10**dec // qs
    assert exp["repay"] == {"debt": debt, "max_repay": max_repay, "collateral": worth}[limit]
    assert exp["repay"] < {"debt": min(max_repay, worth), "max_repay": min(debt, worth), "collateral": debt}[limit]
    p.fund(liquidator, "USDC", exp["repay"])
    engine_quote0 = p.quote.functions.balanceOf(p.engine.address).call()
    total0 = p.engine.functions.total_collateral(wbtc.address).call()
    plan = preview(p, trader.address, wbtc.address, max_repay)

    receipt = liquidate_collateral(p, liquidator, trader.address, wbtc.address, max_repay)

    assert plan == exp
    [ev] = events(p, receipt, "CollateralLiquidation")
    assert dict(ev.args) == {"account": trader.address, "token": wbtc.address, "liquidator": liquidator.address, **event_of(exp)}
    assert p.cash(trader.address) == (0 if exp["bad_debt"] else exp["cash"])
    assert [e.args["deficit"] for e in events(p, receipt, "BadDebtSettled")] == ([exp["bad_debt"]] if exp["bad_debt"] else [])
    assert p.engine.functions.collateral(trader.address, wbtc.address).call() == exp["collateral"]
    assert p.engine.functions.total_collateral(wbtc.address).call() == total0 - exp["seized"]
    assert p.quote.functions.balanceOf(liquidator.address).call() == 0
    assert p.quote.functions.balanceOf(p.engine.address).call() == engine_quote0 + exp["repay"]
    assert wbtc.functions.balanceOf(liquidator.address).call() == exp["seized"]
    # The caller gets what it paid for at the discounted price, rounded down by less than one
    # token unit; taking the whole balance gives it less than one quote unit more.
    discounted = mul_up(price, WAD - DISCOUNT)
    paid = exp["repay"] * qs * 10**dec
    if exp["seized"] == balance and limit == "collateral":
        assert 0 <= balance * discounted - paid < qs * 10**dec
    else:
        assert exp["seized"] * discounted <= paid < (exp["seized"] + 1) * discounted
    # A collateral liquidation raises maint_health, and never takes equity below min(before, 0).
    assert p.health(trader.address)[2] > before[2]
    assert p.health(trader.address)[0] >= min(before[0], 0)
    if limit == "collateral":   # equity -17.5 would have fallen by the 250 discount: the fund paid it
        assert exp["subsidy"] > 0 and exp["bad_debt"] > 0
    if limit == "debt":
        assert 0 <= exp["cash"] < qs  # the debt was rounded up to whole quote units
        assert p.engine.functions.held_collaterals(trader.address).call() != 0


def test_liquidate_collateral_seizing_everything_clears_the_bit(any_protocol, actors):
    """Round numbers: 10 WBTC at 10_000 with a 5% discount are worth exactly 95_000."""
    p, trader, liquidator = any_protocol, actors.trader, actors.liquidator
    qs = quote_scale(p)
    wbtc = p.token("WBTC")
    balance = p.units("WBTC", 10)
    p.deposit(trader, "WBTC", balance)
    cash = realise_eth_loss(p, trader, 1000 * WAD, "1700")
    assert cash == -301_850 * WAD
    p.set_price("BTC", 10_000)
    p.fund(liquidator, "USDC", p.units("USDC", 95_000))

    receipt = liquidate_collateral(p, liquidator, trader.address, wbtc.address)

    [ev] = events(p, receipt, "CollateralLiquidation")
    # Equity -201,850 would fall by the 5,000 discount: the fund credits it (equity never below
    # min(before, 0)); with nothing left the -201,850 of cash is settled in the same call.
    assert (ev.args.repay, ev.args.seized, ev.args.subsidy, ev.args.cash, ev.args.collateral) == (
        p.units("USDC", 95_000), balance, 5_000 * WAD, -201_850 * WAD, 0,
    )
    [settled] = events(p, receipt, "BadDebtSettled")
    assert (settled.args.deficit, settled.args.covered, settled.args.socialised) == (
        201_850 * WAD, 95_000 * WAD, 106_850 * WAD)
    assert p.engine.functions.held_collaterals(trader.address).call() == 0
    assert p.engine.functions.collateral(trader.address, wbtc.address).call() == 0
    assert p.cash(trader.address) == 0
    assert 95_000 * WAD == p.units("USDC", 95_000) * qs
    assert reverts(liquidator, p.engine.functions.liquidate_collateral(trader.address, wbtc.address, 1)) == "healthy"


def test_liquidate_collateral_works_while_paused(protocol, actors):
    p, trader, liquidator = protocol, actors.trader, actors.liquidator
    balance, cash = wbtc_account_in_debt(p, trader, "6000")
    p.owner.send(p.engine.functions.pause())
    p.fund(liquidator, "USDC", 10**6)
    liquidate_collateral(p, liquidator, trader.address, p.token("WBTC").address, 10**6)
    assert p.cash(trader.address) == cash + WAD


def test_liquidate_collateral_needs_allowance_of_the_caller(protocol, actors):
    p, trader, liquidator = protocol, actors.trader, actors.liquidator
    wbtc_account_in_debt(p, trader, "6000")
    call = p.engine.functions.liquidate_collateral(trader.address, p.token("WBTC").address, 10**6)
    assert reverts(liquidator, call) == "insufficient allowance"


def test_liquidate_collateral_healthy(protocol, actors):
    p, trader = protocol, actors.trader
    balance, cash = wbtc_account_in_debt(p, trader, "60000")
    assert cash < 0 and p.health(trader.address)[2] >= 0
    call = p.engine.functions.liquidate_collateral(trader.address, p.token("WBTC").address, MAX_UINT)
    assert reverts(actors.liquidator, call) == "healthy"


def test_liquidate_collateral_no_debt(protocol, actors):
    p, trader = protocol, actors.trader
    p.deposit(trader, "USDC", 1000 * 10**6)
    p.deposit(trader, "WETH", 10**17)
    p.trade(trader, "ETH-PERP", 5 * WAD)
    p.set_price("ETH", 1800)
    assert p.cash(trader.address) > 0 and p.health(trader.address)[2] < 0
    call = p.engine.functions.liquidate_collateral(trader.address, p.token("WETH").address, MAX_UINT)
    assert reverts(actors.liquidator, call) == "no debt"


def test_liquidate_collateral_no_collateral_of_that_token(protocol, actors):
    p, trader = protocol, actors.trader
    wbtc_account_in_debt(p, trader, "6000")
    call = p.engine.functions.liquidate_collateral(trader.address, p.token("WETH").address, MAX_UINT)
    assert reverts(actors.liquidator, call) == "no collateral"


def test_dust_collateral_is_taken_for_nothing_then_debt_settles(protocol, actors):
    """One wei of an 18-decimal token is worth less than one native unit of a 6-decimal quote: its
    cap is 0, so a repay of 0 takes it (docs/protocol.md, "the last collateral unit"), which
    clears the way to settle_bad_debt."""
    p, trader, liquidator = protocol, actors.trader, actors.liquidator
    weth = p.token("WETH")
    p.deposit(trader, "USDC", 250 * 10**6)
    cash = 250 * WAD + realise_eth_loss(p, trader, WAD, "1700")
    p.deposit(trader, "WETH", 1)
    assert cash < 0 and p.health(trader.address)[2] < 0
    assert reverts(actors.outsider, p.engine.functions.settle_bad_debt(trader.address)) == "has collateral"
    exp = expected_plan(cash=cash, balance=1, price=p.price("ETH"), decimals=18, quote_scale=10**12, max_repay=MAX_UINT,
                        **fund_and_house(p))
    assert (exp["repay"], exp["seized"], exp["subsidy"]) == (0, 1, 1_700)
    assert preview(p, trader.address, weth.address, MAX_UINT) == exp

    # The caller has neither quote tokens nor an allowance: a repay of 0 pulls nothing. The fund
    # credits the 1,700 wei the wei of WETH was worth, and the debt left is settled in the same call.
    receipt = liquidate_collateral(p, liquidator, trader.address, weth.address)

    [ev] = events(p, receipt, "CollateralLiquidation")
    assert (ev.args.repay, ev.args.seized, ev.args.cash, ev.args.collateral) == (0, 1, cash + 1_700, 0)
    assert weth.functions.balanceOf(liquidator.address).call() == 1
    assert p.engine.functions.held_collaterals(trader.address).call() == 0
    [settled] = events(p, receipt, "BadDebtSettled")
    assert settled.args.deficit == -(cash + 1_700)
    assert p.cash(trader.address) == 0


def test_repay_equal_to_cap_takes_whole_balance_one_less_does_not(any_protocol, actors):
    p, trader, liquidator = any_protocol, actors.trader, actors.liquidator
    qs = quote_scale(p)
    wbtc = p.token("WBTC")
    dec = p.decimals("WBTC")
    balance, cash = wbtc_account_in_debt(p, trader, "5000.12345678")
    price = p.price("BTC")
    discounted = mul_up(price, WAD - DISCOUNT)
    cap = balance * discounted // 10**dec // qs
    assert cap < ceil_div(-cash, qs)
    below = preview(p, trader.address, wbtc.address, cap - 1)
    assert below["seized"] == (cap - 1) * qs * 10**dec // discounted < balance
    at_cap = preview(p, trader.address, wbtc.address, cap)
    assert (at_cap["repay"], at_cap["seized"], at_cap["collateral"]) == (cap, balance, 0)
    p.fund(liquidator, "USDC", cap)
    liquidate_collateral(p, liquidator, trader.address, wbtc.address, cap - 1)
    assert p.engine.functions.collateral(trader.address, wbtc.address).call() == balance - below["seized"]


@pytest.mark.parametrize("which", ["quote", "unlisted"])
def test_liquidate_collateral_not_listed(protocol, actors, which):
    p, trader = protocol, actors.trader
    wbtc_account_in_debt(p, trader, "6000")
    token = p.quote.address if which == "quote" else new_token(p, 18, "X", name="X").address
    call = p.engine.functions.liquidate_collateral(trader.address, token, MAX_UINT)
    assert reverts(actors.liquidator, call) == "not listed"


def test_liquidate_collateral_zero_amount(protocol, actors):
    p, trader = protocol, actors.trader
    wbtc_account_in_debt(p, trader, "6000")
    call = p.engine.functions.liquidate_collateral(trader.address, p.token("WBTC").address, 0)
    assert reverts(actors.liquidator, call) == "zero amount"


def test_liquidate_collateral_house(protocol, actors):
    p = protocol
    call = p.engine.functions.liquidate_collateral(p.engine.address, p.token("WBTC").address, MAX_UINT)
    assert reverts(actors.liquidator, call) == "house"


def test_liquidate_collateral_stale_price_but_preview_reads_it(protocol, actors, tester):
    p, trader = protocol, actors.trader
    wbtc_account_in_debt(p, trader, "6000")
    t0 = updated_at(p, "BTC")
    tester.time_travel(t0 + 3601)
    wbtc = p.token("WBTC").address
    call = p.engine.functions.liquidate_collateral(trader.address, wbtc, 10**6)
    assert reverts(actors.liquidator, call) == "stale price"
    assert preview(p, trader.address, wbtc, 10**6)["repay"] == 10**6


# ---------------------------------------------------------------- settle_bad_debt


def test_settle_bad_debt_covered_by_insurance(any_protocol, actors):
    p, trader = any_protocol, actors.trader
    p.deposit(trader, "USDC", p.units("USDC", 250))
    cash = 250 * WAD + realise_eth_loss(p, trader, WAD, "1700.00000001")
    assert cash < 0
    fund0 = p.engine.functions.insurance_fund().call()
    assert fund0 == 100_000 * WAD
    house0 = p.cash(p.engine.address)
    engine_quote0 = p.quote.functions.balanceOf(p.engine.address).call()

    receipt = actors.outsider.send(p.engine.functions.settle_bad_debt(trader.address))

    [ev] = events(p, receipt, "BadDebtSettled")
    assert dict(ev.args) == {"account": trader.address, "deficit": -cash, "covered": -cash, "socialised": 0,
                             "house_cash": house0, "insurance_fund": fund0 + cash}
    assert p.cash(trader.address) == 0
    assert p.engine.functions.insurance_fund().call() == fund0 + cash
    assert p.cash(p.engine.address) == house0
    assert p.quote.functions.balanceOf(p.engine.address).call() == engine_quote0
    assert reverts(actors.outsider, p.engine.functions.settle_bad_debt(trader.address)) == "no bad debt"


def test_settle_bad_debt_beyond_insurance_is_socialised(any_protocol, actors):
    p, trader = any_protocol, actors.trader
    p.deposit(trader, "USDC", p.units("USDC", 210_000))
    cash = 210_000 * WAD + realise_eth_loss(p, trader, 1000 * WAD, "1600")
    assert cash == -191_800 * WAD          # 209,000 after the fee, -400,000 - 800 on the close
    fund0 = p.engine.functions.insurance_fund().call()
    house0 = p.cash(p.engine.address)

    receipt = actors.outsider.send(p.engine.functions.settle_bad_debt(trader.address))

    [ev] = events(p, receipt, "BadDebtSettled")
    assert dict(ev.args) == {
        "account": trader.address, "deficit": 191_800 * WAD, "covered": fund0, "socialised": 191_800 * WAD - fund0,
        "house_cash": house0 - (191_800 * WAD - fund0), "insurance_fund": 0,
    }
    assert fund0 == 100_000 * WAD
    assert p.engine.functions.insurance_fund().call() == 0
    assert p.cash(p.engine.address) == house0 - (191_800 * WAD - fund0)
    assert p.cash(trader.address) == 0
    assert p.health(trader.address) == (0, 0, 0)


def test_settle_bad_debt_with_empty_insurance_socialises_everything(protocol, actors):
    p = protocol
    # First drain the insurance fund with one large bad debt ...
    p.deposit(actors.trader, "USDC", 210_000 * 10**6)
    realise_eth_loss(p, actors.trader, 1000 * WAD, "1600")
    actors.outsider.send(p.engine.functions.settle_bad_debt(actors.trader.address))
    assert p.engine.functions.insurance_fund().call() == 0
    # ... then a second account's deficit goes entirely to the house.
    p.set_price("ETH", 2000)
    p.deposit(actors.trader2, "USDC", 250 * 10**6)
    cash = 250 * WAD + realise_eth_loss(p, actors.trader2, WAD, "1700")
    house0 = p.cash(p.engine.address)
    receipt = actors.outsider.send(p.engine.functions.settle_bad_debt(actors.trader2.address))
    [ev] = events(p, receipt, "BadDebtSettled")
    assert (ev.args.deficit, ev.args.covered, ev.args.socialised) == (-cash, 0, -cash)
    assert p.cash(p.engine.address) == house0 + cash


def test_settle_bad_debt_works_while_paused(protocol, actors):
    p, trader = protocol, actors.trader
    p.deposit(trader, "USDC", 250 * 10**6)
    cash = 250 * WAD + realise_eth_loss(p, trader, WAD, "1700")
    p.owner.send(p.engine.functions.pause())
    receipt = actors.outsider.send(p.engine.functions.settle_bad_debt(trader.address))
    assert events(p, receipt, "BadDebtSettled")[0].args.deficit == -cash > 0
    assert p.cash(trader.address) == 0


def test_settle_bad_debt_open_positions(protocol, actors):
    p, trader = protocol, actors.trader
    p.deposit(trader, "USDC", 250 * 10**6)
    p.trade(trader, "BTC-PERP", 1)  # a position of one wei keeps the account open
    realise_eth_loss(p, trader, WAD, "1700")
    assert p.cash(trader.address) < 0
    assert reverts(actors.outsider, p.engine.functions.settle_bad_debt(trader.address)) == "open positions"


def test_settle_bad_debt_has_collateral(protocol, actors):
    """Collateral dust worth less than one quote unit cannot be seized and blocks settlement."""
    p, trader = protocol, actors.trader
    p.deposit(trader, "USDC", 250 * 10**6)
    realise_eth_loss(p, trader, WAD, "1700")
    p.deposit(trader, "WETH", 1)
    assert reverts(actors.outsider, p.engine.functions.settle_bad_debt(trader.address)) == "has collateral"


@pytest.mark.parametrize("state", ["empty", "positive"])
def test_settle_bad_debt_no_bad_debt(protocol, actors, state):
    p, trader = protocol, actors.trader
    if state == "positive":
        p.deposit(trader, "USDC", 10**6)
    assert reverts(actors.outsider, p.engine.functions.settle_bad_debt(trader.address)) == "no bad debt"


def test_settle_bad_debt_house(protocol, actors):
    p = protocol
    assert reverts(actors.outsider, p.engine.functions.settle_bad_debt(p.engine.address)) == "house"


# ---------------------------------------------------------------- preview on unusable prices


def test_preview_liquidate_collateral_on_bad_price_reverts_like_the_action(protocol, actors):
    from eth_tester.exceptions import TransactionFailed
    from web3.exceptions import ContractLogicError

    from protocol_model.chain import revert_reason

    p, trader = protocol, actors.trader
    token = new_token(p, 18, "ZRO", name="Zero")
    feed = new_feed(p, 8, 0, 10**20, "ZRO / USD")  # no round yet: answer 0
    p.owner.send(p.engine.functions.list_collateral(token.address, feed.address, 5 * 10**17, 6 * 10**17, DISCOUNT, 0))
    p.deposit(trader, "USDC", 250 * 10**6)
    realise_eth_loss(p, trader, WAD, "1700")
    p.owner.send(token.functions.mint(trader.address, 10**18))
    trader.send(token.functions.approve(p.engine.address, 10**18))
    trader.send(p.engine.functions.deposit(token.address, 10**18))
    assert p.cash(trader.address) < 0 and p.health(trader.address)[2] < 0
    call = p.engine.functions.liquidate_collateral(trader.address, token.address, MAX_UINT)
    assert reverts(actors.liquidator, call) == "bad price"

    with pytest.raises((ContractLogicError, TransactionFailed)) as exc:
        preview(p, trader.address, token.address, MAX_UINT)
    assert revert_reason(exc.value) == "bad price"


def test_regression_collateral_liquidation_cannot_turn_a_solvent_account_bankrupt(protocol, actors):
    """Issue 11: an account at equity +1,629 USD (1 WBTC worth 60,000 and cash about -58,371 after
    a realised ETH loss) became -1,371 USD in one liquidate_collateral: the caller took the whole
    5 % discount (3,000 USD) though the equity could bear only 1,629 of it. Now the account bears
    the discount only down to min(equity before, 0) = 0; the insurance fund credits its cash the
    other 1,371; the caller still gets the whole balance for the discounted value."""
    p, trader, liquidator = protocol, actors.trader, actors.liquidator
    qs = quote_scale(p)
    wbtc = p.token("WBTC")
    balance = p.units("WBTC", 1)
    p.deposit(trader, "WBTC", balance)
    cash = realise_eth_loss(p, trader, 100 * WAD, "1418.009")   # about -58,371 USD
    price = p.price("BTC")
    equity0 = p.health(trader.address)[0]
    assert equity0 == cash + balance * price // 10**8 and 1_628 * WAD < equity0 < 1_630 * WAD
    assert p.health(trader.address)[2] < 0
    p.fund(liquidator, "USDC", p.units("USDC", 100_000))
    fh = fund_and_house(p)
    exp = expected_plan(cash=cash, balance=balance, price=price, decimals=8, quote_scale=qs, max_repay=MAX_UINT,
                        fund=fh["fund"], house_cash=fh["house_cash"])
    # What the pre-revision engine did: the account bore the whole discount.
    unbounded = equity0 + exp["repay"] * qs - balance * price // 10**8
    assert -1_372 * WAD < unbounded < -1_370 * WAD
    assert exp["seized"] == balance and 1_370 * WAD < exp["subsidy"] < 1_372 * WAD
    plan = preview(p, trader.address, wbtc.address, MAX_UINT)
    assert plan == exp
    usdc0 = p.quote.functions.balanceOf(liquidator.address).call()
    receipt = liquidate_collateral(p, liquidator, trader.address, wbtc.address)
    [ev] = events(p, receipt, "CollateralLiquidation")
    assert {k: ev.args[k] for k in event_of(exp)} == event_of(exp)
    assert p.health(trader.address)[0] == 0 == min(equity0, 0)   # was -1,371 USD
    assert p.cash(trader.address) == exp["cash"] == 0
    assert fund_and_house(p) == {"fund": fh["fund"] - exp["subsidy"], "house_cash": fh["house_cash"]}
    # The caller: the whole discount (1 WBTC for 95 % of its value).
    assert wbtc.functions.balanceOf(liquidator.address).call() == balance
    assert p.quote.functions.balanceOf(liquidator.address).call() == usdc0 - exp["repay"]
    assert exp["repay"] == balance * mul_up(price, WAD - DISCOUNT) // 10**8 // qs
