"""The protocol's state, field for field as the engine stores it.

Addresses are checksummed strings. Accounts keep only non-zero positions and collateral
balances, exactly the entries the engine's ``active_markets`` / ``held_collaterals`` bitmasks
mark; the house is the engine's own account (``ProtocolState.house``, address = engine).
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field

from .wad import WAD, BaseWad, Native, Wad


@dataclass(slots=True)
class Market:
    id: int
    feed: str                  # feed address
    price_scale: int           # 10**(18 - feed decimals)
    imf: Wad
    mmf: Wad
    liquidation_fee: Wad
    taker_fee: Wad
    oi_cap: BaseWad = BaseWad(0)  # 0 = none; caps the house's |size|
    name: str = ""
    max_price_age: int | None = None  # seconds; None: params.max_price_age (the engine's listing default)


@dataclass(slots=True)
class Collateral:
    token: str
    feed: str
    price_scale: int           # 10**(18 - feed decimals)
    decimals: int
    unit: int                  # 10**decimals
    init_weight: Wad
    maint_weight: Wad
    liquidation_discount: Wad
    deposit_cap: Native = Native(0)  # 0 = none
    index: int = 0
    symbol: str = ""
    max_price_age: int | None = None  # seconds; None: params.max_price_age (the engine's listing default)


@dataclass(slots=True)
class Feed:
    address: str
    decimals: int
    answer: int                # feed units
    updated_at: int            # seconds
    round_id: int = 0
    min_answer: int = 1
    max_answer: int = 2**255 - 1

    @property
    def price_scale(self) -> int:
        return 10 ** (18 - self.decimals)


@dataclass(slots=True)
class Params:
    quote_token: str
    quote_scale: int           # 10**(18 - quote decimals)
    keeper_share: Wad
    max_price_age: int         # seconds; the age the engine gives markets and collaterals it lists
    dust_notional: Wad
    paused: bool = False
    owner: str = ""


@dataclass(slots=True)
class Position:
    size: BaseWad = BaseWad(0)
    quote: Wad = Wad(0)


@dataclass(slots=True)
class Account:
    address: str
    cash: Wad = Wad(0)
    collateral: dict[str, int] = field(default_factory=dict)       # token -> native units (> 0 only)
    positions: dict[int, Position] = field(default_factory=dict)   # market id -> position (size != 0 only)

    @property
    def active_markets(self) -> int:
        mask = 0
        for m in self.positions:
            mask |= 1 << m
        return mask

    def is_empty(self) -> bool:
        return self.cash == 0 and not self.collateral and not self.positions


@dataclass
class ProtocolState:
    engine: str                                  # engine address = the house's address
    params: Params
    markets: list[Market]                        # by market id
    collaterals: list[Collateral]                # by collateral index
    feeds: dict[str, Feed]                       # feed address -> feed
    accounts: dict[str, Account] = field(default_factory=dict)   # traders (not the house)
    house: Account | None = None
    insurance_fund: Wad = Wad(0)
    total_collateral: dict[str, int] = field(default_factory=dict)  # token -> native units
    timestamp: int = 0                           # seconds; the block time actions are checked at
    block: int = 0                               # the block this state reflects

    def __post_init__(self) -> None:
        if self.house is None:
            self.house = Account(self.engine)

    # lookups ---------------------------------------------------------------
    def account(self, address: str) -> Account:
        """The account at ``address`` (created empty on first use); the engine's is the house."""
        if address == self.engine and self.house is not None:
            return self.house
        acc = self.accounts.get(address)
        if acc is None:
            acc = self.accounts[address] = Account(address)
        return acc

    def collateral_by_token(self, token: str) -> Collateral | None:
        for c in self.collaterals:
            if c.token == token:
                return c
        return None

    def held_mask(self, account: Account) -> int:
        mask = 0
        for token in account.collateral:
            c = self.collateral_by_token(token)
            if c is not None:
                mask |= 1 << c.index
        return mask

    def copy(self) -> "ProtocolState":
        """A deep copy, for what-if scenarios that must not touch the original."""
        return copy.deepcopy(self)


__all__ = ["WAD", "Market", "Collateral", "Feed", "Params", "Position", "Account", "ProtocolState"]
