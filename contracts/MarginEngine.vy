# pragma version 0.4.3
# pragma nonreentrancy on
# pragma optimize codesize
# pragma experimental-codegen
"""
@title MarginEngine
@notice Cross-margin perpetuals: one account per address holds quote cash, collateral tokens and
        perp positions in up to 16 markets, margined together. Every trade and liquidation is
        against the house (this contract's own account).
@dev Glossary (units in brackets; see ../docs/protocol.md):
     WAD            10**18, the fixed-point scale of prices, sizes, USD amounts and fractions
     P              a feed's answer normalised to WAD [USD WAD per whole unit of the asset]
     cash           an account's quote balance [USD WAD, signed]
     collateral     an account's balance of a non-quote token [token native units]
     size           a perp position [base units WAD, signed: long > 0, short < 0]
     quote          a position's cost basis; upnl = size * P / WAD + quote [USD WAD, signed]
     imf / mmf      initial / maintenance margin fraction of notional [WAD fraction]
     house          this contract's own account, the counterparty of every trade; exempt from
                    margin checks; absorbs socialised losses and what the insurance fund cannot pay
     insurance fund a separate balance fed by liquidation penalties; pays keepers what a bankrupt
                    account cannot, and bad debt [USD WAD]
     max age        each market and each collateral has its own maximum price age [seconds]
     read mode      how a health computation treats a price (see _read and _term_price):
                    LOOSE (views: clamp, ignore ages), STRICT (trades, withdrawals: revert on a bad
                    or stale price), LIQUIDATION (liquidations: an unusable price counts against
                    the account), PREVIEW (the single previews: as LIQUIDATION, ages ignored)
     Every rounding favours the protocol: credits to an account round toward minus infinity,
     charges and margin requirements round up, collateral values round down.
     Vyper's signed `//` truncates toward zero; every signed division goes through _div_floor or
     _div_ceil, which the Python model (protocol_model/wad.py) mirrors.
"""

from ethereum.ercs import IERC20

# ---------------------------------------------------------------- INTERFACES

interface AggregatorV3:
    def decimals() -> uint8: view
    def latestRoundData() -> (uint80, int256, uint256, uint256, uint80): view

interface IERC20Decimals:
    def decimals() -> uint8: view

# ---------------------------------------------------------------- STRUCTS

struct Market:
    feed: address               # AggregatorV3 price feed
    price_scale: uint256        # 10**(18 - feed decimals): answer -> WAD
    imf: uint256                # WAD fraction; initial margin fraction
    mmf: uint256                # WAD fraction; maintenance margin fraction (< imf)
    liquidation_fee: uint256    # WAD fraction of closed notional (< mmf)
    taker_fee: uint256          # WAD fraction of traded notional
    oi_cap: uint256             # base WAD; cap on the house's |size| (0 = no cap)
    max_price_age: uint256      # seconds; older answers of the feed are unusable

struct CollateralConfig:
    feed: address               # AggregatorV3 price feed
    price_scale: uint256        # 10**(18 - feed decimals)
    decimals: uint256           # token decimals (<= 18)
    unit: uint256               # 10**decimals native units per whole token
    init_weight: uint256        # WAD fraction
    maint_weight: uint256       # WAD fraction (>= init_weight)
    liquidation_discount: uint256  # WAD fraction; maint_weight + discount < WAD
    deposit_cap: uint256        # native units; cap on total deposits (0 = no cap)
    index: uint256              # bit of the token in held_collaterals
    max_price_age: uint256      # seconds; older answers of the feed are unusable

# Packed copies of the configuration, for the hot paths (see STORAGE; lanes under CONSTANTS).

struct MarketWords:
    oracle: uint256             # ORACLE_* lanes: feed | price exponent | OI cap flag | max age
    fees: uint256               # FEE_* lanes: imf | mmf | liquidation_fee | taker_fee

struct CollateralWords:
    token_word: uint256         # TOKEN_* lanes: token | decimals | price exponent | init_weight
    feed_word: uint256          # CFEED_* lanes: feed | maint_weight | max age

# Unpacked views of the packed words (one unpack helper each).

struct HotParams:
    paused: bool
    market_count: uint256
    keeper_share: int256        # WAD fraction
    dust_notional: int256       # USD WAD

struct Oracle:
    feed: address
    exponent: uint256           # 18 - feed decimals
    oi_capped: bool             # oi_cap != 0
    max_age: uint256            # seconds

struct Fees:
    imf: int256
    mmf: int256
    liquidation_fee: int256
    taker_fee: int256

struct TokenLanes:
    token: address
    decimals: uint256
    exponent: uint256           # 18 - feed decimals
    init_weight: int256

struct CollateralFeed:
    feed: address
    maint_weight: int256
    max_age: uint256            # seconds

struct CollateralInfo:
    listed: bool
    index: uint256
    discount: uint256           # WAD fraction

struct Position:
    size: int256                # base units WAD, signed
    quote: int256               # USD WAD, signed

struct Health:
    equity: int256              # USD WAD
    init_health: int256         # USD WAD
    maint_health: int256        # USD WAD

struct LiquidationPlan:
    size_delta: int256          # base units WAD applied to the account (opposite sign of size)
    price: uint256              # USD WAD per unit
    quote_delta: int256         # USD WAD booked to the account's quote
    penalty: uint256            # USD WAD; liquidation_fee of the closed notional
    charged: uint256            # USD WAD the account's cash pays: min(penalty, max(equity after the close, 0))
    keeper_reward: uint256      # quote native units paid to the caller: keeper_share of the full penalty
    insurance_fund: uint256     # USD WAD; the resulting insurance fund (before any settlement)
    house_size: int256          # the house's resulting size in the market
    house_quote: int256         # the house's resulting quote
    house_cash: int256          # the house's resulting cash (before any settlement)
    size: int256                # resulting size
    quote: int256               # resulting quote (0 once the position is closed)
    cash: int256                # resulting cash (before any settlement)
    equity: int256              # resulting equity (liquidation reading)
    init_health: int256         # resulting init_health (liquidation reading)
    maint_health: int256        # resulting maint_health (liquidation reading)
    bad_debt: uint256           # USD WAD settled automatically after the close (0: none)

struct CollateralLiquidationPlan:
    repay: uint256              # quote native units paid by the caller
    seized: uint256             # collateral native units sent to the caller
    price: uint256              # USD WAD per whole token (undiscounted)
    subsidy: uint256            # USD WAD credited to the account: the discount its equity cannot bear
    cash: int256                # resulting cash (before any settlement)
    collateral: uint256         # resulting collateral balance
    insurance_fund: uint256     # resulting insurance fund (before any settlement)
    house_cash: int256          # resulting house cash (before any settlement)
    equity: int256              # resulting equity (liquidation reading)
    bad_debt: uint256           # USD WAD settled automatically afterwards (0: none)

struct LiquidationOrder:
    account: address            # the account to liquidate
    market: uint256             # a position order's market id; 0 in a collateral order
    token: address              # empty: a position order; else the collateral to seize
    amount: uint256             # max_size (base units WAD) or max_repay (quote native units)

struct OrderPreview:
    status: uint256             # EXECUTED or a SKIP_* code
    keeper_reward: uint256      # quote native units paid to the caller (position orders)
    repay: uint256              # quote native units the caller pays (collateral orders)
    seized: uint256             # collateral native units the caller receives (collateral orders)
    size_delta: int256          # base units WAD (position orders)
    bad_debt: uint256           # USD WAD settled automatically

# ---------------------------------------------------------------- EVENTS
# Every account event carries the account's resulting state for the touched fields, and every
# event that changes the insurance fund or the house carries their resulting values, so that an
# off-chain mirror can rebuild every account, the house and the fund from logs alone.

event Deposit:
    account: indexed(address)
    token: indexed(address)
    amount: uint256             # native units
    cash: int256                # resulting cash
    collateral: uint256         # resulting balance of token (0 for the quote token)

event Withdraw:
    account: indexed(address)
    token: indexed(address)
    amount: uint256
    cash: int256
    collateral: uint256

event Trade:
    account: indexed(address)
    market: indexed(uint256)
    size_delta: int256
    price: uint256
    quote_delta: int256
    fee: uint256                # USD WAD moved from the account's cash to the house's
    size: int256                # resulting size
    quote: int256               # resulting quote
    cash: int256                # resulting cash
    house_size: int256          # the house's resulting size, quote and cash
    house_quote: int256
    house_cash: int256

event Liquidation:
    account: indexed(address)
    market: indexed(uint256)
    liquidator: indexed(address)
    size_delta: int256
    price: uint256
    quote_delta: int256
    penalty: uint256            # USD WAD, the full penalty
    charged: uint256            # USD WAD paid by the account
    keeper_reward: uint256      # quote native units
    insurance_fund: uint256     # resulting fund, USD WAD
    house_size: int256          # the house's resulting size, quote and cash
    house_quote: int256
    house_cash: int256
    size: int256                # the account's resulting size, quote and cash
    quote: int256
    cash: int256

event CollateralLiquidation:
    account: indexed(address)
    token: indexed(address)
    liquidator: indexed(address)
    repay: uint256              # quote native units
    seized: uint256             # collateral native units
    price: uint256              # USD WAD, undiscounted
    subsidy: uint256            # USD WAD credited to the account by the fund / house
    cash: int256
    collateral: uint256
    insurance_fund: uint256
    house_cash: int256

event LiquidationSkipped:
    account: indexed(address)
    liquidator: indexed(address)
    index: uint256              # the order's position in the batch
    reason: uint256             # a SKIP_* code

event BadDebtSettled:
    account: indexed(address)
    deficit: uint256            # USD WAD
    covered: uint256            # USD WAD paid by the insurance fund
    socialised: uint256         # USD WAD absorbed by the house's cash
    house_cash: int256          # resulting house cash
    insurance_fund: uint256     # resulting fund

event HouseSeeded:
    amount: uint256             # native units
    cash: int256                # the house's resulting cash

event InsuranceSeeded:
    amount: uint256             # native units
    insurance_fund: uint256     # resulting fund, USD WAD

event QuoteTokenSet:
    token: indexed(address)
    quote_scale: uint256        # 10**(18 - quote decimals)

event CollateralListed:
    token: indexed(address)
    feed: indexed(address)
    index: uint256
    decimals: uint256
    price_scale: uint256        # 10**(18 - feed decimals)

event CollateralParamsSet:
    token: indexed(address)
    init_weight: uint256
    maint_weight: uint256
    liquidation_discount: uint256
    deposit_cap: uint256

event CollateralPriceAgeSet:
    token: indexed(address)
    max_price_age: uint256      # seconds

event MarketListed:
    market: indexed(uint256)
    feed: indexed(address)
    price_scale: uint256        # 10**(18 - feed decimals)

event MarketParamsSet:
    market: indexed(uint256)
    imf: uint256
    mmf: uint256
    liquidation_fee: uint256
    taker_fee: uint256
    oi_cap: uint256

event MarketPriceAgeSet:
    market: indexed(uint256)
    max_price_age: uint256      # seconds

event ParamsSet:
    keeper_share: uint256
    max_price_age: uint256      # seconds; the default age of markets and collaterals listed later
    dust_notional: uint256

event Paused:
    by: indexed(address)

event Unpaused:
    by: indexed(address)

event OwnershipTransferStarted:
    owner: indexed(address)
    pending_owner: indexed(address)

event OwnershipTransferred:
    previous: indexed(address)
    owner: indexed(address)

# ---------------------------------------------------------------- CONSTANTS

WAD: constant(uint256) = 10**18
IWAD: constant(int256) = 10**18
MAX_MARKETS: constant(uint256) = 16
MAX_COLLATERALS: constant(uint256) = 8
MAX_ORDERS: constant(uint256) = 32          # orders per liquidate_many
MAX_AMOUNT: constant(uint256) = 2**128      # native units; largest deposit/withdraw/seed amount
MAX_SIZE: constant(int256) = 2**100         # base units WAD; largest |size| (about 1.27e12 units)
MAX_PRICE: constant(uint256) = 2**100       # USD WAD; largest usable price (about 1.27e12 USD)
MAX_PRICE_AGE: constant(uint256) = 2**32 - 1  # seconds (about 136 years); largest max price age
# Whole tokens; total_collateral[token] <= MAX_TOTAL_COLLATERAL * 10**decimals ("deposit cap"). The
# largest bound for which balance * P and value * weight fit in int256 at every P <= MAX_PRICE,
# weight < WAD and decimals <= 18 (about 4.57e28 tokens, 2**95.2); see docs/protocol.md.
MAX_TOTAL_COLLATERAL: constant(uint256) = (2**255 - 1) // (MAX_PRICE * WAD)

# Read modes of _health / _term_price (see the glossary).
LOOSE: constant(uint256) = 0
STRICT: constant(uint256) = 1
LIQUIDATION: constant(uint256) = 2
PREVIEW: constant(uint256) = 3

# Status of one feed reading (_read).
PRICE_OK: constant(uint256) = 0
PRICE_BAD: constant(uint256) = 1            # answer <= 0 or above MAX_PRICE
PRICE_STALE: constant(uint256) = 2          # older than the max age (checked in STRICT and LIQUIDATION)

# Outcome of a liquidation order: EXECUTED, or why the single action would reject it for a reason
# that depends on the account's state or a feed (liquidate_many skips such an order).
EXECUTED: constant(uint256) = 0
SKIP_HEALTHY: constant(uint256) = 1         # "healthy"
SKIP_NO_POSITION: constant(uint256) = 2     # "no position"
SKIP_NO_DEBT: constant(uint256) = 3         # "no debt"
SKIP_NO_COLLATERAL: constant(uint256) = 4   # "no collateral"
SKIP_BAD_PRICE: constant(uint256) = 5       # "bad price" of the feed closed or seized
SKIP_STALE_PRICE: constant(uint256) = 6     # "stale price" of the feed closed or seized

# Lanes of the packed words: each lane is (SHIFT, MASK); only the pack / unpack helpers use them.
ADDRESS_MASK: constant(uint256) = 2**160 - 1
MASK64: constant(uint256) = 2**64 - 1
MASK32: constant(uint256) = 2**32 - 1
MASK112: constant(uint256) = 2**112 - 1
BYTE_MASK: constant(uint256) = 255
BIT_MASK: constant(uint256) = 1
# hot_params
PARAMS_PAUSED_SHIFT: constant(uint256) = 0          # BIT_MASK: 1 while paused
PARAMS_MARKET_COUNT_SHIFT: constant(uint256) = 8    # BYTE_MASK
PARAMS_KEEPER_SHARE_SHIFT: constant(uint256) = 16   # MASK64; <= WAD
PARAMS_DUST_SHIFT: constant(uint256) = 80           # MASK112; <= MAX_PRICE
# MarketWords.oracle (the feed in bits 0-159)
ORACLE_EXPONENT_SHIFT: constant(uint256) = 160      # BYTE_MASK; 18 - feed decimals
ORACLE_OI_CAP_SHIFT: constant(uint256) = 168        # BIT_MASK; 1 iff oi_cap != 0
ORACLE_AGE_SHIFT: constant(uint256) = 176           # MASK32; max price age
# MarketWords.fees, MASK64 each
FEE_IMF_SHIFT: constant(uint256) = 0
FEE_MMF_SHIFT: constant(uint256) = 64
FEE_LIQUIDATION_SHIFT: constant(uint256) = 128
FEE_TAKER_SHIFT: constant(uint256) = 192
# CollateralWords.token_word (the token in bits 0-159)
TOKEN_DECIMALS_SHIFT: constant(uint256) = 160       # BYTE_MASK
TOKEN_EXPONENT_SHIFT: constant(uint256) = 168       # BYTE_MASK; 18 - feed decimals
TOKEN_INIT_WEIGHT_SHIFT: constant(uint256) = 176    # MASK64
# CollateralWords.feed_word (the feed in bits 0-159)
CFEED_MAINT_WEIGHT_SHIFT: constant(uint256) = 160   # MASK64
CFEED_AGE_SHIFT: constant(uint256) = 224            # MASK32; max price age
# collateral_info[token]
INFO_LISTED_SHIFT: constant(uint256) = 0            # BIT_MASK
INFO_INDEX_SHIFT: constant(uint256) = 8             # BYTE_MASK
INFO_DISCOUNT_SHIFT: constant(uint256) = 16         # MASK64

# ---------------------------------------------------------------- STORAGE

owner: public(address)                      # admin
pending_owner: public(address)              # set by transfer_ownership, cleared by accept_ownership
paused: public(bool)                        # stops trades and withdrawals

quote_token: public(address)                # the 1-USD stablecoin
quote_scale: public(uint256)                # 10**(18 - quote decimals): native -> USD WAD

keeper_share: public(uint256)               # WAD fraction of a liquidation penalty paid to the caller
max_price_age: public(uint256)              # seconds; the max age given to markets and collaterals when listed
dust_notional: public(uint256)              # USD WAD; smaller leftovers are closed whole

market: public(HashMap[uint256, Market])    # market id -> config
market_count: public(uint256)               # ids are 0 .. market_count - 1
collateral_config: public(HashMap[address, CollateralConfig])  # token -> config (feed 0 = unlisted)
collateral_tokens: public(DynArray[address, MAX_COLLATERALS])  # index -> token
total_collateral: public(HashMap[address, uint256])            # token -> native units deposited

cash: public(HashMap[address, int256])                          # USD WAD
collateral: public(HashMap[address, HashMap[address, uint256]]) # account -> token -> native units
position: public(HashMap[address, HashMap[uint256, Position]])  # account -> market -> position
active_markets: public(HashMap[address, uint256])               # bit m set iff size in m != 0
held_collaterals: public(HashMap[address, uint256])             # bit i set iff balance of token i > 0

insurance_fund: public(uint256)             # USD WAD

# Packed hot copies of the configuration above. Trades, withdrawals and liquidations read these
# (one cold slot instead of several, EIP-2929); the variables above stay the canonical state and
# keep their getters. Each word has its lanes under CONSTANTS and one unpack helper.
# dev: every admin function that writes a mirrored variable rewrites its copy in the same call, so
#      each copy equals the variables it is made of, lane by lane (tests/fuzz/test_differential.py).
hot_params: public(uint256)                                     # PARAMS_* lanes
market_words: public(HashMap[uint256, MarketWords])             # market id -> ORACLE_* / FEE_* lanes
collateral_words: public(HashMap[uint256, CollateralWords])     # collateral index -> TOKEN_* / CFEED_* lanes
collateral_info: public(HashMap[address, uint256])              # token -> INFO_* lanes; 0 iff unlisted

# Copies of the two variables the constructor alone writes, read from code by the hot paths.
QUOTE_TOKEN: immutable(address)             # = quote_token
QUOTE_SCALE: immutable(uint256)             # = quote_scale: native -> USD WAD

# ---------------------------------------------------------------- CONSTRUCTOR

@deploy
def __init__(_quote_token: address, _keeper_share: uint256, _max_price_age: uint256, _dust_notional: uint256):
    assert _quote_token != empty(address), "zero address"
    quote_decimals: uint256 = convert(staticcall IERC20Decimals(_quote_token).decimals(), uint256)
    assert quote_decimals <= 18, "bad decimals"
    self.owner = msg.sender
    self.quote_token = _quote_token
    self.quote_scale = 10 ** (18 - quote_decimals)
    QUOTE_TOKEN = _quote_token
    QUOTE_SCALE = 10 ** (18 - quote_decimals)
    log OwnershipTransferred(previous=empty(address), owner=msg.sender)
    log QuoteTokenSet(token=_quote_token, quote_scale=10 ** (18 - quote_decimals))
    self._set_params(_keeper_share, _max_price_age, _dust_notional)

# ---------------------------------------------------------------- MATH
# Signed helpers with an explicit rounding direction. b > 0 everywhere they are used.

@pure
@internal
def _div_floor(a: int256, b: int256) -> int256:
    q: int256 = a // b
    if a < 0 and q * b != a:
        q -= 1
    return q

@pure
@internal
def _div_ceil(a: int256, b: int256) -> int256:
    q: int256 = a // b
    if a > 0 and q * b != a:
        q += 1
    return q

@pure
@internal
def _mul_down(a: int256, b: int256) -> int256:
    return self._div_floor(a * b, IWAD)

@pure
@internal
def _mul_up(a: int256, b: int256) -> int256:
    return self._div_ceil(a * b, IWAD)

@pure
@internal
def _div_up(a: int256, b: int256) -> int256:
    return self._div_ceil(a * IWAD, b)

# ---------------------------------------------------------------- PACKED WORDS

@pure
@internal
def _with_lane(word: uint256, offset: uint256, mask: uint256, lane_value: uint256) -> uint256:
    # dev: lane_value <= mask (the callers' bounds), so no other lane changes.
    return (word & ~(mask << offset)) | (lane_value << offset)

@pure
@internal
def _unpack_params(word: uint256) -> HotParams:
    return HotParams(
        paused=(word >> PARAMS_PAUSED_SHIFT) & BIT_MASK == 1,
        market_count=(word >> PARAMS_MARKET_COUNT_SHIFT) & BYTE_MASK,
        keeper_share=convert((word >> PARAMS_KEEPER_SHARE_SHIFT) & MASK64, int256),
        dust_notional=convert((word >> PARAMS_DUST_SHIFT) & MASK112, int256),
    )

@pure
@internal
def _unpack_oracle(word: uint256) -> Oracle:
    return Oracle(
        feed=convert(word & ADDRESS_MASK, address),
        exponent=(word >> ORACLE_EXPONENT_SHIFT) & BYTE_MASK,
        oi_capped=(word >> ORACLE_OI_CAP_SHIFT) & BIT_MASK == 1,
        max_age=(word >> ORACLE_AGE_SHIFT) & MASK32,
    )

@pure
@internal
def _unpack_fees(word: uint256) -> Fees:
    return Fees(
        imf=convert((word >> FEE_IMF_SHIFT) & MASK64, int256),
        mmf=convert((word >> FEE_MMF_SHIFT) & MASK64, int256),
        liquidation_fee=convert((word >> FEE_LIQUIDATION_SHIFT) & MASK64, int256),
        taker_fee=convert((word >> FEE_TAKER_SHIFT) & MASK64, int256),
    )

@pure
@internal
def _unpack_token_word(word: uint256) -> TokenLanes:
    return TokenLanes(
        token=convert(word & ADDRESS_MASK, address),
        decimals=(word >> TOKEN_DECIMALS_SHIFT) & BYTE_MASK,
        exponent=(word >> TOKEN_EXPONENT_SHIFT) & BYTE_MASK,
        init_weight=convert((word >> TOKEN_INIT_WEIGHT_SHIFT) & MASK64, int256),
    )

@pure
@internal
def _unpack_feed_word(word: uint256) -> CollateralFeed:
    return CollateralFeed(
        feed=convert(word & ADDRESS_MASK, address),
        maint_weight=convert((word >> CFEED_MAINT_WEIGHT_SHIFT) & MASK64, int256),
        max_age=(word >> CFEED_AGE_SHIFT) & MASK32,
    )

@pure
@internal
def _unpack_info(word: uint256) -> CollateralInfo:
    return CollateralInfo(
        listed=(word >> INFO_LISTED_SHIFT) & BIT_MASK == 1,
        index=(word >> INFO_INDEX_SHIFT) & BYTE_MASK,
        discount=(word >> INFO_DISCOUNT_SHIFT) & MASK64,
    )

# ---------------------------------------------------------------- PRICES

@view
@internal
def _read(feed: address, exponent: uint256, max_age: uint256, mode: uint256) -> (int256, uint256):
    """
    @dev The feed's answer in WAD, clamped to [0, MAX_PRICE], and its status: PRICE_BAD outside
         (0, MAX_PRICE], else PRICE_STALE if the mode checks ages (STRICT, LIQUIDATION) and the
         answer is older than max_age, else PRICE_OK. Never reverts.
    """
    round_id: uint80 = 0
    answer: int256 = 0
    started_at: uint256 = 0
    updated_at: uint256 = 0
    answered_in: uint80 = 0
    round_id, answer, started_at, updated_at, answered_in = staticcall AggregatorV3(feed).latestRoundData()
    scale: uint256 = 10 ** exponent
    if answer <= 0:
        return 0, PRICE_BAD
    if convert(answer, uint256) > MAX_PRICE // scale:
        return convert(MAX_PRICE, int256), PRICE_BAD
    p: int256 = answer * convert(scale, int256)
    if (mode == STRICT or mode == LIQUIDATION) and updated_at < block.timestamp:
        if block.timestamp - updated_at > max_age:
            return p, PRICE_STALE
    return p, PRICE_OK

@pure
@internal
def _require_usable(status: uint256):
    assert status != PRICE_BAD, "bad price"
    assert status != PRICE_STALE, "stale price"

@view
@internal
def _strict_price(oracle: Oracle) -> int256:
    p: int256 = 0
    status: uint256 = 0
    p, status = self._read(oracle.feed, oracle.exponent, oracle.max_age, STRICT)
    self._require_usable(status)
    return p

@view
@internal
def _term_price(feed: address, exponent: uint256, max_age: uint256, mode: uint256) -> (int256, bool):
    """
    @dev A health term's price and whether it is usable: LOOSE reads any answer (clamped) as
         usable; STRICT reverts on an unusable one; LIQUIDATION and PREVIEW report it, and the
         caller counts the term against the account.
    """
    p: int256 = 0
    status: uint256 = 0
    p, status = self._read(feed, exponent, max_age, mode)
    if mode == STRICT:
        self._require_usable(status)
    return p, mode == LOOSE or status == PRICE_OK

# ---------------------------------------------------------------- HEALTH

@view
@internal
def _health(account: address, mode: uint256, known_market: uint256, known_price: int256, known_usable: bool) -> Health:
    """
    @dev One pass over the account's active markets and held collaterals (bitmasks), so the cost
         grows with what the account holds, not with what is listed.
         known_price (usable or not: known_usable) is the price of known_market (MAX_MARKETS for
         none) read earlier in the same call in the same mode; it is used instead of reading
         that feed again.
         A term whose price is not usable (LIQUIDATION, PREVIEW) counts against the account: a
         collateral is worth 0; a position counts its loss at the last answer and none of its
         profit, with its requirements at that answer.
    """
    c: int256 = self.cash[account]
    h: Health = Health(equity=c, init_health=c, maint_health=c)

    mask: uint256 = self.active_markets[account]
    for m: uint256 in range(MAX_MARKETS):
        if mask == 0:
            break
        if mask & 1 == 1:
            pos: Position = self.position[account][m]
            words: MarketWords = self.market_words[m]
            p: int256 = known_price
            usable: bool = known_usable
            if m != known_market:
                o: Oracle = self._unpack_oracle(words.oracle)
                p, usable = self._term_price(o.feed, o.exponent, o.max_age, mode)
            fees: Fees = self._unpack_fees(words.fees)
            upnl: int256 = self._mul_down(pos.size, p) + pos.quote
            if not usable:
                upnl = min(upnl, 0)
            notional: int256 = self._mul_up(abs(pos.size), p)
            h.equity += upnl
            h.init_health += upnl - self._mul_up(notional, fees.imf)
            h.maint_health += upnl - self._mul_up(notional, fees.mmf)
        mask >>= 1

    mask = self.held_collaterals[account]
    for i: uint256 in range(MAX_COLLATERALS):
        if mask == 0:
            break
        if mask & 1 == 1:
            words: CollateralWords = self.collateral_words[i]
            t: TokenLanes = self._unpack_token_word(words.token_word)
            f: CollateralFeed = self._unpack_feed_word(words.feed_word)
            p: int256 = 0
            usable: bool = False
            p, usable = self._term_price(f.feed, t.exponent, f.max_age, mode)
            if usable:
                value: int256 = convert(self.collateral[account][t.token], int256) * p // convert(10 ** t.decimals, int256)
                h.equity += value
                h.init_health += self._mul_down(value, t.init_weight)
                h.maint_health += self._mul_down(value, f.maint_weight)
        mask >>= 1
    return h

# ---------------------------------------------------------------- VIEWS

@view
@external
def health(account: address) -> (int256, int256, int256):
    """
    @notice (equity, init_health, maint_health) in USD WAD at the latest prices, stale or not.
    """
    h: Health = self._health(account, LOOSE, MAX_MARKETS, 0, True)
    return (h.equity, h.init_health, h.maint_health)

@view
@external
def liquidation_health(account: address) -> (int256, int256, int256):
    """
    @notice (equity, init_health, maint_health) as a liquidation reads them now: every term whose
            price is unusable (bad, or older than its feed's max age) counts against the account.
            The account is liquidatable iff maint_health < 0 here.
    """
    h: Health = self._health(account, LIQUIDATION, MAX_MARKETS, 0, True)
    return (h.equity, h.init_health, h.maint_health)

@view
@external
def house() -> address:
    return self

@view
@external
def collateral_count() -> uint256:
    return len(self.collateral_tokens)

@view
@external
def preview_liquidate(account: address, market_id: uint256, max_size: uint256) -> LiquidationPlan:
    """
    @notice What liquidate(account, market_id, max_size) would do at the latest prices; reverts
            with liquidate's reasons (a bad price too) except that ages are not checked.
    """
    plan: LiquidationPlan = empty(LiquidationPlan)
    code: uint256 = 0
    plan, code = self._liquidation_plan(account, market_id, max_size, PREVIEW)
    self._fail(code)
    return plan

@view
@external
def preview_liquidate_collateral(account: address, token: address, max_repay: uint256) -> CollateralLiquidationPlan:
    """
    @notice What liquidate_collateral(account, token, max_repay) would do at the latest prices;
            reverts with liquidate_collateral's reasons (a bad price too) except that ages are
            not checked.
    """
    plan: CollateralLiquidationPlan = empty(CollateralLiquidationPlan)
    code: uint256 = 0
    plan, code = self._collateral_plan(account, token, max_repay, PREVIEW)
    self._fail(code)
    return plan

@view
@external
def preview_liquidate_many(orders: DynArray[LiquidationOrder, MAX_ORDERS]) -> DynArray[OrderPreview, MAX_ORDERS]:
    """
    @notice What each order of liquidate_many(orders) would do now (ages checked, as the action
            does), every order read against the current state: an order on an account that an
            earlier order of the same batch changes may come out differently on chain.
            Reverts where liquidate_many would for a malformed order.
    """
    out: DynArray[OrderPreview, MAX_ORDERS] = []
    for o: LiquidationOrder in orders:
        v: OrderPreview = empty(OrderPreview)
        if o.token == empty(address):
            plan: LiquidationPlan = empty(LiquidationPlan)
            plan, v.status = self._liquidation_plan(o.account, o.market, o.amount, LIQUIDATION)
            if v.status == EXECUTED:
                v.keeper_reward = plan.keeper_reward
                v.size_delta = plan.size_delta
                v.bad_debt = plan.bad_debt
        else:
            assert o.market == 0, "bad order"
            cplan: CollateralLiquidationPlan = empty(CollateralLiquidationPlan)
            cplan, v.status = self._collateral_plan(o.account, o.token, o.amount, LIQUIDATION)
            if v.status == EXECUTED:
                v.repay = cplan.repay
                v.seized = cplan.seized
                v.bad_debt = cplan.bad_debt
        out.append(v)
    return out

# ---------------------------------------------------------------- ACCOUNT ACTIONS

@external
def deposit(token: address, amount: uint256):
    """
    @notice Pull `amount` native units of `token` from the caller into its account.
    """
    assert amount > 0, "zero amount"
    assert amount <= MAX_AMOUNT, "amount too large"
    balance: uint256 = 0
    c: int256 = self.cash[msg.sender]
    if token == QUOTE_TOKEN:
        c += convert(amount * QUOTE_SCALE, int256)
        self.cash[msg.sender] = c
    else:
        info: CollateralInfo = self._unpack_info(self.collateral_info[token])
        assert info.listed, "not listed"
        decimals: uint256 = self._unpack_token_word(self.collateral_words[info.index].token_word).decimals
        total: uint256 = self.total_collateral[token] + amount
        cap: uint256 = self.collateral_config[token].deposit_cap
        # dev: the hard bound keeps every balance's health terms inside int256 (MAX_TOTAL_COLLATERAL).
        assert total <= MAX_TOTAL_COLLATERAL * 10 ** decimals and (cap == 0 or total <= cap), "deposit cap"
        self.total_collateral[token] = total
        balance = self.collateral[msg.sender][token] + amount
        self.collateral[msg.sender][token] = balance
        self.held_collaterals[msg.sender] |= 1 << info.index
    assert extcall IERC20(token).transferFrom(msg.sender, self, amount, default_return_value=True), "transfer failed"
    log Deposit(account=msg.sender, token=token, amount=amount, cash=c, collateral=balance)

@external
def withdraw(token: address, amount: uint256):
    """
    @notice Send `amount` native units of `token` from the caller's account to the caller.
            Quote withdrawals may not take cash below zero; afterwards init_health >= 0.
    """
    assert not self._unpack_params(self.hot_params).paused, "paused"
    assert amount > 0, "zero amount"
    assert amount <= MAX_AMOUNT, "amount too large"
    balance: uint256 = 0
    c: int256 = self.cash[msg.sender]
    if token == QUOTE_TOKEN:
        c -= convert(amount * QUOTE_SCALE, int256)
        assert c >= 0, "insufficient cash"
        self.cash[msg.sender] = c
    else:
        info: CollateralInfo = self._unpack_info(self.collateral_info[token])
        assert info.listed, "not listed"
        balance = self.collateral[msg.sender][token]
        assert balance >= amount, "insufficient collateral"
        balance -= amount
        self.collateral[msg.sender][token] = balance
        self.total_collateral[token] -= amount
        if balance == 0:
            self.held_collaterals[msg.sender] &= ~(1 << info.index)
    assert self._health(msg.sender, STRICT, MAX_MARKETS, 0, True).init_health >= 0, "insufficient margin"
    assert extcall IERC20(token).transfer(msg.sender, amount, default_return_value=True), "transfer failed"
    log Withdraw(account=msg.sender, token=token, amount=amount, cash=c, collateral=balance)

@external
def trade(market_id: uint256, size_delta: int256, limit_price: uint256):
    """
    @notice Buy (size_delta > 0) or sell at the oracle price against the house. A buy reverts
            above limit_price, a sell below it. A risk-increasing trade needs init_health >= 0.
    """
    params: HotParams = self._unpack_params(self.hot_params)
    assert not params.paused, "paused"
    assert market_id < params.market_count, "not listed"
    assert size_delta != 0, "zero amount"
    assert size_delta <= MAX_SIZE and size_delta >= -MAX_SIZE, "size too large"
    words: MarketWords = self.market_words[market_id]
    oracle: Oracle = self._unpack_oracle(words.oracle)
    p: int256 = self._strict_price(oracle)
    if size_delta > 0:
        assert convert(p, uint256) <= limit_price, "price limit"
    else:
        assert convert(p, uint256) >= limit_price, "price limit"

    # A buy pays mul_up, a sell receives mul_down: both are mul_down(-size_delta, P).
    quote_delta: int256 = self._mul_down(-size_delta, p)
    fee: int256 = self._mul_up(self._mul_up(abs(size_delta), p), self._unpack_fees(words.fees).taker_fee)

    old: Position = self.position[msg.sender][market_id]
    new_size: int256 = old.size + size_delta
    assert new_size <= MAX_SIZE and new_size >= -MAX_SIZE, "size too large"
    pos: Position = self._write_position(
        msg.sender, market_id, old.size, new_size, old.quote + quote_delta, self.cash[msg.sender] - fee
    )

    # The house books the exact opposite and receives the fee.
    house_old: Position = self.position[self][market_id]
    house_size: int256 = house_old.size - size_delta
    # dev: oi_capped is set iff oi_cap != 0, so an uncapped market skips the oi_cap slot.
    if oracle.oi_capped and abs(house_size) > abs(house_old.size):
        assert convert(abs(house_size), uint256) <= self.market[market_id].oi_cap, "oi cap"
    house_pos: Position = self._write_position(
        self, market_id, house_old.size, house_size, house_old.quote - quote_delta, self.cash[self] + fee
    )

    increases_risk: bool = abs(new_size) > abs(old.size) or (old.size > 0 and new_size < 0) or (old.size < 0 and new_size > 0)
    if increases_risk:
        # dev: no external call since p was read, so the feed would answer the same again.
        assert self._health(msg.sender, STRICT, market_id, p, True).init_health >= 0, "insufficient margin"

    log Trade(
        account=msg.sender, market=market_id, size_delta=size_delta, price=convert(p, uint256),
        quote_delta=quote_delta, fee=convert(fee, uint256), size=pos.size, quote=pos.quote,
        cash=self.cash[msg.sender], house_size=house_pos.size, house_quote=house_pos.quote,
        house_cash=self.cash[self],
    )

# ---------------------------------------------------------------- LIQUIDATIONS

@pure
@internal
def _fail(code: uint256):
    """
    @dev Revert with the reason of a SKIP_* code; nothing for EXECUTED. The single actions use it,
         liquidate_many skips instead.
    """
    if code == SKIP_HEALTHY:
        raise "healthy"
    if code == SKIP_NO_POSITION:
        raise "no position"
    if code == SKIP_NO_DEBT:
        raise "no debt"
    if code == SKIP_NO_COLLATERAL:
        raise "no collateral"
    if code == SKIP_BAD_PRICE:
        raise "bad price"
    if code == SKIP_STALE_PRICE:
        raise "stale price"

@pure
@internal
def _price_code(status: uint256) -> uint256:
    if status == PRICE_BAD:
        return SKIP_BAD_PRICE
    if status == PRICE_STALE:
        return SKIP_STALE_PRICE
    return EXECUTED

@pure
@internal
def _cover(owed: uint256, paid: uint256, fund: uint256, house_cash: int256) -> (uint256, int256):
    """
    @dev The insurance fund and house cash after the protocol receives `paid` and owes `owed`
         (USD WAD): a surplus feeds the fund; a shortfall is paid by the fund, then by the house.
    """
    if paid >= owed:
        return fund + (paid - owed), house_cash
    short: uint256 = owed - paid
    from_fund: uint256 = min(short, fund)
    return fund - from_fund, house_cash - convert(short - from_fund, int256)

@view
@internal
def _liquidation_plan(account: address, market_id: uint256, max_size: uint256, mode: uint256) -> (LiquidationPlan, uint256):
    """
    @dev The plan of liquidate (mode LIQUIDATION) or its preview (PREVIEW) and EXECUTED, or an
         empty plan and the SKIP_* code of the state-dependent reason the action rejects it for.
         Malformed calls revert.
    """
    plan: LiquidationPlan = empty(LiquidationPlan)
    params: HotParams = self._unpack_params(self.hot_params)
    assert market_id < params.market_count, "not listed"
    assert max_size > 0, "zero amount"
    assert account != self, "house"
    words: MarketWords = self.market_words[market_id]
    oracle: Oracle = self._unpack_oracle(words.oracle)
    p: int256 = 0
    status: uint256 = 0
    p, status = self._read(oracle.feed, oracle.exponent, oracle.max_age, mode)
    h: Health = self._health(account, mode, market_id, p, status == PRICE_OK)
    if h.maint_health >= 0:
        return plan, SKIP_HEALTHY
    old: Position = self.position[account][market_id]
    if old.size == 0:
        return plan, SKIP_NO_POSITION
    if status != PRICE_OK:
        return plan, self._price_code(status)
    fees: Fees = self._unpack_fees(words.fees)

    # Close what restores init_health to zero; a dust leftover is closed whole.
    s: int256 = abs(old.size)
    need: int256 = self._div_up(self._div_up(-h.init_health, fees.imf - fees.liquidation_fee), p)
    q: int256 = min(s, need)
    if self._mul_up(s - q, p) < params.dust_notional:
        q = s
    if max_size < convert(q, uint256):
        q = convert(max_size, int256)

    plan.price = convert(p, uint256)
    plan.size_delta = -q if old.size > 0 else q
    plan.quote_delta = self._mul_down(-plan.size_delta, p)
    plan.size = old.size + plan.size_delta
    plan.quote = old.quote + plan.quote_delta

    # Only this market's terms change; the rest of the account is as _health saw it.
    old_upnl: int256 = self._mul_down(old.size, p) + old.quote
    new_upnl: int256 = self._mul_down(plan.size, p) + plan.quote
    old_notional: int256 = self._mul_up(s, p)
    new_notional: int256 = self._mul_up(abs(plan.size), p)
    plan.equity = h.equity - old_upnl + new_upnl

    # The caller earns keeper_share of the full penalty; the account pays what its equity allows.
    penalty: int256 = self._mul_up(self._mul_up(q, p), fees.liquidation_fee)
    charged: int256 = min(penalty, max(plan.equity, 0))
    plan.penalty = convert(penalty, uint256)
    plan.charged = convert(charged, uint256)
    qs: uint256 = QUOTE_SCALE
    plan.keeper_reward = convert(self._mul_down(penalty, params.keeper_share), uint256) // qs
    plan.cash = self.cash[account] - charged
    if plan.size == 0:
        plan.cash += plan.quote
        plan.quote = 0
    plan.equity -= charged
    plan.init_health = h.init_health - old_upnl + new_upnl - charged \
        + self._mul_up(old_notional, fees.imf) - self._mul_up(new_notional, fees.imf)
    plan.maint_health = h.maint_health - old_upnl + new_upnl - charged \
        + self._mul_up(old_notional, fees.mmf) - self._mul_up(new_notional, fees.mmf)

    # The house takes the other side; the fund (then the house) pays what the account did not.
    house_old: Position = self.position[self][market_id]
    plan.house_size = house_old.size - plan.size_delta
    plan.house_quote = house_old.quote - plan.quote_delta
    house_cash: int256 = self.cash[self]
    if plan.house_size == 0:
        house_cash += plan.house_quote
        plan.house_quote = 0
    plan.insurance_fund, plan.house_cash = self._cover(plan.keeper_reward * qs, plan.charged, self.insurance_fund, house_cash)

    # Automatic settlement: nothing left to liquidate and the cash negative.
    if plan.size == 0 and plan.cash < 0 and self.held_collaterals[account] == 0:
        if self.active_markets[account] & ~(1 << market_id) == 0:
            plan.bad_debt = convert(-plan.cash, uint256)
    return plan, EXECUTED

@internal
def _execute_liquidation(account: address, market_id: uint256, plan: LiquidationPlan):
    """
    @dev Write a liquidation plan, log it and settle the bad debt it leaves; no token transfer.
    """
    self._write_position(account, market_id, plan.size - plan.size_delta, plan.size, plan.quote, plan.cash)
    self._write_position(self, market_id, plan.house_size + plan.size_delta, plan.house_size, plan.house_quote, plan.house_cash)
    self.insurance_fund = plan.insurance_fund
    log Liquidation(
        account=account, market=market_id, liquidator=msg.sender, size_delta=plan.size_delta,
        price=plan.price, quote_delta=plan.quote_delta, penalty=plan.penalty, charged=plan.charged,
        keeper_reward=plan.keeper_reward, insurance_fund=plan.insurance_fund, house_size=plan.house_size,
        house_quote=plan.house_quote, house_cash=plan.house_cash, size=plan.size, quote=plan.quote, cash=plan.cash,
    )
    if plan.bad_debt > 0:
        self._settle(account, plan.bad_debt)

@external
def liquidate(account: address, market_id: uint256, max_size: uint256):
    """
    @notice Close up to max_size (base units WAD) of a liquidatable account's position in
            market_id against the house; the caller receives keeper_share of the penalty, paid by
            the account as far as its equity allows, then by the insurance fund, then the house.
    """
    plan: LiquidationPlan = empty(LiquidationPlan)
    code: uint256 = 0
    plan, code = self._liquidation_plan(account, market_id, max_size, LIQUIDATION)
    self._fail(code)
    self._execute_liquidation(account, market_id, plan)
    if plan.keeper_reward > 0:
        assert extcall IERC20(QUOTE_TOKEN).transfer(msg.sender, plan.keeper_reward, default_return_value=True), "transfer failed"

@view
@internal
def _collateral_plan(account: address, token: address, max_repay: uint256, mode: uint256) -> (CollateralLiquidationPlan, uint256):
    """
    @dev As _liquidation_plan, for liquidate_collateral.
    """
    plan: CollateralLiquidationPlan = empty(CollateralLiquidationPlan)
    info: CollateralInfo = self._unpack_info(self.collateral_info[token])
    assert info.listed, "not listed"
    assert max_repay > 0, "zero amount"
    assert account != self, "house"
    h: Health = self._health(account, mode, MAX_MARKETS, 0, True)
    if h.maint_health >= 0:
        return plan, SKIP_HEALTHY
    c: int256 = self.cash[account]
    if c >= 0:
        return plan, SKIP_NO_DEBT
    balance: uint256 = self.collateral[account][token]
    if balance == 0:
        return plan, SKIP_NO_COLLATERAL

    words: CollateralWords = self.collateral_words[info.index]
    t: TokenLanes = self._unpack_token_word(words.token_word)
    f: CollateralFeed = self._unpack_feed_word(words.feed_word)
    p: int256 = 0
    status: uint256 = 0
    p, status = self._read(f.feed, t.exponent, f.max_age, mode)
    if status != PRICE_OK:
        return plan, self._price_code(status)
    # The caller's price: P * (1 - discount), rounded up so the account gives up no extra wei.
    discounted: uint256 = convert(self._mul_up(p, convert(WAD - info.discount, int256)), uint256)
    unit: uint256 = 10 ** t.decimals
    qs: uint256 = QUOTE_SCALE

    # Repay in native quote units: the whole debt rounded up, at most max_repay, at most what the
    # balance is worth at the discounted price rounded down (`cap`). A repay of the whole cap
    # takes the whole balance, so no unliquidatable dust (worth under one quote unit) is left
    # behind to block settlement.
    debt: uint256 = (convert(-c, uint256) + qs - 1) // qs
    cap: uint256 = balance * discounted // unit // qs
    repay: uint256 = min(min(debt, max_repay), cap)
    plan.repay = repay
    if repay == cap:
        plan.seized = balance
    else:
        # dev: repay < cap, so the seized amount is below the balance
        plan.seized = repay * qs * unit // discounted
    plan.price = convert(p, uint256)
    plan.collateral = balance - plan.seized

    # The account bears the discount only as far as its equity allows: equity never falls below
    # min(equity before, 0); the fund (then the house) credits the rest to its cash.
    lost: int256 = convert(balance * convert(p, uint256) // unit - plan.collateral * convert(p, uint256) // unit, int256)
    plan.equity = h.equity + convert(repay * qs, int256) - lost
    lowest: int256 = min(h.equity, 0)
    if plan.equity < lowest:
        plan.subsidy = convert(lowest - plan.equity, uint256)
        plan.equity = lowest
    plan.cash = c + convert(repay * qs + plan.subsidy, int256)
    plan.insurance_fund, plan.house_cash = self._cover(plan.subsidy, 0, self.insurance_fund, self.cash[self])

    # Automatic settlement: nothing left to liquidate and the cash negative.
    if plan.collateral == 0 and plan.cash < 0 and self.active_markets[account] == 0:
        if self.held_collaterals[account] & ~(1 << info.index) == 0:
            plan.bad_debt = convert(-plan.cash, uint256)
    return plan, EXECUTED

@internal
def _execute_collateral(account: address, token: address, plan: CollateralLiquidationPlan):
    """
    @dev Write a collateral liquidation plan, send the seized collateral, log, settle; the quote
         repayment is pulled by the caller of this function.
    """
    self.cash[account] = plan.cash
    self.collateral[account][token] = plan.collateral
    self.total_collateral[token] -= plan.seized
    if plan.collateral == 0:
        self.held_collaterals[account] &= ~(1 << self._unpack_info(self.collateral_info[token]).index)
    self.insurance_fund = plan.insurance_fund
    self.cash[self] = plan.house_cash
    if plan.seized > 0:
        assert extcall IERC20(token).transfer(msg.sender, plan.seized, default_return_value=True), "transfer failed"
    log CollateralLiquidation(
        account=account, token=token, liquidator=msg.sender, repay=plan.repay, seized=plan.seized,
        price=plan.price, subsidy=plan.subsidy, cash=plan.cash, collateral=plan.collateral,
        insurance_fund=plan.insurance_fund, house_cash=plan.house_cash,
    )
    if plan.bad_debt > 0:
        self._settle(account, plan.bad_debt)

@external
def liquidate_collateral(account: address, token: address, max_repay: uint256):
    """
    @notice Repay up to max_repay quote native units of a liquidatable account's negative cash and
            receive its collateral `token` at the feed price less the liquidation discount.
    """
    plan: CollateralLiquidationPlan = empty(CollateralLiquidationPlan)
    code: uint256 = 0
    plan, code = self._collateral_plan(account, token, max_repay, LIQUIDATION)
    self._fail(code)
    if plan.repay > 0:
        assert extcall IERC20(QUOTE_TOKEN).transferFrom(msg.sender, self, plan.repay, default_return_value=True), "transfer failed"
    self._execute_collateral(account, token, plan)

@external
def liquidate_many(orders: DynArray[LiquidationOrder, MAX_ORDERS]) -> uint256:
    """
    @notice Execute up to 32 liquidation orders in order, each as liquidate (empty token) or
            liquidate_collateral (a token) would. An order the single action would reject for a
            reason that depends on the account's state or on the price of the feed it closes or
            seizes is skipped (LiquidationSkipped) instead; anything else reverts the whole call.
            The caller's quote for collateral orders is pulled in one transfer and its rewards
            paid in one. Returns how many orders executed.
    """
    executed: uint256 = 0
    rewards: uint256 = 0
    repays: uint256 = 0
    index: uint256 = 0
    for o: LiquidationOrder in orders:
        code: uint256 = 0
        if o.token == empty(address):
            plan: LiquidationPlan = empty(LiquidationPlan)
            plan, code = self._liquidation_plan(o.account, o.market, o.amount, LIQUIDATION)
            if code == EXECUTED:
                self._execute_liquidation(o.account, o.market, plan)
                rewards += plan.keeper_reward
        else:
            assert o.market == 0, "bad order"
            cplan: CollateralLiquidationPlan = empty(CollateralLiquidationPlan)
            cplan, code = self._collateral_plan(o.account, o.token, o.amount, LIQUIDATION)
            if code == EXECUTED:
                self._execute_collateral(o.account, o.token, cplan)
                repays += cplan.repay
        if code == EXECUTED:
            executed += 1
        else:
            log LiquidationSkipped(account=o.account, liquidator=msg.sender, index=index, reason=code)
        index += 1
    if repays > 0:
        assert extcall IERC20(QUOTE_TOKEN).transferFrom(msg.sender, self, repays, default_return_value=True), "transfer failed"
    if rewards > 0:
        assert extcall IERC20(QUOTE_TOKEN).transfer(msg.sender, rewards, default_return_value=True), "transfer failed"
    return executed

@internal
def _settle(account: address, deficit: uint256):
    """
    @dev Zero the account's negative cash (-deficit): the insurance fund covers first, the house's
         cash absorbs the rest.
    """
    fund: uint256 = self.insurance_fund
    covered: uint256 = min(deficit, fund)
    socialised: uint256 = deficit - covered
    fund -= covered
    house_cash: int256 = self.cash[self] - convert(socialised, int256)
    self.insurance_fund = fund
    self.cash[self] = house_cash
    self.cash[account] = 0
    log BadDebtSettled(
        account=account, deficit=deficit, covered=covered, socialised=socialised,
        house_cash=house_cash, insurance_fund=fund,
    )

@external
def settle_bad_debt(account: address):
    """
    @notice Zero the negative cash of an account left with nothing: the insurance fund pays
            first, the house's cash absorbs the rest (socialised loss).
    """
    assert account != self, "house"
    assert self.active_markets[account] == 0, "open positions"
    assert self.held_collaterals[account] == 0, "has collateral"
    c: int256 = self.cash[account]
    assert c < 0, "no bad debt"
    self._settle(account, convert(-c, uint256))

# ---------------------------------------------------------------- INTERNAL STATE

@internal
def _write_position(account: address, market_id: uint256, old_size: int256, size: int256, quote: int256, c: int256) -> Position:
    """
    @dev Store a position and the account's cash; a closed position's quote moves into cash and
         the market's bit in active_markets follows the size.
    """
    pos: Position = Position(size=size, quote=quote)
    if size == 0:
        c += quote
        pos.quote = 0
        if old_size != 0:
            self.active_markets[account] &= ~(1 << market_id)
    elif old_size == 0:
        self.active_markets[account] |= 1 << market_id
    self.position[account][market_id] = pos
    self.cash[account] = c
    return pos

# ---------------------------------------------------------------- ADMIN

@internal
def _only_owner():
    assert msg.sender == self.owner, "not owner"

@view
@internal
def _feed_exponent(feed: address) -> uint256:
    """
    @dev 18 - the feed's decimals: its price_scale is 10 ** this.
    """
    assert feed != empty(address), "zero address"
    d: uint256 = convert(staticcall AggregatorV3(feed).decimals(), uint256)
    assert d <= 18, "bad decimals"
    return 18 - d

@external
def list_collateral(token: address, feed: address, init_weight: uint256, maint_weight: uint256, liquidation_discount: uint256, deposit_cap: uint256):
    """
    @notice List a collateral; its max price age starts at max_price_age (set_collateral_price_age).
    """
    self._only_owner()
    assert token != empty(address), "zero address"
    assert token != QUOTE_TOKEN, "quote token"
    assert self.collateral_config[token].feed == empty(address), "already listed"
    assert len(self.collateral_tokens) < MAX_COLLATERALS, "too many collaterals"
    d: uint256 = convert(staticcall IERC20Decimals(token).decimals(), uint256)
    assert d <= 18, "bad decimals"
    index: uint256 = len(self.collateral_tokens)
    e: uint256 = self._feed_exponent(feed)
    scale: uint256 = 10 ** e
    self.collateral_tokens.append(token)
    self.collateral_config[token] = CollateralConfig(
        feed=feed, price_scale=scale, decimals=d, unit=10 ** d,
        init_weight=0, maint_weight=0, liquidation_discount=0, deposit_cap=0, index=index, max_price_age=0,
    )
    # dev: the weight, discount and age lanes are written by the setters below.
    token_word: uint256 = self._with_lane(convert(token, uint256), TOKEN_DECIMALS_SHIFT, BYTE_MASK, d)
    self.collateral_words[index] = CollateralWords(
        token_word=self._with_lane(token_word, TOKEN_EXPONENT_SHIFT, BYTE_MASK, e), feed_word=convert(feed, uint256)
    )
    self.collateral_info[token] = self._with_lane(self._with_lane(0, INFO_LISTED_SHIFT, BIT_MASK, 1), INFO_INDEX_SHIFT, BYTE_MASK, index)
    log CollateralListed(token=token, feed=feed, index=index, decimals=d, price_scale=scale)
    self._set_collateral_params(token, init_weight, maint_weight, liquidation_discount, deposit_cap)
    self._set_collateral_price_age(token, self.max_price_age)

@external
def set_collateral_params(token: address, init_weight: uint256, maint_weight: uint256, liquidation_discount: uint256, deposit_cap: uint256):
    self._only_owner()
    assert self.collateral_config[token].feed != empty(address), "not listed"
    self._set_collateral_params(token, init_weight, maint_weight, liquidation_discount, deposit_cap)

@internal
def _set_collateral_params(token: address, init_weight: uint256, maint_weight: uint256, liquidation_discount: uint256, deposit_cap: uint256):
    assert init_weight <= maint_weight, "bad params"
    assert maint_weight + liquidation_discount < WAD, "bad params"
    self.collateral_config[token].init_weight = init_weight
    self.collateral_config[token].maint_weight = maint_weight
    self.collateral_config[token].liquidation_discount = liquidation_discount
    self.collateral_config[token].deposit_cap = deposit_cap
    # dev: the weights and the discount are below WAD < 2**64, so each fits its 64-bit lane.
    index: uint256 = self.collateral_config[token].index
    words: CollateralWords = self.collateral_words[index]
    self.collateral_words[index] = CollateralWords(
        token_word=self._with_lane(words.token_word, TOKEN_INIT_WEIGHT_SHIFT, MASK64, init_weight),
        feed_word=self._with_lane(words.feed_word, CFEED_MAINT_WEIGHT_SHIFT, MASK64, maint_weight),
    )
    self.collateral_info[token] = self._with_lane(self.collateral_info[token], INFO_DISCOUNT_SHIFT, MASK64, liquidation_discount)
    log CollateralParamsSet(
        token=token, init_weight=init_weight, maint_weight=maint_weight,
        liquidation_discount=liquidation_discount, deposit_cap=deposit_cap,
    )

@external
def set_collateral_price_age(token: address, max_price_age: uint256):
    """
    @notice Set the max age (seconds) of the answers of a collateral's feed.
    """
    self._only_owner()
    assert self.collateral_config[token].feed != empty(address), "not listed"
    self._set_collateral_price_age(token, max_price_age)

@internal
def _set_collateral_price_age(token: address, max_price_age: uint256):
    assert max_price_age <= MAX_PRICE_AGE, "bad params"
    self.collateral_config[token].max_price_age = max_price_age
    index: uint256 = self.collateral_config[token].index
    self.collateral_words[index].feed_word = self._with_lane(self.collateral_words[index].feed_word, CFEED_AGE_SHIFT, MASK32, max_price_age)
    log CollateralPriceAgeSet(token=token, max_price_age=max_price_age)

@external
def list_market(feed: address, imf: uint256, mmf: uint256, liquidation_fee: uint256, taker_fee: uint256, oi_cap: uint256) -> uint256:
    """
    @notice List a market; its max price age starts at max_price_age (set_market_price_age).
    """
    self._only_owner()
    market_id: uint256 = self.market_count
    assert market_id < MAX_MARKETS, "too many markets"
    self.market[market_id].feed = feed
    e: uint256 = self._feed_exponent(feed)
    scale: uint256 = 10 ** e
    self.market[market_id].price_scale = scale
    self.market_count = market_id + 1
    # dev: the OI cap flag, the fees and the age are written by the setters below.
    self.market_words[market_id].oracle = self._with_lane(convert(feed, uint256), ORACLE_EXPONENT_SHIFT, BYTE_MASK, e)
    self.hot_params = self._with_lane(self.hot_params, PARAMS_MARKET_COUNT_SHIFT, BYTE_MASK, market_id + 1)
    log MarketListed(market=market_id, feed=feed, price_scale=scale)
    self._set_market_params(market_id, imf, mmf, liquidation_fee, taker_fee, oi_cap)
    self._set_market_price_age(market_id, self.max_price_age)
    return market_id

@external
def set_market_params(market_id: uint256, imf: uint256, mmf: uint256, liquidation_fee: uint256, taker_fee: uint256, oi_cap: uint256):
    self._only_owner()
    assert market_id < self.market_count, "not listed"
    self._set_market_params(market_id, imf, mmf, liquidation_fee, taker_fee, oi_cap)

@internal
def _set_market_params(market_id: uint256, imf: uint256, mmf: uint256, liquidation_fee: uint256, taker_fee: uint256, oi_cap: uint256):
    assert imf <= WAD and imf > mmf and mmf > liquidation_fee and liquidation_fee > 0, "bad params"
    assert taker_fee < WAD, "bad params"
    self.market[market_id].imf = imf
    self.market[market_id].mmf = mmf
    self.market[market_id].liquidation_fee = liquidation_fee
    self.market[market_id].taker_fee = taker_fee
    self.market[market_id].oi_cap = oi_cap
    # dev: imf <= WAD and every other fraction is below it, so each fits its 64-bit lane.
    capped: uint256 = 0
    if oi_cap != 0:
        capped = 1
    fees: uint256 = self._with_lane(self._with_lane(imf, FEE_MMF_SHIFT, MASK64, mmf), FEE_LIQUIDATION_SHIFT, MASK64, liquidation_fee)
    self.market_words[market_id] = MarketWords(
        oracle=self._with_lane(self.market_words[market_id].oracle, ORACLE_OI_CAP_SHIFT, BIT_MASK, capped),
        fees=self._with_lane(fees, FEE_TAKER_SHIFT, MASK64, taker_fee),
    )
    log MarketParamsSet(market=market_id, imf=imf, mmf=mmf, liquidation_fee=liquidation_fee, taker_fee=taker_fee, oi_cap=oi_cap)

@external
def set_market_price_age(market_id: uint256, max_price_age: uint256):
    """
    @notice Set the max age (seconds) of the answers of a market's feed.
    """
    self._only_owner()
    assert market_id < self.market_count, "not listed"
    self._set_market_price_age(market_id, max_price_age)

@internal
def _set_market_price_age(market_id: uint256, max_price_age: uint256):
    assert max_price_age <= MAX_PRICE_AGE, "bad params"
    self.market[market_id].max_price_age = max_price_age
    self.market_words[market_id].oracle = self._with_lane(self.market_words[market_id].oracle, ORACLE_AGE_SHIFT, MASK32, max_price_age)
    log MarketPriceAgeSet(market=market_id, max_price_age=max_price_age)

@external
def set_params(keeper_share: uint256, max_price_age: uint256, dust_notional: uint256):
    """
    @notice max_price_age is the age given to markets and collaterals listed from now on; listed
            ones keep theirs (set_market_price_age, set_collateral_price_age).
    """
    self._only_owner()
    self._set_params(keeper_share, max_price_age, dust_notional)

@internal
def _set_params(keeper_share: uint256, max_price_age: uint256, dust_notional: uint256):
    assert keeper_share <= WAD, "bad params"
    assert max_price_age <= MAX_PRICE_AGE, "bad params"
    assert dust_notional <= MAX_PRICE, "bad params"
    self.keeper_share = keeper_share
    self.max_price_age = max_price_age
    self.dust_notional = dust_notional
    word: uint256 = self._with_lane(self.hot_params, PARAMS_KEEPER_SHARE_SHIFT, MASK64, keeper_share)
    self.hot_params = self._with_lane(word, PARAMS_DUST_SHIFT, MASK112, dust_notional)
    log ParamsSet(keeper_share=keeper_share, max_price_age=max_price_age, dust_notional=dust_notional)

@external
def seed_house(amount: uint256):
    """
    @notice Pull quote tokens from the owner into the house's cash.
    """
    self._only_owner()
    assert amount > 0, "zero amount"
    assert amount <= MAX_AMOUNT, "amount too large"
    c: int256 = self.cash[self] + convert(amount * QUOTE_SCALE, int256)
    self.cash[self] = c
    assert extcall IERC20(QUOTE_TOKEN).transferFrom(msg.sender, self, amount, default_return_value=True), "transfer failed"
    log HouseSeeded(amount=amount, cash=c)

@external
def seed_insurance(amount: uint256):
    """
    @notice Pull quote tokens from the owner into the insurance fund.
    """
    self._only_owner()
    assert amount > 0, "zero amount"
    assert amount <= MAX_AMOUNT, "amount too large"
    fund: uint256 = self.insurance_fund + amount * QUOTE_SCALE
    self.insurance_fund = fund
    assert extcall IERC20(QUOTE_TOKEN).transferFrom(msg.sender, self, amount, default_return_value=True), "transfer failed"
    log InsuranceSeeded(amount=amount, insurance_fund=fund)

@external
def pause():
    self._only_owner()
    assert not self.paused, "paused"
    self.paused = True
    self.hot_params = self._with_lane(self.hot_params, PARAMS_PAUSED_SHIFT, BIT_MASK, 1)
    log Paused(by=msg.sender)

@external
def unpause():
    self._only_owner()
    assert self.paused, "not paused"
    self.paused = False
    self.hot_params = self._with_lane(self.hot_params, PARAMS_PAUSED_SHIFT, BIT_MASK, 0)
    log Unpaused(by=msg.sender)

@external
def transfer_ownership(new_owner: address):
    """
    @notice Step one of two: name the next owner, who must call accept_ownership.
    """
    self._only_owner()
    self.pending_owner = new_owner
    log OwnershipTransferStarted(owner=msg.sender, pending_owner=new_owner)

@external
def accept_ownership():
    assert msg.sender == self.pending_owner, "not pending owner"
    log OwnershipTransferred(previous=self.owner, owner=msg.sender)
    self.owner = msg.sender
    self.pending_owner = empty(address)
