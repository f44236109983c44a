# pragma version 0.4.3
"""
@title LoadedAccounts (test only)
@notice Creates many engine accounts cheaply for gas tests: `spawn` deploys minimal proxies of
        this contract, sends each its collateral and calls its `load`, which (running as the
        proxy) deposits the collateral and opens a position in each of two markets. Every
        account is a distinct address, so reading it touches cold storage as a real one does.
"""

interface IERC20:
    def transfer(to: address, amount: uint256) -> bool: nonpayable
    def approve(spender: address, amount: uint256) -> bool: nonpayable

interface Engine:
    def deposit(token: address, amount: uint256): nonpayable
    def trade(market_id: uint256, size_delta: int256, limit_price: uint256): nonpayable

interface Loaded:
    def load(engine: address, tokens: address[2], amounts: uint256[2], deltas: int256[2]): nonpayable

spawned: public(DynArray[address, 1024])

@external
def load(engine: address, tokens: address[2], amounts: uint256[2], deltas: int256[2]):
    for i: uint256 in range(2):
        extcall IERC20(tokens[i]).approve(engine, amounts[i])
        extcall Engine(engine).deposit(tokens[i], amounts[i])
    for m: uint256 in range(2):
        limit: uint256 = max_value(uint256)
        if deltas[m] < 0:
            limit = 0
        extcall Engine(engine).trade(m, deltas[m], limit)

@external
def spawn(n: uint256, engine: address, tokens: address[2], amounts: uint256[2], deltas: int256[2]):
    """
    @notice n new accounts, each holding amounts[i] of tokens[i] (sent from this contract's own
            balance) and positions deltas[0] in market 0 and deltas[1] in market 1.
    """
    for k: uint256 in range(n, bound=256):
        p: address = create_minimal_proxy_to(self)
        for i: uint256 in range(2):
            extcall IERC20(tokens[i]).transfer(p, amounts[i])
        extcall Loaded(p).load(engine, tokens, amounts, deltas)
        self.spawned.append(p)
