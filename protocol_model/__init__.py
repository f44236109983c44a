"""xmargin's exact Python model of the protocol: state, arithmetic, health and every transition."""

from .errors import ChainError, ConfigError, Revert, XmarginError
from .wad import (
    INT256_MAX, INT256_MIN, MAX_AMOUNT, MAX_COLLATERALS, MAX_MARKETS, MAX_PRICE, MAX_SIZE, MAX_TOTAL_COLLATERAL,
    UINT256_MAX, WAD,
    BaseWad, Native, Wad, div_ceil, div_floor, div_up, evm_sdiv, mul_down, mul_up, to_wad,
)
from .state import Account, Collateral, Feed, Market, Params, Position, ProtocolState
from .health import (
    LOOSE, PREVIEW, STRICT, UNBOUNDED_RATIO, Health, HealthBook, HealthBreakdown, answer_to_price, breakdown,
    feed_liquidation_price, feed_price, health, is_bankrupt, is_liquidatable, liquidation_price, margin_ratio,
    overflow_safe, price, read_age,
)
from .actions import (
    BadDebtSettlement, CollateralLiquidationPlan, DepositResult, LiquidationPlan, TradeResult, Wallets,
    WithdrawResult, deposit, liquidate, liquidate_collateral, pause, preview_liquidate,
    preview_liquidate_collateral, seed_house, seed_insurance, set_answer, set_collateral_params,
    set_market_params, set_params, settle_bad_debt, trade, unpause, withdraw,
)
