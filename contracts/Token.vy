# pragma version 0.4.3
# pragma nonreentrancy on
"""
@title Token
@notice An ERC-20 for local chains: any decimals, the owner mints.
@dev Glossary:
     amount - token native units (10**decimals per whole token)
"""

from ethereum.ercs import IERC20

implements: IERC20

# ---------------------------------------------------------------- EVENTS

event Transfer:
    sender: indexed(address)
    receiver: indexed(address)
    value: uint256

event Approval:
    owner: indexed(address)
    spender: indexed(address)
    value: uint256

event OwnershipTransferred:
    previous: indexed(address)
    owner: indexed(address)

# ---------------------------------------------------------------- STORAGE

name: public(String[32])
symbol: public(String[16])
decimals: public(uint8)                                     # native units per token = 10**decimals
totalSupply: public(uint256)                                # native units
balanceOf: public(HashMap[address, uint256])                # native units
allowance: public(HashMap[address, HashMap[address, uint256]])  # native units
owner: public(address)                                      # may mint

# ---------------------------------------------------------------- CONSTRUCTOR

@deploy
def __init__(_name: String[32], _symbol: String[16], _decimals: uint8):
    assert _decimals <= 18, "bad decimals"
    self.name = _name
    self.symbol = _symbol
    self.decimals = _decimals
    self.owner = msg.sender
    log OwnershipTransferred(previous=empty(address), owner=msg.sender)

# ---------------------------------------------------------------- ACTIONS

@external
def transfer(receiver: address, amount: uint256) -> bool:
    self._transfer(msg.sender, receiver, amount)
    return True

@external
def transferFrom(sender: address, receiver: address, amount: uint256) -> bool:
    allowed: uint256 = self.allowance[sender][msg.sender]
    if allowed != max_value(uint256):
        assert allowed >= amount, "insufficient allowance"
        self.allowance[sender][msg.sender] = allowed - amount
    self._transfer(sender, receiver, amount)
    return True

@external
def approve(spender: address, amount: uint256) -> bool:
    self.allowance[msg.sender][spender] = amount
    log Approval(owner=msg.sender, spender=spender, value=amount)
    return True

@internal
def _transfer(sender: address, receiver: address, amount: uint256):
    assert receiver != empty(address), "zero address"
    balance: uint256 = self.balanceOf[sender]
    assert balance >= amount, "insufficient balance"
    self.balanceOf[sender] = balance - amount
    self.balanceOf[receiver] += amount
    log Transfer(sender=sender, receiver=receiver, value=amount)

# ---------------------------------------------------------------- ADMIN

@external
def mint(to: address, amount: uint256):
    assert msg.sender == self.owner, "not owner"
    assert to != empty(address), "zero address"
    self.totalSupply += amount
    self.balanceOf[to] += amount
    log Transfer(sender=empty(address), receiver=to, value=amount)

@external
def transfer_ownership(new_owner: address):
    assert msg.sender == self.owner, "not owner"
    assert new_owner != empty(address), "zero address"
    log OwnershipTransferred(previous=self.owner, owner=new_owner)
    self.owner = new_owner
