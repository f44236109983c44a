# pragma version 0.4.3
# pragma nonreentrancy on
"""
@title BenchTrader
@notice Bench only: the implementation behind the minimal proxies that TraderFactory creates,
        one proxy per engine account. In one call a proxy approves the engine, deposits the
        quote tokens the factory sent it and opens one perp position, so the engine sees an
        ordinary account (msg.sender = the proxy) with ordinary Deposit and Trade events.
@dev Glossary (units in brackets):
     margin   quote tokens deposited [quote native units]
     size     perp position opened [base units WAD, signed: long > 0, short < 0]
     Never deploy this outside a local chain: a proxy holds no funds between calls and has
     no way to withdraw from the engine.
"""

from ethereum.ercs import IERC20

# ---------------------------------------------------------------- INTERFACES

interface Engine:
    def deposit(token: address, amount: uint256): nonpayable
    def trade(market_id: uint256, size_delta: int256, limit_price: uint256): nonpayable

# ---------------------------------------------------------------- CONSTANTS

# Immutables live in this contract's code, so every proxy that delegates here reads them.
FACTORY: public(immutable(address))     # the only caller of open()
ENGINE: public(immutable(address))      # the MarginEngine
QUOTE: public(immutable(address))       # the engine's quote token

# ---------------------------------------------------------------- CONSTRUCTOR

@deploy
def __init__(_factory: address, _engine: address, _quote: address):
    FACTORY = _factory
    ENGINE = _engine
    QUOTE = _quote

# ---------------------------------------------------------------- ACTIONS

@external
def open(margin: uint256, market_id: uint256, size: int256):
    """
    @notice Deposit `margin` quote native units (already sent to this proxy) into the engine
            and open `size` in `market_id` at the oracle price, whatever it is.
    """
    assert msg.sender == FACTORY, "not factory"
    assert extcall IERC20(QUOTE).approve(ENGINE, margin, default_return_value=True), "approve failed"
    extcall Engine(ENGINE).deposit(QUOTE, margin)
    if size != 0:
        # No slippage bound: the factory's caller knows the price it sized the position at.
        limit: uint256 = max_value(uint256) if size > 0 else 0
        extcall Engine(ENGINE).trade(market_id, size, limit)
