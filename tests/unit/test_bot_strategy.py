"""bot.strategy on small hand-built states: backstop planning, settlements, scratch copies.

Listing as in test_model_scenarios.py: ETH-PERP imf 10 %, mmf 5 %, liquidation fee 2 %, keeper
share 50 %, USDC quote (6 decimals). Gas is free-ish: 1 gas unit at base fee 0 and tip 0.
"""

from __future__ import annotations

from protocol_model.health import health
from protocol_model.state import Account, Collateral, Feed, Market, Params, Position, ProtocolState

from bot.strategy import LIQUIDATE, GasModel, Planner, can_settle, scratch_state
from bot.txs import FixedTip

WAD = 10**18
USD = WAD
ETH_FEED = "0x00000000000000000000000000000000000E7Ee0"
USDC = "0x000000000000000000000000000000000000Dc00"
WETH = "0x000000000000000000000000000000000000E700"
ENGINE = "0x00000000000000000000000000000000000E9901"
KEEPER = "0x00000000000000000000000000000000000Bee01"
A, B = "0x" + "0" * 39 + "a", "0x" + "0" * 39 + "b"


def make_state(eth_price: int) -> ProtocolState:
    params = Params(quote_token=USDC, quote_scale=10**12, keeper_share=WAD // 2, max_price_age=3_600,
                    dust_notional=10 * USD, owner="0x" + "11" * 20)
    markets = [Market(0, ETH_FEED, 10**10, WAD // 10, WAD // 20, WAD // 50, 0, name="ETH-PERP")]
    collaterals = [Collateral(WETH, ETH_FEED, 10**10, 18, 10**18, 80 * 10**16, 85 * 10**16, 5 * 10**16,
                              index=0, symbol="WETH")]
    feeds = {ETH_FEED: Feed(ETH_FEED, 8, eth_price * 10**8, 1_000, round_id=1)}
    state = ProtocolState(ENGINE, params, markets, collaterals, feeds, total_collateral={WETH: 0},
                          timestamp=1_000, block=7)
    state.house = Account(ENGINE, cash=10_000_000 * USD)
    return state


def long(state: ProtocolState, address: str, cash_usd: int, size_eth: int, entry: int) -> None:
    acc = state.accounts.setdefault(address, Account(address))
    acc.cash = cash_usd * USD
    acc.positions[0] = Position(size_eth * WAD, -size_eth * entry * USD)
    hp = state.house.positions.get(0, Position())
    state.house.positions[0] = Position(hp.size - size_eth * WAD, hp.quote + size_eth * entry * USD)


def planner(backstop: bool, min_profit: int = 1_000 * USD) -> Planner:
    return Planner(GasModel(FixedTip(0), 1), min_profit, liquidator=KEEPER, backstop=backstop)


def crashed() -> ProtocolState:
    """A: 10 ETH long from 2,000 with 1,500 USD: at 1,800 it is liquidatable, equity -500 (bankrupt).
    B: 10 ETH long from 2,000 with 2,800 USD: at 1,800 equity 800, maint 800 - 900 < 0, solvent."""
    state = make_state(1_800)
    long(state, A, 1_500, 10, 2_000)
    long(state, B, 2_800, 10, 2_000)
    assert health(state, state.accounts[A]).equity < 0
    h = health(state, state.accounts[B])
    assert h.equity > 0 and h.maint_health < 0
    return state


def test_normal_planner_closes_a_bankrupt_account_the_insurance_fund_pays_for() -> None:
    """SPEC 6 (liquidate step 5): the keeper is paid keeper_share of the full penalty also when the
    account is bankrupt (the insurance fund pays it), so a plain profit-seeking planner closes it."""
    plan = planner(backstop=False, min_profit=0).plan(crashed(), A, base_fee_wei=10**9, eth_price_wad=2_000 * WAD)
    assert [c.kind for c in plan.chosen] == [LIQUIDATE]
    assert plan.chosen[0].profit_usd_wad > 0


def test_backstop_closes_a_bankrupt_account_below_the_minimum_profit() -> None:
    state = crashed()
    plan = planner(backstop=True).plan(state, A, base_fee_wei=10**9, eth_price_wad=2_000 * WAD)
    assert [c.kind for c in plan.chosen] == [LIQUIDATE]
    assert state.accounts[A].positions                    # planned on a scratch copy only


def test_backstop_keeps_the_minimum_profit_for_solvent_accounts() -> None:
    state = crashed()
    plan = planner(backstop=True, min_profit=10**6 * USD).plan(state, B, base_fee_wei=0, eth_price_wad=2_000 * WAD)
    assert plan.chosen == []


def test_can_settle_needs_no_positions_no_collateral_and_negative_cash() -> None:
    state = crashed()
    assert not can_settle(state, A)                       # open position
    state.accounts[A].positions.clear()
    state.accounts[A].cash = -5 * USD
    assert can_settle(state, A)
    state.accounts[A].collateral[WETH] = 1
    assert not can_settle(state, A)
    state.accounts[A].collateral.clear()
    state.accounts[A].cash = 0
    assert not can_settle(state, A)
    assert not can_settle(state, ENGINE)


def test_scratch_state_changes_leave_the_original_alone() -> None:
    state = crashed()
    before_acc = (state.accounts[A].cash, dict(state.accounts[A].positions), dict(state.accounts[A].collateral))
    before_house = (state.house.cash, dict(state.house.positions))
    sim = scratch_state(state, A)
    planner(backstop=True)._apply(sim, planner(backstop=True).plan(state, A, base_fee_wei=0,
                                                                     eth_price_wad=2_000 * WAD).chosen[0])
    assert not sim.accounts[A].positions
    assert (state.accounts[A].cash, dict(state.accounts[A].positions), dict(state.accounts[A].collateral)) == before_acc
    assert (state.house.cash, dict(state.house.positions)) == before_house


# ---------------------------------------------------------------------- the sender's fast signer


def test_fast_eip1559_signature_matches_eth_account_byte_for_byte() -> None:
    import random

    from eth_account import Account

    from bot.store import SentTx
    from bot.txs import _fast_signer, _sign_eip1559

    rng = random.Random(5)
    for _ in range(50):
        acct = Account.from_key(rng.randbytes(31).rjust(32, b"\x01"))
        key = _fast_signer(acct)
        assert key is not None, "coincurve (a dependency) is missing: the fast signer is not in use"
        to = Account.from_key(rng.randbytes(32)).address
        data = "0x" + rng.randbytes(rng.choice([0, 4, 68, 100])).hex()
        tip = rng.randrange(0, 10**10)
        tx = SentTx(hash="0x", nonce=rng.randrange(10**6), sender=acct.address, kind="liquidate", account=to,
                    target="0", to_address=to, data=data, gas_limit=rng.randrange(21_000, 10**7),
                    max_fee_wei=tip + rng.randrange(0, 10**12), tip_wei=tip, sent_block=1,
                    value_wei=rng.choice([0, 10**18]))
        expected = acct.sign_transaction({
            "type": 2, "chainId": 1337, "nonce": tx.nonce, "to": to, "value": tx.value_wei, "data": data,
            "gas": tx.gas_limit, "maxFeePerGas": tx.max_fee_wei, "maxPriorityFeePerGas": tip,
        }).raw_transaction
        assert _sign_eip1559(key, 1337, tx) == bytes(expected)


def test_send_waves_double_in_size_and_keep_the_profit_order() -> None:
    from bot.liquidator import send_waves

    items = list(range(45))
    waves = send_waves(items, first=4)  # type: ignore[arg-type]
    assert [len(w) for w in waves] == [4, 8, 16, 17]
    assert [x for w in waves for x in w] == items
    assert send_waves([], first=4) == []
    assert [len(w) for w in send_waves(items[:3], first=4)] == [3]  # type: ignore[arg-type]
    assert [len(w) for w in send_waves(items[:7], first=0)] == [1, 2, 4]  # type: ignore[arg-type]
