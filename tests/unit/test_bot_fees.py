"""Fee strategies, the replacement bump (>= 12.5 %, rounded up) and revert classification."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from bot.config import BotConfig
from bot.txs import (
    GWEI,
    MIN_REPLACEMENT_BUMP_WAD,
    WAD,
    FeeStrategy,
    Fees,
    FixedTip,
    ProfitShareTip,
    bump,
    bump_fees,
    capped_fees,
    classify_revert,
    replacement_fees,
    strategy_from_config,
)

wei = st.integers(min_value=0, max_value=10**30)


def test_fixed_tip_max_fee_is_twice_base_plus_tip_capped():
    s = FixedTip(2 * GWEI, max_fee_cap_wei=100 * GWEI)
    assert s.fees(30 * GWEI, 0) == Fees(62 * GWEI, 2 * GWEI)
    assert s.fees(30 * GWEI, 10**30) == Fees(62 * GWEI, 2 * GWEI)  # profit does not matter
    assert s.fees(60 * GWEI, 0) == Fees(100 * GWEI, 2 * GWEI)      # capped
    assert FixedTip(5 * GWEI, max_fee_cap_wei=3 * GWEI).fees(0, 0) == Fees(3 * GWEI, 3 * GWEI)  # tip <= max fee
    assert isinstance(s, FeeStrategy)


def test_profit_share_tip_is_share_of_profit_per_gas():
    s = ProfitShareTip(share_wad=WAD // 10, gas_estimate=500_000, max_fee_cap_wei=1000 * GWEI, min_tip_wei=GWEI // 10)
    profit = 10**16  # 0.01 ETH expected profit
    # 10 % of 0.01 ETH over 500k gas = 2 gwei per gas
    assert s.tip_for(profit) == 2 * GWEI
    assert s.fees(10 * GWEI, profit) == Fees(22 * GWEI, 2 * GWEI)
    assert s.tip_for(profit + 499_999) == 2 * GWEI            # rounded down: never pay more than the share
    assert s.tip_for(0) == s.tip_for(-5) == GWEI // 10        # no profit: the floor
    assert s.tip_for(1) == GWEI // 10
    big = ProfitShareTip(WAD, 21_000, max_fee_cap_wei=50 * GWEI)
    assert big.fees(10 * GWEI, 10**18) == Fees(50 * GWEI, 50 * GWEI)  # capped by the max fee
    with pytest.raises(ValueError):
        ProfitShareTip(WAD + 1, 1)
    with pytest.raises(ValueError):
        ProfitShareTip(WAD, 0)


@given(base=wei, profit=wei, share=st.integers(0, WAD), gas=st.integers(1, 10**7), cap=st.integers(1, 10**30))
def test_profit_share_fees_never_exceed_cap_or_share(base, profit, share, gas, cap):
    fees = ProfitShareTip(share, gas, max_fee_cap_wei=cap).fees(base, profit)
    assert fees.max_fee_per_gas <= cap
    assert fees.max_priority_fee_per_gas <= fees.max_fee_per_gas
    assert fees.max_priority_fee_per_gas * gas * WAD <= profit * share  # the tip never exceeds the share


def test_bump_exact_values():
    assert bump(8) == 9                       # 8 * 1.125 = 9 exactly
    assert bump(7) == 8                       # 7.875 rounds up
    assert bump(1) == 2                       # 1.125 rounds up
    assert bump(0) == 0
    assert bump(10**9) == 1_125_000_000
    assert bump(10**9 + 1) == 1_125_000_002   # 1125000001.125 rounds up
    assert bump(100, 2 * WAD // 10) == 120    # a larger configured bump is honoured
    assert bump(100, WAD // 10) == bump(100) == 113  # a smaller one is raised to 12.5 %
    assert bump_fees(Fees(30 * GWEI, 2 * GWEI)) == Fees(33_750_000_000, 2_250_000_000)


@given(max_fee=wei, tip=wei, bump_wad=st.integers(0, 3 * WAD))
def test_bump_is_at_least_12_5_percent_rounded_up_and_minimal(max_fee, tip, bump_wad):
    tip = min(tip, max_fee)
    new = bump_fees(Fees(max_fee, tip), bump_wad)
    effective = max(bump_wad, MIN_REPLACEMENT_BUMP_WAD)
    for old, bumped in ((max_fee, new.max_fee_per_gas), (tip, new.max_priority_fee_per_gas)):
        assert bumped * WAD >= old * (WAD + effective)            # at least the bump
        assert (bumped - 1) * WAD < old * (WAD + effective)       # and rounded up, not more
    assert new.max_fee_per_gas >= new.max_priority_fee_per_gas


def test_replacement_takes_fresh_fees_when_higher():
    old = Fees(20 * GWEI, 1 * GWEI)
    assert replacement_fees(old, Fees(10 * GWEI, GWEI)) == Fees(22_500_000_000, 1_125_000_000)
    assert replacement_fees(old, Fees(50 * GWEI, 3 * GWEI)) == Fees(50 * GWEI, 3 * GWEI)
    assert replacement_fees(old, Fees(10 * GWEI, 4 * GWEI)) == Fees(22_500_000_000, 4 * GWEI)


def test_capped_fees_rejects_negative():
    with pytest.raises(ValueError):
        capped_fees(-1, 0, 10)


def test_strategy_from_config():
    fixed = strategy_from_config(BotConfig.from_env(environ={}, fixed_tip_wei=3 * GWEI, max_fee_cap_wei=90 * GWEI))
    assert fixed == FixedTip(3 * GWEI, 90 * GWEI)
    share = strategy_from_config(BotConfig.from_env(
        environ={"XMARGIN_GAS_STRATEGY": "profit_share", "XMARGIN_PROFIT_SHARE_WAD": "25%",
                 "XMARGIN_LIQUIDATION_GAS_ESTIMATE": "400000", "XMARGIN_MIN_TIP_WEI": "0.5gwei"}))
    assert share == ProfitShareTip(WAD // 4, 400_000, 500 * GWEI, GWEI // 2)


@pytest.mark.parametrize(("reason", "expected"), [
    ("healthy", "lost_race"),
    ("no position", "lost_race"),
    ("no debt", "lost_race"),
    ("no collateral", "lost_race"),
    ("no bad debt", "lost_race"),
    ("execution reverted: healthy", "lost_race"),
    ("  Healthy ", "lost_race"),
    ("stale price", "error"),
    ("paused", "error"),
    ("not listed", "error"),
    ("too small", "error"),
    ("unhealthy", "error"),
    ("", "error"),
    (None, "error"),
])
def test_classify_revert(reason, expected):
    assert classify_revert(reason) == expected
