# pragma version 0.4.3
# pragma nonreentrancy off
# nonreentrancy off: a read-only contract with no state; it only makes static calls.
"""
@title Lens
@notice Batched reads of the MarginEngine: the whole protocol configuration and prices in one
        call, and cash, collateral, positions and health for a batch of accounts in one call.
@dev Glossary: every unit is the engine's (USD WAD, base units WAD, token native units).
     Arrays are indexed by market id (0..15) and collateral index (0..7); entries past the
     engine's market_count / collateral_count are zero. Only active markets and held collaterals
     are read, so a batch costs what the accounts hold.
"""

# ---------------------------------------------------------------- INTERFACES

struct Market:
    feed: address
    price_scale: uint256
    imf: uint256
    mmf: uint256
    liquidation_fee: uint256
    taker_fee: uint256
    oi_cap: uint256
    max_price_age: uint256      # seconds

struct CollateralConfig:
    feed: address
    price_scale: uint256
    decimals: uint256
    unit: uint256
    init_weight: uint256
    maint_weight: uint256
    liquidation_discount: uint256
    deposit_cap: uint256
    index: uint256
    max_price_age: uint256      # seconds

struct Position:
    size: int256
    quote: int256

interface Engine:
    def market(market_id: uint256) -> Market: view
    def market_count() -> uint256: view
    def collateral_config(token: address) -> CollateralConfig: view
    def collateral_tokens(i: uint256) -> address: view
    def collateral_count() -> uint256: view
    def total_collateral(token: address) -> uint256: view
    def quote_token() -> address: view
    def quote_scale() -> uint256: view
    def keeper_share() -> uint256: view
    def max_price_age() -> uint256: view
    def dust_notional() -> uint256: view
    def insurance_fund() -> uint256: view
    def paused() -> bool: view
    def owner() -> address: view
    def cash(account: address) -> int256: view
    def collateral(account: address, token: address) -> uint256: view
    def position(account: address, market_id: uint256) -> Position: view
    def active_markets(account: address) -> uint256: view
    def held_collaterals(account: address) -> uint256: view
    def health(account: address) -> (int256, int256, int256): view

interface AggregatorV3:
    def latestRoundData() -> (uint80, int256, uint256, uint256, uint80): view

# ---------------------------------------------------------------- STRUCTS

struct FeedView:
    feed: address
    round_id: uint256
    answer: int256              # feed units
    updated_at: uint256         # seconds

struct ProtocolView:
    quote_token: address
    quote_scale: uint256
    keeper_share: uint256       # WAD fraction
    max_price_age: uint256      # seconds
    dust_notional: uint256      # USD WAD
    insurance_fund: uint256     # USD WAD
    paused: bool
    owner: address
    market_count: uint256
    markets: Market[MAX_MARKETS]
    market_feeds: FeedView[MAX_MARKETS]
    collateral_count: uint256
    collateral_tokens: address[MAX_COLLATERALS]
    collaterals: CollateralConfig[MAX_COLLATERALS]
    collateral_feeds: FeedView[MAX_COLLATERALS]
    total_collateral: uint256[MAX_COLLATERALS]
    block_number: uint256
    block_timestamp: uint256

struct AccountView:
    account: address
    cash: int256                            # USD WAD
    active_markets: uint256                 # bitmask by market id
    held_collaterals: uint256               # bitmask by collateral index
    sizes: int256[MAX_MARKETS]              # base units WAD
    quotes: int256[MAX_MARKETS]             # USD WAD
    collateral: uint256[MAX_COLLATERALS]    # native units
    equity: int256                          # USD WAD, at the latest prices
    init_health: int256
    maint_health: int256

# ---------------------------------------------------------------- CONSTANTS

MAX_MARKETS: constant(uint256) = 16
MAX_COLLATERALS: constant(uint256) = 8
MAX_BATCH: constant(uint256) = 200      # accounts per call; about 9.7M gas for 200 accounts of the default listing (docs/protocol.md)

# ---------------------------------------------------------------- VIEWS

@view
@internal
def _feed(feed: address) -> FeedView:
    v: FeedView = empty(FeedView)
    v.feed = feed
    if feed == empty(address):
        return v
    round_id: uint80 = 0
    answer: int256 = 0
    started_at: uint256 = 0
    updated_at: uint256 = 0
    answered_in: uint80 = 0
    round_id, answer, started_at, updated_at, answered_in = staticcall AggregatorV3(feed).latestRoundData()
    v.round_id = convert(round_id, uint256)
    v.answer = answer
    v.updated_at = updated_at
    return v

@view
@external
def protocol(engine: address) -> ProtocolView:
    """
    @notice Every parameter, market, collateral and feed reading of the engine, in one call.
    """
    e: Engine = Engine(engine)
    v: ProtocolView = empty(ProtocolView)
    v.quote_token = staticcall e.quote_token()
    v.quote_scale = staticcall e.quote_scale()
    v.keeper_share = staticcall e.keeper_share()
    v.max_price_age = staticcall e.max_price_age()
    v.dust_notional = staticcall e.dust_notional()
    v.insurance_fund = staticcall e.insurance_fund()
    v.paused = staticcall e.paused()
    v.owner = staticcall e.owner()
    v.market_count = staticcall e.market_count()
    for m: uint256 in range(MAX_MARKETS):
        if m >= v.market_count:
            break
        v.markets[m] = staticcall e.market(m)
        v.market_feeds[m] = self._feed(v.markets[m].feed)
    v.collateral_count = staticcall e.collateral_count()
    for i: uint256 in range(MAX_COLLATERALS):
        if i >= v.collateral_count:
            break
        token: address = staticcall e.collateral_tokens(i)
        v.collateral_tokens[i] = token
        v.collaterals[i] = staticcall e.collateral_config(token)
        v.collateral_feeds[i] = self._feed(v.collaterals[i].feed)
        v.total_collateral[i] = staticcall e.total_collateral(token)
    v.block_number = block.number
    v.block_timestamp = block.timestamp
    return v

@view
@internal
def _account(e: Engine, tokens: address[MAX_COLLATERALS], a: address) -> AccountView:
    v: AccountView = empty(AccountView)
    v.account = a
    v.cash = staticcall e.cash(a)
    v.active_markets = staticcall e.active_markets(a)
    v.held_collaterals = staticcall e.held_collaterals(a)
    mask: uint256 = v.active_markets
    for m: uint256 in range(MAX_MARKETS):
        if mask == 0:
            break
        if mask & 1 == 1:
            p: Position = staticcall e.position(a, m)
            v.sizes[m] = p.size
            v.quotes[m] = p.quote
        mask >>= 1
    mask = v.held_collaterals
    for i: uint256 in range(MAX_COLLATERALS):
        if mask == 0:
            break
        if mask & 1 == 1:
            v.collateral[i] = staticcall e.collateral(a, tokens[i])
        mask >>= 1
    v.equity, v.init_health, v.maint_health = staticcall e.health(a)
    return v

@view
@external
def accounts(engine: address, addrs: DynArray[address, MAX_BATCH]) -> DynArray[AccountView, MAX_BATCH]:
    """
    @notice Cash, collateral, positions and health of each account in `addrs`, in one call.
    @dev The result is built in the smallest of four lists (8, 32, 128, MAX_BATCH views) that
         holds the batch: EVM memory is paid up to the highest byte touched, so a call pays for
         at most four times the memory its batch needs, not for MAX_BATCH views.
    """
    e: Engine = Engine(engine)
    tokens: address[MAX_COLLATERALS] = empty(address[MAX_COLLATERALS])
    n_tokens: uint256 = staticcall e.collateral_count()
    for i: uint256 in range(MAX_COLLATERALS):
        if i >= n_tokens:
            break
        tokens[i] = staticcall e.collateral_tokens(i)
    n: uint256 = len(addrs)
    if n <= 8:
        out8: DynArray[AccountView, 8] = []
        for a: address in addrs:
            out8.append(self._account(e, tokens, a))
        return out8
    if n <= 32:
        out32: DynArray[AccountView, 32] = []
        for a: address in addrs:
            out32.append(self._account(e, tokens, a))
        return out32
    if n <= 128:
        out128: DynArray[AccountView, 128] = []
        for a: address in addrs:
            out128.append(self._account(e, tokens, a))
        return out128
    out: DynArray[AccountView, MAX_BATCH] = []
    for a: address in addrs:
        out.append(self._account(e, tokens, a))
    return out
