# pragma version 0.4.3
# pragma nonreentrancy on
"""
@title TraderFactory
@notice Bench only: creates many engine accounts per transaction. Each trader is a minimal
        proxy (EIP-1167) of a BenchTrader; the factory sends it its margin in quote tokens
        from its own balance and has it deposit and open a position, all in the same call.
@dev Glossary (units in brackets):
     implementation  the BenchTrader every proxy delegates to, created from a blueprint
     order           one trader to create: margin [quote native units], market id, size
                     [base units WAD, signed]
     The factory's quote balance is minted to it by the token's owner beforehand.
"""

from ethereum.ercs import IERC20

# ---------------------------------------------------------------- INTERFACES

interface BenchTrader:
    def open(margin: uint256, market_id: uint256, size: int256): nonpayable

# ---------------------------------------------------------------- STRUCTS

struct Order:
    margin: uint256             # quote native units deposited by the trader
    market_id: uint256          # engine market id
    size: int256                # base units WAD, signed

# ---------------------------------------------------------------- EVENTS

event TradersCreated:
    first: indexed(address)     # first trader of the batch
    count: uint256              # traders created by this call
    total: uint256              # traders created so far

# ---------------------------------------------------------------- CONSTANTS

MAX_BATCH: constant(uint256) = 256     # traders per call; each costs about 194k gas (75 fill the 15M gas target)

# ---------------------------------------------------------------- STORAGE

owner: public(address)                 # the only caller of create_traders
implementation: public(address)        # BenchTrader behind every proxy
quote: public(address)                 # quote token sent to each trader
trader_count: public(uint256)          # traders created so far

# ---------------------------------------------------------------- CONSTRUCTOR

@deploy
def __init__(_trader_blueprint: address, _engine: address, _quote: address):
    self.owner = msg.sender
    self.quote = _quote
    self.implementation = create_from_blueprint(_trader_blueprint, self, _engine, _quote)

# ---------------------------------------------------------------- ACTIONS

@external
def create_traders(orders: DynArray[Order, MAX_BATCH]) -> address:
    """
    @notice Create one funded trader per order; returns the first trader's address.
    """
    assert msg.sender == self.owner, "not owner"
    impl: address = self.implementation
    token: address = self.quote
    first: address = empty(address)
    for o: Order in orders:
        trader: address = create_minimal_proxy_to(impl)
        if first == empty(address):
            first = trader
        assert extcall IERC20(token).transfer(trader, o.margin, default_return_value=True), "transfer failed"
        extcall BenchTrader(trader).open(o.margin, o.market_id, o.size)
    total: uint256 = self.trader_count + len(orders)
    self.trader_count = total
    log TradersCreated(first=first, count=len(orders), total=total)
    return first
