"""xmargin's exact Python model of the protocol: state, arithmetic, health and every transition."""

from .errors import ChainError, ConfigError, Revert, XmarginError
from .wad import (
    INT256_MAX, INT256_MIN, MAX_AMOUNT, MAX_COLLATERALS, MAX_MARKETS, MAX_ORDERS, MAX_PRICE, MAX_PRICE_AGE, MAX_SIZE, MAX_TOTAL_COLLATERAL,
    UINT256_MAX, WAD,
    BaseWad, Native, Wad, div_ceil, div_floor, div_up, evm_sdiv, mul_down, mul_up, to_wad,
)
from .state import Account, Collateral, Feed, Market, Params, Position, ProtocolState
from .health import (
    LIQUIDATION, LOOSE, PREVIEW, PRICE_BAD, PRICE_OK, PRICE_STALE, STRICT, UNBOUNDED_RATIO, Health, HealthBook, HealthBreakdown, answer_to_price, breakdown,
    feed_liquidation_price, feed_price, health, is_bankrupt, is_liquidatable, liquidation_price, margin_ratio,
    overflow_safe, price, price_age, read_feed, term_price,
)
from .actions import (
    SKIP_REASONS, BadDebtSettlement, BatchResult, auto_settlement, CollateralLiquidationPlan, DepositResult, LiquidationOrder,
    LiquidationPlan, OrderOutcome, OrderPreview, Skip, TradeResult, Wallets, WithdrawResult, deposit, liquidate,
    liquidate_collateral, liquidate_many, pause, preview_liquidate, preview_liquidate_collateral,
    preview_liquidate_many, seed_house, seed_insurance, set_answer, set_collateral_params,
    set_collateral_price_age, set_market_params, set_market_price_age, set_params, settle_bad_debt, trade,
    unpause, withdraw,
)
