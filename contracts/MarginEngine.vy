# pragma version 0.4.3
# pragma nonreentrancy on
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
                    margin checks; absorbs socialised losses
     insurance fund a separate balance fed by liquidation penalties [USD WAD]
     max_age        a price read's mode: actions read strictly (revert on a bad or a stale price;
                    max_age = the protocol's max_price_age), the preview views revert on a bad
                    price only (PREVIEW), the other views clamp and ignore the age (LOOSE); see _price
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

# Packed copies of the configuration, for the hot paths (see STORAGE).

struct MarketWords:
    oracle: uint256             # feed (bits 0-159) | price_scale (160-223) | OI_CAP_FLAG iff oi_cap != 0
    fees: uint256               # WAD fractions, 64 bits each: imf | mmf << 64 | liquidation_fee << 128 | taker_fee << 192

struct CollateralWords:
    token_word: uint256         # token (bits 0-159) | init_weight (160-223) | decimals (224-231) | 18 - feed decimals (232-239)
    feed_word: uint256          # feed (bits 0-159) | maint_weight (160-223)

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
    penalty: uint256            # USD WAD charged to the account's cash
    keeper_reward: uint256      # quote native units paid to the caller
    insurance: uint256          # USD WAD credited to the insurance fund
    size: int256                # resulting size
    quote: int256               # resulting quote (0 once the position is closed)
    cash: int256                # resulting cash
    equity: int256              # resulting equity
    init_health: int256         # resulting init_health
    maint_health: int256        # resulting maint_health

struct CollateralLiquidationPlan:
    repay: uint256              # quote native units paid by the caller
    seized: uint256             # collateral native units sent to the caller
    price: uint256              # USD WAD per whole token (undiscounted)
    cash: int256                # resulting cash
    collateral: uint256         # resulting collateral balance

# ---------------------------------------------------------------- EVENTS
# Every account event carries the account's resulting state for the touched fields, so that an
# off-chain mirror can rebuild every account (and the house) from logs alone.

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

event Liquidation:
    account: indexed(address)
    market: indexed(uint256)
    liquidator: indexed(address)
    size_delta: int256
    price: uint256
    quote_delta: int256
    penalty: uint256            # USD WAD
    keeper_reward: uint256      # quote native units
    insurance: uint256          # USD WAD credited to the insurance fund
    size: int256
    quote: int256
    cash: int256

event CollateralLiquidation:
    account: indexed(address)
    token: indexed(address)
    liquidator: indexed(address)
    repay: uint256              # quote native units
    seized: uint256             # collateral native units
    price: uint256              # USD WAD, undiscounted
    cash: int256
    collateral: uint256

event BadDebtSettled:
    account: indexed(address)
    deficit: uint256            # USD WAD
    covered: uint256            # USD WAD paid by the insurance fund
    socialised: uint256         # USD WAD absorbed by the house's cash

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

event ParamsSet:
    keeper_share: uint256
    max_price_age: uint256
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
MAX_AMOUNT: constant(uint256) = 2**128      # native units; largest deposit/withdraw/seed amount
MAX_SIZE: constant(int256) = 2**100         # base units WAD; largest |size| (about 1.27e12 units)
MAX_PRICE: constant(uint256) = 2**100       # USD WAD; largest usable price (about 1.27e12 USD)
# Whole tokens; total_collateral[token] <= MAX_TOTAL_COLLATERAL * 10**decimals ("deposit cap"). The
# largest bound for which balance * P and value * weight fit in int256 at every P <= MAX_PRICE,
# weight < WAD and decimals <= 18 (about 4.57e28 tokens, 2**95.2); see docs/protocol.md.
MAX_TOTAL_COLLATERAL: constant(uint256) = (2**255 - 1) // (MAX_PRICE * WAD)

# Price read modes: _price's max_age argument. A strict read (actions) passes the protocol's
# max_price_age, at most PREVIEW - 1 (_strict_age); these two values above it select the views'
# modes. Both accept any age a chain can reach (block.timestamp - updatedAt < 2**256 - 2).
LOOSE: constant(uint256) = max_value(uint256)       # views: a bad price is clamped to [0, MAX_PRICE]
PREVIEW: constant(uint256) = max_value(uint256) - 1 # preview views: a bad price reverts as in actions

# Lanes of the packed hot copies (bit offsets and masks; see STORAGE and the word structs).
ADDRESS_MASK: constant(uint256) = 2**160 - 1
MASK64: constant(uint256) = 2**64 - 1
BYTE_MASK: constant(uint256) = 255
PAUSED_FLAG: constant(uint256) = 1              # hot_params bit 0
MARKET_COUNT_SHIFT: constant(uint256) = 8       # hot_params, 8 bits
KEEPER_SHARE_SHIFT: constant(uint256) = 16      # hot_params, 64 bits
PRICE_AGE_SHIFT: constant(uint256) = 80         # hot_params, 64 bits
DUST_SHIFT: constant(uint256) = 144             # hot_params, 112 bits
STATUS_MASK: constant(uint256) = 2**16 - 1      # hot_params: the pause flag and market_count
PRICE_AGE_CAP: constant(uint256) = 2**64 - 1    # seconds; a price age lane at the cap means "read max_price_age"
OI_CAP_FLAG: constant(uint256) = 2**224         # MarketWords.oracle bit: oi_cap != 0
WEIGHT_SHIFT: constant(uint256) = 160           # CollateralWords: init / maint weight lane
INDEX_SHIFT: constant(uint256) = 160            # collateral_info: index lane
DISCOUNT_SHIFT: constant(uint256) = 184         # collateral_info: liquidation_discount lane

# ---------------------------------------------------------------- STORAGE

owner: public(address)                      # admin
pending_owner: public(address)              # set by transfer_ownership, cleared by accept_ownership
paused: public(bool)                        # stops trades and withdrawals

quote_token: public(address)                # the 1-USD stablecoin
quote_scale: public(uint256)                # 10**(18 - quote decimals): native -> USD WAD

keeper_share: public(uint256)               # WAD fraction of a liquidation penalty paid to the caller
max_price_age: public(uint256)              # seconds
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

# Packed hot copies of the configuration above, appended so that every slot above keeps its
# number. Trades, withdrawals and liquidations read these (one cold slot instead of several,
# EIP-2929); the variables above stay the canonical state and keep their getters.
# dev: every admin function that writes a mirrored variable rewrites its copy in the same call, so
#      each copy equals the variables it is made of, lane by lane.
# dev: hot_params holds, from bit 0: paused (8 bits, 0 or 1) | market_count (8) | keeper_share (64;
#      <= WAD) | min(max_price_age, PRICE_AGE_CAP) (64) | dust_notional (112; <= MAX_PRICE).
hot_params: uint256                                             # packed; see above
market_words: HashMap[uint256, MarketWords]                     # market id -> packed copy of market[id]
collateral_words: HashMap[uint256, CollateralWords]             # collateral index -> packed copy of its config
# dev: collateral_info[token] = feed (bits 0-159) | index (160-167) | decimals (168-175) |
#      18 - feed decimals (176-183) | liquidation_discount (184-247); 0 iff the token is unlisted.
collateral_info: HashMap[address, uint256]                      # token -> packed; see above

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

# ---------------------------------------------------------------- PRICES

@view
@internal
def _price(feed: address, price_scale: uint256, max_age: uint256) -> int256:
    """
    @dev A usable price is 0 < P <= MAX_PRICE and at most max_price_age old. A bad price (out of
         that range) reverts "bad price" unless max_age is LOOSE, which clamps it to
         [0, MAX_PRICE]; a price older than max_age reverts "stale price" (never for LOOSE and
         PREVIEW). Strict reads pass _strict_age().
    """
    round_id: uint80 = 0
    answer: int256 = 0
    started_at: uint256 = 0
    updated_at: uint256 = 0
    answered_in: uint80 = 0
    round_id, answer, started_at, updated_at, answered_in = staticcall AggregatorV3(feed).latestRoundData()
    if answer <= 0:
        assert max_age == LOOSE, "bad price"
        return 0
    if convert(answer, uint256) > MAX_PRICE // price_scale:
        assert max_age == LOOSE, "bad price"
        return convert(MAX_PRICE, int256)
    if updated_at < block.timestamp:
        assert block.timestamp - updated_at <= max_age, "stale price"
    return answer * convert(price_scale, int256)

@view
@internal
def _strict_age(params: uint256) -> uint256:
    """
    @dev The max_age of a strict read: max_price_age from its hot_params lane (params), capped
         below the view modes (an age of 2**256 - 3 s or more already accepts every price).
    """
    age: uint256 = (params >> PRICE_AGE_SHIFT) & MASK64
    if age == PRICE_AGE_CAP:
        return min(self.max_price_age, PREVIEW - 1)
    return age

@view
@internal
def _oracle_price(oracle: uint256, max_age: uint256) -> int256:
    """
    @dev The price of a market from its MarketWords.oracle word.
    """
    return self._price(convert(oracle & ADDRESS_MASK, address), (oracle >> 160) & MASK64, max_age)

@view
@internal
def _market_price(market_id: uint256, max_age: uint256) -> int256:
    return self._oracle_price(self.market_words[market_id].oracle, max_age)

# ---------------------------------------------------------------- HEALTH

@view
@internal
def _health(account: address, max_age: uint256, known_market: uint256, known_price: int256) -> Health:
    """
    @dev One pass over the account's active markets and held collaterals (bitmasks), so the cost
         grows with what the account holds, not with what is listed.
         known_price is the price of known_market (MAX_MARKETS for none) read earlier in the same
         call with the same read mode; it is used instead of reading that feed again.
    """
    c: int256 = self.cash[account]
    h: Health = Health(equity=c, init_health=c, maint_health=c)

    mask: uint256 = self.active_markets[account]
    for m: uint256 in range(MAX_MARKETS):
        if mask == 0:
            break
        if mask & 1 == 1:
            pos: Position = self.position[account][m]
            p: int256 = known_price
            if m != known_market:
                p = self._market_price(m, max_age)
            fees: uint256 = self.market_words[m].fees
            upnl: int256 = self._mul_down(pos.size, p) + pos.quote
            notional: int256 = self._mul_up(abs(pos.size), p)
            h.equity += upnl
            h.init_health += upnl - self._mul_up(notional, convert(fees & MASK64, int256))
            h.maint_health += upnl - self._mul_up(notional, convert((fees >> 64) & MASK64, int256))
        mask >>= 1

    mask = self.held_collaterals[account]
    for i: uint256 in range(MAX_COLLATERALS):
        if mask == 0:
            break
        if mask & 1 == 1:
            words: CollateralWords = self.collateral_words[i]
            token: address = convert(words.token_word & ADDRESS_MASK, address)
            p: int256 = self._price(
                convert(words.feed_word & ADDRESS_MASK, address), 10 ** ((words.token_word >> 232) & BYTE_MASK), max_age
            )
            unit: uint256 = 10 ** ((words.token_word >> 224) & BYTE_MASK)
            value: int256 = convert(self.collateral[account][token], int256) * p // convert(unit, int256)
            h.equity += value
            h.init_health += self._mul_down(value, convert((words.token_word >> WEIGHT_SHIFT) & MASK64, int256))
            h.maint_health += self._mul_down(value, convert((words.feed_word >> WEIGHT_SHIFT) & MASK64, int256))
        mask >>= 1
    return h

# ---------------------------------------------------------------- VIEWS

@view
@external
def health(account: address) -> (int256, int256, int256):
    """
    @notice (equity, init_health, maint_health) in USD WAD at the latest prices, stale or not.
    """
    h: Health = self._health(account, LOOSE, MAX_MARKETS, 0)
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
            with liquidate's reasons (a bad price too) except that stale prices are read, not
            rejected.
    """
    return self._liquidation_plan(account, market_id, max_size, False)

@view
@external
def preview_liquidate_collateral(account: address, token: address, max_repay: uint256) -> CollateralLiquidationPlan:
    """
    @notice What liquidate_collateral(account, token, max_repay) would do at the latest prices;
            reverts with liquidate_collateral's reasons (a bad price too) except that stale
            prices are read, not rejected.
    """
    return self._collateral_plan(account, token, max_repay, False)

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
        info: uint256 = self.collateral_info[token]
        assert info != 0, "not listed"
        total: uint256 = self.total_collateral[token] + amount
        cap: uint256 = self.collateral_config[token].deposit_cap
        # dev: the hard bound keeps every balance's health terms inside int256 (MAX_TOTAL_COLLATERAL).
        assert total <= MAX_TOTAL_COLLATERAL * 10 ** ((info >> 168) & BYTE_MASK) and (cap == 0 or total <= cap), "deposit cap"
        self.total_collateral[token] = total
        balance = self.collateral[msg.sender][token] + amount
        self.collateral[msg.sender][token] = balance
        self.held_collaterals[msg.sender] |= 1 << ((info >> INDEX_SHIFT) & BYTE_MASK)
    assert extcall IERC20(token).transferFrom(msg.sender, self, amount, default_return_value=True), "transfer failed"
    log Deposit(account=msg.sender, token=token, amount=amount, cash=c, collateral=balance)

@external
def withdraw(token: address, amount: uint256):
    """
    @notice Send `amount` native units of `token` from the caller's account to the caller.
            Quote withdrawals may not take cash below zero; afterwards init_health >= 0.
    """
    params: uint256 = self.hot_params
    assert params & PAUSED_FLAG == 0, "paused"
    assert amount > 0, "zero amount"
    assert amount <= MAX_AMOUNT, "amount too large"
    balance: uint256 = 0
    c: int256 = self.cash[msg.sender]
    if token == QUOTE_TOKEN:
        c -= convert(amount * QUOTE_SCALE, int256)
        assert c >= 0, "insufficient cash"
        self.cash[msg.sender] = c
    else:
        info: uint256 = self.collateral_info[token]
        assert info != 0, "not listed"
        balance = self.collateral[msg.sender][token]
        assert balance >= amount, "insufficient collateral"
        balance -= amount
        self.collateral[msg.sender][token] = balance
        self.total_collateral[token] -= amount
        if balance == 0:
            self.held_collaterals[msg.sender] &= ~(1 << ((info >> INDEX_SHIFT) & BYTE_MASK))
    assert self._health(msg.sender, self._strict_age(params), MAX_MARKETS, 0).init_health >= 0, "insufficient margin"
    assert extcall IERC20(token).transfer(msg.sender, amount, default_return_value=True), "transfer failed"
    log Withdraw(account=msg.sender, token=token, amount=amount, cash=c, collateral=balance)

@external
def trade(market_id: uint256, size_delta: int256, limit_price: uint256):
    """
    @notice Buy (size_delta > 0) or sell at the oracle price against the house. A buy reverts
            above limit_price, a sell below it. A risk-increasing trade needs init_health >= 0.
    """
    params: uint256 = self.hot_params
    assert params & PAUSED_FLAG == 0, "paused"
    assert market_id < (params >> MARKET_COUNT_SHIFT) & BYTE_MASK, "not listed"
    assert size_delta != 0, "zero amount"
    assert size_delta <= MAX_SIZE and size_delta >= -MAX_SIZE, "size too large"
    oracle: uint256 = self.market_words[market_id].oracle
    max_age: uint256 = self._strict_age(params)
    p: int256 = self._oracle_price(oracle, max_age)
    if size_delta > 0:
        assert convert(p, uint256) <= limit_price, "price limit"
    else:
        assert convert(p, uint256) >= limit_price, "price limit"

    # A buy pays mul_up, a sell receives mul_down: both are mul_down(-size_delta, P).
    quote_delta: int256 = self._mul_down(-size_delta, p)
    fee: int256 = self._mul_up(self._mul_up(abs(size_delta), p), convert(self.market_words[market_id].fees >> 192, int256))

    old: Position = self.position[msg.sender][market_id]
    new_size: int256 = old.size + size_delta
    assert new_size <= MAX_SIZE and new_size >= -MAX_SIZE, "size too large"
    pos: Position = self._write_position(
        msg.sender, market_id, old.size, new_size, old.quote + quote_delta, self.cash[msg.sender] - fee
    )

    # The house books the exact opposite and receives the fee.
    house_old: Position = self.position[self][market_id]
    house_size: int256 = house_old.size - size_delta
    # dev: OI_CAP_FLAG is set iff oi_cap != 0, so an uncapped market skips the oi_cap slot.
    if oracle & OI_CAP_FLAG != 0 and abs(house_size) > abs(house_old.size):
        assert convert(abs(house_size), uint256) <= self.market[market_id].oi_cap, "oi cap"
    self._write_position(self, market_id, house_old.size, house_size, house_old.quote - quote_delta, self.cash[self] + fee)

    increases_risk: bool = abs(new_size) > abs(old.size) or (old.size > 0 and new_size < 0) or (old.size < 0 and new_size > 0)
    if increases_risk:
        # dev: no external call since p was read, so the feed would answer the same again.
        assert self._health(msg.sender, max_age, market_id, p).init_health >= 0, "insufficient margin"

    log Trade(
        account=msg.sender, market=market_id, size_delta=size_delta, price=convert(p, uint256),
        quote_delta=quote_delta, fee=convert(fee, uint256), size=pos.size, quote=pos.quote,
        cash=self.cash[msg.sender],
    )

# ---------------------------------------------------------------- LIQUIDATIONS

@view
@internal
def _liquidation_plan(account: address, market_id: uint256, max_size: uint256, strict: bool) -> LiquidationPlan:
    params: uint256 = self.hot_params
    max_age: uint256 = PREVIEW
    if strict:
        max_age = self._strict_age(params)
    assert market_id < (params >> MARKET_COUNT_SHIFT) & BYTE_MASK, "not listed"
    assert max_size > 0, "zero amount"
    assert account != self, "house"
    h: Health = self._health(account, max_age, MAX_MARKETS, 0)
    assert h.maint_health < 0, "healthy"
    old: Position = self.position[account][market_id]
    assert old.size != 0, "no position"

    p: int256 = self._market_price(market_id, max_age)
    fees: uint256 = self.market_words[market_id].fees
    imf: int256 = convert(fees & MASK64, int256)
    mmf: int256 = convert((fees >> 64) & MASK64, int256)
    fee: int256 = convert((fees >> 128) & MASK64, int256)

    # Close what restores init_health to zero; a dust leftover is closed whole.
    s: int256 = abs(old.size)
    need: int256 = self._div_up(self._div_up(-h.init_health, imf - fee), p)
    q: int256 = min(s, need)
    if self._mul_up(s - q, p) < convert(params >> DUST_SHIFT, int256):
        q = s
    if max_size < convert(q, uint256):
        q = convert(max_size, int256)

    plan: LiquidationPlan = empty(LiquidationPlan)
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

    penalty: int256 = self._mul_up(self._mul_up(q, p), fee)
    penalty = min(penalty, max(plan.equity, 0))
    plan.penalty = convert(penalty, uint256)
    plan.cash = self.cash[account] - penalty
    if plan.size == 0:
        plan.cash += plan.quote
        plan.quote = 0
    plan.equity -= penalty
    plan.init_health = h.init_health - old_upnl + new_upnl - penalty \
        + self._mul_up(old_notional, imf) - self._mul_up(new_notional, imf)
    plan.maint_health = h.maint_health - old_upnl + new_upnl - penalty \
        + self._mul_up(old_notional, mmf) - self._mul_up(new_notional, mmf)

    # The keeper's share, rounded down to native quote units; the rest feeds the insurance fund.
    qs: uint256 = QUOTE_SCALE
    keeper_share: int256 = convert((params >> KEEPER_SHARE_SHIFT) & MASK64, int256)
    plan.keeper_reward = convert(self._mul_down(penalty, keeper_share), uint256) // qs
    plan.insurance = plan.penalty - plan.keeper_reward * qs
    return plan

@external
def liquidate(account: address, market_id: uint256, max_size: uint256):
    """
    @notice Close up to max_size (base units WAD) of a liquidatable account's position in
            market_id against the house; the caller receives keeper_share of the penalty.
    """
    plan: LiquidationPlan = self._liquidation_plan(account, market_id, max_size, True)
    old_size: int256 = plan.size - plan.size_delta
    self._write_position(account, market_id, old_size, plan.size, plan.quote, plan.cash)

    house_old: Position = self.position[self][market_id]
    self._write_position(
        self, market_id, house_old.size, house_old.size - plan.size_delta,
        house_old.quote - plan.quote_delta, self.cash[self],
    )
    self.insurance_fund += plan.insurance
    if plan.keeper_reward > 0:
        assert extcall IERC20(QUOTE_TOKEN).transfer(msg.sender, plan.keeper_reward, default_return_value=True), "transfer failed"
    log Liquidation(
        account=account, market=market_id, liquidator=msg.sender, size_delta=plan.size_delta,
        price=plan.price, quote_delta=plan.quote_delta, penalty=plan.penalty,
        keeper_reward=plan.keeper_reward, insurance=plan.insurance, size=plan.size,
        quote=plan.quote, cash=plan.cash,
    )

@view
@internal
def _collateral_plan(account: address, token: address, max_repay: uint256, strict: bool) -> CollateralLiquidationPlan:
    max_age: uint256 = PREVIEW
    if strict:
        max_age = self._strict_age(self.hot_params)
    info: uint256 = self.collateral_info[token]
    assert info != 0, "not listed"
    assert max_repay > 0, "zero amount"
    assert account != self, "house"
    assert self._health(account, max_age, MAX_MARKETS, 0).maint_health < 0, "healthy"
    c: int256 = self.cash[account]
    assert c < 0, "no debt"
    balance: uint256 = self.collateral[account][token]
    assert balance > 0, "no collateral"

    p: int256 = self._price(convert(info & ADDRESS_MASK, address), 10 ** ((info >> 176) & BYTE_MASK), max_age)
    # The caller's price: P * (1 - discount), rounded up so the account gives up no extra wei.
    discounted: uint256 = convert(self._mul_up(p, convert(WAD - ((info >> DISCOUNT_SHIFT) & MASK64), int256)), uint256)
    unit: uint256 = 10 ** ((info >> 168) & BYTE_MASK)
    qs: uint256 = QUOTE_SCALE

    # Repay in native quote units: the whole debt rounded up, at most max_repay, at most what the
    # balance is worth at the discounted price rounded down (`cap`). A repay of the whole cap
    # takes the whole balance, so no unliquidatable dust (worth under one quote unit) is left
    # behind to block settle_bad_debt.
    debt: uint256 = (convert(-c, uint256) + qs - 1) // qs
    cap: uint256 = balance * discounted // unit // qs
    repay: uint256 = min(min(debt, max_repay), cap)

    plan: CollateralLiquidationPlan = empty(CollateralLiquidationPlan)
    plan.repay = repay
    if repay == cap:
        plan.seized = balance
    else:
        # dev: repay < cap, so the seized amount is below the balance
        plan.seized = repay * qs * unit // discounted
    plan.price = convert(p, uint256)
    plan.cash = c + convert(repay * qs, int256)
    plan.collateral = balance - plan.seized
    return plan

@external
def liquidate_collateral(account: address, token: address, max_repay: uint256):
    """
    @notice Repay up to max_repay quote native units of a liquidatable account's negative cash and
            receive its collateral `token` at the feed price less the liquidation discount.
    """
    plan: CollateralLiquidationPlan = self._collateral_plan(account, token, max_repay, True)
    self.cash[account] = plan.cash
    self.collateral[account][token] = plan.collateral
    self.total_collateral[token] -= plan.seized
    if plan.collateral == 0:
        self.held_collaterals[account] &= ~(1 << ((self.collateral_info[token] >> INDEX_SHIFT) & BYTE_MASK))
    if plan.repay > 0:
        assert extcall IERC20(QUOTE_TOKEN).transferFrom(msg.sender, self, plan.repay, default_return_value=True), "transfer failed"
    if plan.seized > 0:
        assert extcall IERC20(token).transfer(msg.sender, plan.seized, default_return_value=True), "transfer failed"
    log CollateralLiquidation(
        account=account, token=token, liquidator=msg.sender, repay=plan.repay, seized=plan.seized,
        price=plan.price, cash=plan.cash, collateral=plan.collateral,
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
    deficit: uint256 = convert(-c, uint256)
    covered: uint256 = min(deficit, self.insurance_fund)
    socialised: uint256 = deficit - covered
    self.insurance_fund -= covered
    self.cash[self] -= convert(socialised, int256)
    self.cash[account] = 0
    log BadDebtSettled(account=account, deficit=deficit, covered=covered, socialised=socialised)

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
        init_weight=0, maint_weight=0, liquidation_discount=0, deposit_cap=0, index=index,
    )
    # dev: the weights and the discount lanes are written by _set_collateral_params below.
    self.collateral_words[index] = CollateralWords(
        token_word=convert(token, uint256) | (d << 224) | (e << 232), feed_word=convert(feed, uint256)
    )
    self.collateral_info[token] = convert(feed, uint256) | (index << INDEX_SHIFT) | (d << 168) | (e << 176)
    log CollateralListed(token=token, feed=feed, index=index, decimals=d, price_scale=scale)
    self._set_collateral_params(token, init_weight, maint_weight, liquidation_discount, deposit_cap)

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
    lane: uint256 = MASK64 << WEIGHT_SHIFT
    words: CollateralWords = self.collateral_words[index]
    self.collateral_words[index] = CollateralWords(
        token_word=(words.token_word & ~lane) | (init_weight << WEIGHT_SHIFT),
        feed_word=(words.feed_word & ~lane) | (maint_weight << WEIGHT_SHIFT),
    )
    info: uint256 = self.collateral_info[token] & ~(MASK64 << DISCOUNT_SHIFT)
    self.collateral_info[token] = info | (liquidation_discount << DISCOUNT_SHIFT)
    log CollateralParamsSet(
        token=token, init_weight=init_weight, maint_weight=maint_weight,
        liquidation_discount=liquidation_discount, deposit_cap=deposit_cap,
    )

@external
def list_market(feed: address, imf: uint256, mmf: uint256, liquidation_fee: uint256, taker_fee: uint256, oi_cap: uint256) -> uint256:
    self._only_owner()
    market_id: uint256 = self.market_count
    assert market_id < MAX_MARKETS, "too many markets"
    self.market[market_id].feed = feed
    scale: uint256 = 10 ** self._feed_exponent(feed)
    self.market[market_id].price_scale = scale
    self.market_count = market_id + 1
    # dev: OI_CAP_FLAG and the fees are written by _set_market_params below.
    self.market_words[market_id].oracle = convert(feed, uint256) | (scale << 160)
    self.hot_params += 1 << MARKET_COUNT_SHIFT
    log MarketListed(market=market_id, feed=feed, price_scale=scale)
    self._set_market_params(market_id, imf, mmf, liquidation_fee, taker_fee, oi_cap)
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
    oracle: uint256 = self.market_words[market_id].oracle & ~OI_CAP_FLAG
    if oi_cap != 0:
        oracle |= OI_CAP_FLAG
    self.market_words[market_id] = MarketWords(
        oracle=oracle, fees=imf | (mmf << 64) | (liquidation_fee << 128) | (taker_fee << 192)
    )
    log MarketParamsSet(market=market_id, imf=imf, mmf=mmf, liquidation_fee=liquidation_fee, taker_fee=taker_fee, oi_cap=oi_cap)

@external
def set_params(keeper_share: uint256, max_price_age: uint256, dust_notional: uint256):
    self._only_owner()
    self._set_params(keeper_share, max_price_age, dust_notional)

@internal
def _set_params(keeper_share: uint256, max_price_age: uint256, dust_notional: uint256):
    assert keeper_share <= WAD, "bad params"
    assert dust_notional <= MAX_PRICE, "bad params"
    self.keeper_share = keeper_share
    self.max_price_age = max_price_age
    self.dust_notional = dust_notional
    self.hot_params = (self.hot_params & STATUS_MASK) | (keeper_share << KEEPER_SHARE_SHIFT) \
        | (min(max_price_age, PRICE_AGE_CAP) << PRICE_AGE_SHIFT) | (dust_notional << DUST_SHIFT)
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
    self.hot_params |= PAUSED_FLAG
    log Paused(by=msg.sender)

@external
def unpause():
    self._only_owner()
    assert self.paused, "not paused"
    self.paused = False
    self.hot_params &= ~PAUSED_FLAG
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
