"""bot.decide: the tick's decision that the live bot and the off-chain simulator share, on the
hand-built states of test_bot_strategy (A bankrupt, B solvent but liquidatable at ETH 1,800)."""

from __future__ import annotations

from test_bot_strategy import A, B, WAD, crashed, planner

from bot.decide import after_refusal, decide, unexpired
from bot.strategy import LIQUIDATE, SETTLE

PRICES = {"base_fee_wei": 0, "eth_price_wad": 2_000 * WAD}


def test_every_liquidatable_account_is_planned_and_merged_by_profit() -> None:
    state = crashed()
    d = decide(state, [A, B], planner(backstop=True, min_profit=0), **PRICES, backoffs=set(), suppressed=set(),
               in_flight=lambda a: False)
    assert {c.account for c in d.chosen} == {A, B} and all(c.kind == LIQUIDATE for c in d.chosen)
    assert [c.profit_usd_wad for c in d.chosen] == sorted((c.profit_usd_wad for c in d.chosen), reverse=True)
    assert d.backed_off == [] and {c.account for c in d.evaluated} == {A, B}


def test_backed_off_in_flight_and_suppressed_accounts_are_left_alone() -> None:
    state = crashed()
    d = decide(state, [A, B], planner(backstop=True, min_profit=0), **PRICES, backoffs={A}, suppressed=set(),
               in_flight=lambda a: a == B)
    assert d.chosen == [] and d.backed_off == [A] and d.evaluated == []
    d = decide(state, [A, B], planner(backstop=True, min_profit=0), **PRICES, backoffs=set(),
               suppressed={(B, "0")}, in_flight=lambda a: False)
    assert [c.account for c in d.chosen] == [A]            # B's first step was refused: its sequence ends
    assert any(c.account == B for c in d.evaluated)


def test_the_quote_balance_is_read_only_when_an_account_needs_it() -> None:
    reads: list[int] = []
    decide(crashed(), [A, B], planner(backstop=False, min_profit=0), **PRICES, backoffs=set(), suppressed=set(),
           in_flight=lambda a: False, quote_balance=lambda: reads.append(1) or 0)
    assert reads == []                                     # no collateral held: no read


def test_backstop_settles_accounts_left_with_negative_cash_only() -> None:
    state = crashed()
    state.accounts[A].positions.clear()
    state.accounts[A].cash = -500 * WAD
    d = decide(state, [A], planner(backstop=True), **PRICES, backoffs=set(), suppressed=set(),
               in_flight=lambda a: False, backstop=True)
    assert [(c.account, c.kind) for c in d.chosen] == [(A, SETTLE)]
    d = decide(state, [A], planner(backstop=False), **PRICES, backoffs=set(), suppressed=set(),
               in_flight=lambda a: False, backstop=False)
    assert d.chosen == []


def test_refusals_back_off_suppress_or_wait() -> None:
    assert after_refusal(1, True, 100, 20) == ("wait", 100)
    assert after_refusal(0, True, 100, 20) == ("back_off", 120)
    assert after_refusal(0, False, 100, 20) == ("suppress", 120)
    assert after_refusal(0, False, 100, 0) == ("suppress", 101)   # at least one block
    assert unexpired({"a": 99, "b": 100, "c": 150}, 100) == {"b": 100, "c": 150}


# ---------------------------------------------------------------------- the tick's transactions


def test_a_ticks_orders_go_out_in_batches_bounded_by_orders_and_gas() -> None:
    from bot.config import BotConfig
    from bot.liquidator import batch_size, tx_units
    from bot.strategy import LIQUIDATE, SETTLE, Candidate

    def cand(i: int, kind: str = LIQUIDATE) -> Candidate:
        return Candidate(f"0x{i:040x}", kind, 0, "ETH-PERP", 1, 1, 1, 1, None, 100 - i)

    assert batch_size(BotConfig.from_env(environ={})) == 16
    assert batch_size(BotConfig.from_env(environ={}, max_batch_orders=32, max_batch_gas=2_000_000)) == 4
    assert batch_size(BotConfig.from_env(environ={}, max_batch_orders=1)) == 1
    chosen = [cand(i) for i in range(37)] + [cand(90, SETTLE), cand(91, SETTLE)]
    units = tx_units(chosen, 16)
    assert [len(u) for u in units] == [16, 16, 5, 1, 1]
    assert [c for u in units for c in u] == chosen                      # order kept: most profitable first
    assert all(u[0].kind == SETTLE for u in units[3:])                   # settlements on their own
    assert tx_units(chosen, 1) == [[c] for c in chosen]


def test_a_batch_is_priced_like_its_orders() -> None:
    """Gas limit: the per-order estimate times the orders; the fee strategy's profit input: the
    orders' average, so a profit-share tip per gas is the share of the batch's profit over its gas."""
    from bot.liquidator import batch_request
    from bot.strategy import LIQUIDATE, GasQuote, Candidate
    from bot.txs import ProfitShareTip, batch_orders

    def cand(i: int, profit_wei: int) -> Candidate:
        return Candidate(f"0x{i:040x}", LIQUIDATE, i % 2, "ETH-PERP", 10**18 + i, 1, 1, 1,
                         GasQuote(0, 0, 0, profit_wei), 7)

    unit = [cand(1, 3 * 10**15), cand(2, 5 * 10**15), cand(3, 10**15)]
    req = batch_request("0x" + "e1" * 20, unit, 500_000)
    assert req.kind == "liquidate_many" and req.gas == 1_500_000
    assert req.expected_profit_wei == 3 * 10**15 and req.expected_profit_usd_wad == 21
    assert [(o.account, o.market, o.amount) for o in batch_orders(req.data)] == [
        (c.account, c.target, c.amount) for c in unit]
    tip = ProfitShareTip(WAD // 10, 500_000).tip_for(req.expected_profit_wei)
    assert tip * req.gas == 9 * 10**15 // 10          # 10 % of the batch's 0.009 ETH over its gas
