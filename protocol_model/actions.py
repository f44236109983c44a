"""Every state transition of the engine (SPEC section 6), applied to a :class:`ProtocolState` in place.

Each function mirrors one external function of ``contracts/MarginEngine.vy`` (or ``PriceFeed.vy``):
the same asserts in the same order with the same reason strings, raised as :class:`Revert`, then
the same arithmetic. A reverting call touches nothing: every function validates and computes first
and mutates only once nothing can fail any more.

Block time: strict price reads happen at ``state.timestamp``; set it to the timestamp of the block
the mirrored transaction is mined in before calling an action.

Token balances live outside the engine state. The engine calls the ERC-20 after its own checks,
so a token failure (``"insufficient allowance"`` / ``"insufficient balance"`` from ``Token.vy``)
can only be the reason of a call that passes every engine check. Pass a :class:`Wallets` to have
the model check and move tokens exactly as ``Token.vy`` does; without one (``wallets=None``) the
model assumes funded, approved callers and a solvent engine. Either way the token movements are in
the results: deposit/withdraw move ``amount``, a liquidation pays ``keeper_reward`` (quote native
units) to the caller, a collateral liquidation takes ``repay`` quote units from the caller and
gives it ``seized`` collateral units.

Integer overflow: the engine reverts (reason ``""``) on int256/uint256 overflow and on division by
zero; the model checks the same operations at the same points (``checked*`` from
:mod:`protocol_model.health`), so it raises ``Revert("")`` where the engine would. Within the
engine's bounds (collateral balances are held below ``MAX_TOTAL_COLLATERAL`` whole tokens by the
deposit cap) this only happens with an astronomical cash or quote. Arguments outside
their ABI type (a negative ``uint256``) cannot be encoded into a transaction at all and raise
:class:`ConfigError`.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import NamedTuple

from .errors import ConfigError, Revert
from .health import (
    LIQUIDATION, PREVIEW, PRICE_BAD, PRICE_OK, STRICT, Health, checked, checked_div_up, checked_mul_down, checked_mul_up,
    health, price_age, read_feed, term_price,
)
from .state import Account, Collateral, Position, ProtocolState
from .wad import (
    INT256_MAX,
    INT256_MIN,
    MAX_AMOUNT,
    MAX_ORDERS,
    MAX_PRICE,
    MAX_PRICE_AGE,
    MAX_SIZE,
    MAX_TOTAL_COLLATERAL,
    UINT256_MAX,
    WAD,
    BaseWad,
    Native,
    Wad,
)

log = logging.getLogger(__name__)

__all__ = [
    "SKIP_REASONS",
    "BadDebtSettlement",
    "BatchResult",
    "LiquidationOrder",
    "OrderOutcome",
    "OrderPreview",
    "Skip",
    "CollateralLiquidationPlan",
    "DepositResult",
    "LiquidationPlan",
    "TradeResult",
    "Wallets",
    "WithdrawResult",
    "auto_settlement",
    "deposit",
    "liquidate",
    "liquidate_collateral",
    "liquidate_many",
    "pause",
    "preview_liquidate",
    "preview_liquidate_collateral",
    "preview_liquidate_many",
    "seed_house",
    "seed_insurance",
    "set_answer",
    "set_collateral_params",
    "set_collateral_price_age",
    "set_market_params",
    "set_market_price_age",
    "set_params",
    "settle_bad_debt",
    "trade",
    "unpause",
    "withdraw",
]


# ---------------------------------------------------------------- results (event / struct mirrors)


class DepositResult(NamedTuple):
    """The ``Deposit`` event's data: ``collateral`` is 0 for the quote token."""

    amount: Native
    cash: Wad
    collateral: Native


class WithdrawResult(NamedTuple):
    """The ``Withdraw`` event's data."""

    amount: Native
    cash: Wad
    collateral: Native


class TradeResult(NamedTuple):
    """The ``Trade`` event's data (``size``/``quote``/``cash`` are the trader's results)."""

    size_delta: BaseWad
    price: Wad
    quote_delta: Wad
    fee: Wad
    size: BaseWad
    quote: Wad
    cash: Wad
    house_size: BaseWad
    house_quote: Wad
    house_cash: Wad


class LiquidationPlan(NamedTuple):
    """The engine's ``LiquidationPlan`` struct, field for field, in order (the ``Liquidation`` event's
    values; ``cash``, ``insurance_fund`` and ``house_cash`` before any automatic settlement)."""

    size_delta: BaseWad
    price: Wad
    quote_delta: Wad
    penalty: Wad              # the full penalty
    charged: Wad              # what the account's cash pays: min(penalty, max(equity after the close, 0))
    keeper_reward: Native     # quote native units paid to the caller: keeper_share of the full penalty
    insurance_fund: Wad
    house_size: BaseWad
    house_quote: Wad
    house_cash: Wad
    size: BaseWad
    quote: Wad
    cash: Wad
    equity: Wad
    init_health: Wad
    maint_health: Wad
    bad_debt: Wad             # settled automatically after the close (0: none)


class CollateralLiquidationPlan(NamedTuple):
    """The engine's ``CollateralLiquidationPlan`` struct, field for field, in order."""

    repay: Native             # quote native units paid by the caller
    seized: Native            # collateral native units sent to the caller
    price: Wad                # undiscounted
    subsidy: Wad              # credited to the account: the discount its equity cannot bear
    cash: Wad
    collateral: Native
    insurance_fund: Wad
    house_cash: Wad
    equity: Wad
    bad_debt: Wad             # settled automatically afterwards (0: none)


class BadDebtSettlement(NamedTuple):
    """The ``BadDebtSettled`` event's data (USD WAD)."""

    deficit: Wad
    covered: Wad
    socialised: Wad
    house_cash: Wad
    insurance_fund: Wad


ZERO_ADDRESS = "0x" + "00" * 20

# liquidate_many's outcome codes (the engine's EXECUTED / SKIP_* constants) and the reasons the
# single actions revert with for them.
EXECUTED = 0
SKIP_REASONS: dict[int, str] = {
    1: "healthy",
    2: "no position",
    3: "no debt",
    4: "no collateral",
    5: "bad price",
    6: "stale price",
}
_SKIP_CODES = {reason: code for code, reason in SKIP_REASONS.items()}


class Skip(Revert):
    """A reason the single liquidations revert with and ``liquidate_many`` skips an order for:
    it depends on the account's state or on the price of the feed closed or seized."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.code = _SKIP_CODES[reason]


class LiquidationOrder(NamedTuple):
    """The engine's ``LiquidationOrder`` struct: a position order (``token`` empty: close up to
    ``amount`` base units WAD in ``market``) or a collateral order (``market`` 0: repay up to
    ``amount`` quote native units for ``token``)."""

    account: str
    market: int = 0
    token: str = ZERO_ADDRESS
    amount: int = 0

    @property
    def is_collateral(self) -> bool:
        return int(self.token, 16) != 0

    @classmethod
    def position(cls, account: str, market: int, max_size: int) -> "LiquidationOrder":
        return cls(account, market, ZERO_ADDRESS, max_size)

    @classmethod
    def collateral(cls, account: str, token: str, max_repay: int) -> "LiquidationOrder":
        return cls(account, 0, token, max_repay)


class OrderOutcome(NamedTuple):
    """What one order of :func:`liquidate_many` did: ``status`` 0 (executed, ``plan`` set) or a
    skip code with its ``reason``; ``settlement`` when it left bad debt that was settled."""

    status: int
    reason: str
    plan: "LiquidationPlan | CollateralLiquidationPlan | None" = None
    settlement: "BadDebtSettlement | None" = None

    @property
    def executed(self) -> bool:
        return self.status == EXECUTED


class BatchResult(NamedTuple):
    """:func:`liquidate_many`'s result: the count it returns, each order's outcome, and the two
    quote transfers (rewards paid to the caller, repayments pulled from it, native units)."""

    executed: int
    outcomes: list
    rewards: Native
    repays: Native


class OrderPreview(NamedTuple):
    """The engine's ``OrderPreview`` struct (``preview_liquidate_many``)."""

    status: int
    keeper_reward: Native
    repay: Native
    seized: Native
    size_delta: BaseWad
    bad_debt: Wad


# ---------------------------------------------------------------- wallets (Token.vy)


@dataclass(frozen=True, slots=True)
class _Transfer:
    token: str
    sender: str          # whose balance pays
    receiver: str
    amount: int
    spender: str | None  # None: transfer() by ``sender``; else transferFrom() called by ``spender``


@dataclass
class Wallets:
    """ERC-20 balances and allowances, checked and moved exactly as ``contracts/Token.vy`` does.

    Only what is recorded here exists: a missing balance or allowance is 0. An allowance of
    ``2**256 - 1`` is infinite (``transferFrom`` leaves it as it is).
    """

    balances: dict[str, dict[str, int]] = field(default_factory=dict)                 # token -> holder -> native
    allowances: dict[str, dict[tuple[str, str], int]] = field(default_factory=dict)   # token -> (owner, spender) -> native

    def balance(self, token: str, holder: str) -> int:
        return self.balances.get(token, {}).get(holder, 0)

    def allowance(self, token: str, owner: str, spender: str) -> int:
        return self.allowances.get(token, {}).get((owner, spender), 0)

    def mint(self, token: str, to: str, amount: int) -> None:
        book = self.balances.setdefault(token, {})
        book[to] = book.get(to, 0) + amount

    def approve(self, token: str, owner: str, spender: str, amount: int) -> None:
        self.allowances.setdefault(token, {})[(owner, spender)] = amount

    def transfer(self, token: str, sender: str, receiver: str, amount: int) -> None:
        """``Token.transfer`` by ``sender``; raises :class:`Revert` like the token."""
        self.execute([_Transfer(token, sender, receiver, amount, None)])

    def execute(self, transfers: list[_Transfer]) -> None:
        """Run the transfers in order, all or nothing, with ``Token.vy``'s checks and reasons."""
        balances: dict[tuple[str, str], int] = {}
        allowances: dict[tuple[str, str, str], int] = {}
        for t in transfers:
            if t.spender is not None:
                key = (t.token, t.sender, t.spender)
                allowed = allowances.get(key, self.allowance(t.token, t.sender, t.spender))
                if allowed != UINT256_MAX:
                    if allowed < t.amount:
                        raise Revert("insufficient allowance")
                    allowances[key] = allowed - t.amount
            if not t.receiver or int(t.receiver, 16) == 0:
                raise Revert("zero address")
            src = (t.token, t.sender)
            bal = balances.get(src, self.balance(t.token, t.sender))
            if bal < t.amount:
                raise Revert("insufficient balance")
            balances[src] = bal - t.amount
            dst = (t.token, t.receiver)
            balances[dst] = balances.get(dst, self.balance(t.token, t.receiver)) + t.amount
        for (token, holder), amount in balances.items():
            self.balances.setdefault(token, {})[holder] = amount
        for (token, owner, spender), amount in allowances.items():
            self.allowances.setdefault(token, {})[(owner, spender)] = amount


def _move(wallets: Wallets | None, transfers: list[_Transfer]) -> None:
    if wallets is not None and transfers:
        wallets.execute(transfers)


# ---------------------------------------------------------------- helpers


def _uint256(name: str, value: int) -> int:
    if not isinstance(value, int) or not 0 <= value <= UINT256_MAX:
        raise ConfigError(f"{name} must be a uint256, got {value!r}")
    return value


def _int256(name: str, value: int) -> int:
    if not isinstance(value, int) or not INT256_MIN <= value <= INT256_MAX:
        raise ConfigError(f"{name} must be an int256, got {value!r}")
    return value


def _peek(state: ProtocolState, address: str) -> Account:
    """The account at ``address`` without creating it (an unknown address reads as empty)."""
    if address == state.engine and state.house is not None:
        return state.house
    acc = state.accounts.get(address)
    return acc if acc is not None else Account(address)


def _house(state: ProtocolState) -> Account:
    if state.house is None:
        state.house = Account(state.engine)
    return state.house


def _collateral(state: ProtocolState, token: str) -> Collateral | None:
    """The listed collateral ``token`` (``collateral_config[token].feed != empty(address)``)."""
    return state.collateral_by_token(token)


def _checked_u256(x: int) -> int:
    if x > UINT256_MAX or x < 0:
        raise Revert("")
    return x


def _settle_position(size: int, quote: int, cash: int) -> tuple[int, int]:
    """``_write_position``'s arithmetic: (stored quote, cash); a closed position's quote moves to cash."""
    if size == 0:
        return 0, checked(cash + quote)
    return quote, cash


def _store_position(acc: Account, market_id: int, size: int, quote: int, cash: int) -> Position:
    """``_write_position``'s storage writes, with the quote and cash from :func:`_settle_position`."""
    pos = Position(BaseWad(size), Wad(quote))
    if size == 0:
        acc.positions.pop(market_id, None)
    else:
        acc.positions[market_id] = pos
    acc.cash = Wad(cash)
    return pos


def _with(acc: Account, cash: int, positions: dict[int, Position] | None = None,
          collateral: dict[str, int] | None = None) -> Account:
    """A scratch copy of ``acc`` with some fields replaced, for a health check before mutating."""
    return Account(
        acc.address,
        Wad(cash),
        acc.collateral if collateral is None else collateral,
        acc.positions if positions is None else positions,
    )


def _has_positions(acc: Account) -> bool:
    return any(p.size != 0 for p in acc.positions.values())


def _has_collateral(state: ProtocolState, acc: Account) -> bool:
    return any(acc.collateral.get(c.token, 0) > 0 for c in state.collaterals)


# ---------------------------------------------------------------- account actions


def _token_amount(amount: int) -> None:
    """The engine's checks of a token amount, in its order: not zero, at most ``MAX_AMOUNT``."""
    if amount == 0:
        raise Revert("zero amount")
    if amount > MAX_AMOUNT:
        raise Revert("amount too large")


def deposit(state: ProtocolState, sender: str, token: str, amount: int, wallets: Wallets | None = None) -> DepositResult:
    """``deposit(token, amount)`` sent by ``sender``: quote credits cash, a collateral its balance."""
    _uint256("amount", amount)
    _token_amount(amount)
    acc = _peek(state, sender)
    c = acc.cash
    balance = 0
    total = 0
    if token == state.params.quote_token:
        c = checked(c + amount * state.params.quote_scale)
    else:
        col = _collateral(state, token)
        if col is None:
            raise Revert("not listed")
        total = _checked_u256(state.total_collateral.get(token, 0) + amount)
        # The hard bound keeps every balance's health terms inside int256; the owner's cap below it.
        if not (total <= MAX_TOTAL_COLLATERAL * col.unit and (col.deposit_cap == 0 or total <= col.deposit_cap)):
            raise Revert("deposit cap")
        balance = _checked_u256(acc.collateral.get(token, 0) + amount)
    _move(wallets, [_Transfer(token, sender, state.engine, amount, state.engine)])

    acc = state.account(sender)
    acc.cash = Wad(c)
    if token != state.params.quote_token:
        state.total_collateral[token] = total
        acc.collateral[token] = balance
    return DepositResult(Native(amount), Wad(c), Native(balance))


def withdraw(state: ProtocolState, sender: str, token: str, amount: int, wallets: Wallets | None = None) -> WithdrawResult:
    """``withdraw(token, amount)``: no borrowing of quote; afterwards ``init_health >= 0`` (strict)."""
    _uint256("amount", amount)
    if state.params.paused:
        raise Revert("paused")
    _token_amount(amount)
    acc = _peek(state, sender)
    c = acc.cash
    balance = 0
    is_quote = token == state.params.quote_token
    collateral = acc.collateral
    if is_quote:
        c = checked(c - amount * state.params.quote_scale)
        if c < 0:
            raise Revert("insufficient cash")
    else:
        if _collateral(state, token) is None:
            raise Revert("not listed")
        balance = acc.collateral.get(token, 0)
        if balance < amount:
            raise Revert("insufficient collateral")
        balance -= amount
        collateral = dict(acc.collateral)
        if balance == 0:
            collateral.pop(token, None)
        else:
            collateral[token] = balance
    if health(state, _with(acc, c, collateral=collateral), strict=STRICT).init_health < 0:
        raise Revert("insufficient margin")
    _move(wallets, [_Transfer(token, state.engine, sender, amount, None)])

    acc = state.account(sender)
    acc.cash = Wad(c)
    if not is_quote:
        acc.collateral = collateral
        state.total_collateral[token] = state.total_collateral.get(token, 0) - amount
    return WithdrawResult(Native(amount), Wad(c), Native(balance))


def trade(state: ProtocolState, sender: str, market_id: int, size_delta: int, limit_price: int) -> TradeResult:
    """``trade(market, size_delta, limit_price)`` against the house at the oracle price."""
    _uint256("market_id", market_id)
    _int256("size_delta", size_delta)
    _uint256("limit_price", limit_price)
    if state.params.paused:
        raise Revert("paused")
    if market_id >= len(state.markets):
        raise Revert("not listed")
    if size_delta == 0:
        raise Revert("zero amount")
    if not -MAX_SIZE <= size_delta <= MAX_SIZE:
        raise Revert("size too large")
    market = state.markets[market_id]
    p = term_price(state, market, STRICT)[0]
    if size_delta > 0:
        if p > limit_price:
            raise Revert("price limit")
    elif p < limit_price:
        raise Revert("price limit")

    # A buy pays mul_up, a sell receives mul_down: both are mul_down(-size_delta, P).
    quote_delta = checked_mul_down(-size_delta, p)
    fee = checked_mul_up(checked_mul_up(abs(size_delta), p), market.taker_fee)

    acc = _peek(state, sender)
    old = acc.positions.get(market_id, Position())
    new_size = checked(old.size + size_delta)
    if not -MAX_SIZE <= new_size <= MAX_SIZE:
        raise Revert("size too large")
    new_quote, new_cash = _settle_position(new_size, checked(old.quote + quote_delta), checked(acc.cash - fee))

    # The house books the exact opposite and receives the fee.
    house = _house(state)
    house_old = house.positions.get(market_id, Position())
    house_size = checked(house_old.size - size_delta)
    if market.oi_cap != 0 and abs(house_size) > abs(house_old.size) and abs(house_size) > market.oi_cap:
        raise Revert("oi cap")
    house_quote, house_cash = _settle_position(
        house_size, checked(house_old.quote - quote_delta), checked(house.cash + fee)
    )

    increases_risk = (
        abs(new_size) > abs(old.size) or (old.size > 0 and new_size < 0) or (old.size < 0 and new_size > 0)
    )
    if increases_risk:
        positions = dict(acc.positions)
        if new_size == 0:
            positions.pop(market_id, None)
        else:
            positions[market_id] = Position(BaseWad(new_size), Wad(new_quote))
        if health(state, _with(acc, new_cash, positions=positions), strict=STRICT).init_health < 0:
            raise Revert("insufficient margin")

    acc = state.account(sender)
    pos = _store_position(acc, market_id, new_size, new_quote, new_cash)
    _store_position(house, market_id, house_size, house_quote, house_cash)
    return TradeResult(
        BaseWad(size_delta), Wad(p), Wad(quote_delta), Wad(fee), pos.size, pos.quote, acc.cash,
        BaseWad(house_size), Wad(house_quote), Wad(house_cash),
    )


# ---------------------------------------------------------------- liquidations


def _cover(owed: int, paid: int, fund: int, house_cash: int) -> tuple[int, int]:
    """The engine's ``_cover``: the insurance fund and house cash after the protocol receives
    ``paid`` and owes ``owed`` (USD WAD): a surplus feeds the fund; a shortfall is paid by the fund,
    then by the house."""
    if paid >= owed:
        return _checked_u256(fund + (paid - owed)), house_cash
    short = owed - paid
    from_fund = min(short, fund)
    return fund - from_fund, checked(house_cash - checked(short - from_fund))


def _settlement(deficit: int, fund: int, house_cash: int) -> BadDebtSettlement:
    """The engine's ``_settle`` arithmetic: the fund covers first, the house's cash the rest."""
    covered = min(deficit, fund)
    socialised = deficit - covered
    return BadDebtSettlement(Wad(deficit), Wad(covered), Wad(socialised),
                             Wad(checked(house_cash - checked(socialised))), Wad(fund - covered))


def auto_settlement(plan: LiquidationPlan | CollateralLiquidationPlan) -> BadDebtSettlement | None:
    """The ``BadDebtSettled`` that followed a liquidation which left bad debt (``plan.bad_debt``)."""
    return _settlement(plan.bad_debt, plan.insurance_fund, plan.house_cash) if plan.bad_debt else None


def _apply_settlement(state: ProtocolState, account: str, s: BadDebtSettlement) -> None:
    _house(state).cash = s.house_cash
    state.insurance_fund = s.insurance_fund
    state.account(account).cash = Wad(0)


def _price_skip(status: int) -> Skip:
    return Skip("bad price" if status == PRICE_BAD else "stale price")


def _liquidation_plan(state: ProtocolState, account: str, market_id: int, max_size: int, mode: int) -> LiquidationPlan:
    """``_liquidation_plan``: assert for assert, rounding for rounding (``mode``: LIQUIDATION or
    PREVIEW). The reasons ``liquidate_many`` skips for are raised as :class:`Skip`."""
    _uint256("market_id", market_id)
    _uint256("max_size", max_size)
    if market_id >= len(state.markets):
        raise Revert("not listed")
    if max_size == 0:
        raise Revert("zero amount")
    if account == state.engine:
        raise Revert("house")
    market = state.markets[market_id]
    p, status = read_feed(state.feeds[market.feed], market.price_scale, state.timestamp, price_age(state, market), mode)
    acc = _peek(state, account)
    h: Health = health(state, acc, mode)
    if h.maint_health >= 0:
        raise Skip("healthy")
    old = acc.positions.get(market_id, Position())
    if old.size == 0:
        raise Skip("no position")
    if status != PRICE_OK:
        raise _price_skip(status)
    imf, mmf, fee = market.imf, market.mmf, market.liquidation_fee

    # Close what restores init_health to zero; a dust leftover is closed whole.
    s = checked(abs(old.size))
    need = checked_div_up(checked_div_up(checked(-h.init_health), imf - fee), p)   # p > 0: usable
    q = min(s, need)
    if checked_mul_up(s - q, p) < state.params.dust_notional:
        q = s
    if max_size < q:
        q = max_size

    size_delta = -q if old.size > 0 else q
    quote_delta = checked_mul_down(-size_delta, p)
    new_size = checked(old.size + size_delta)
    new_quote = checked(old.quote + quote_delta)

    # Only this market's terms change; the rest of the account is as health() saw it.
    old_upnl = checked(checked_mul_down(old.size, p) + old.quote)
    new_upnl = checked(checked_mul_down(new_size, p) + new_quote)
    old_notional = checked_mul_up(s, p)
    new_notional = checked_mul_up(abs(new_size), p)
    equity = checked(checked(h.equity - old_upnl) + new_upnl)

    # The caller earns keeper_share of the full penalty; the account pays what its equity allows.
    penalty = checked_mul_up(checked_mul_up(q, p), fee)
    charged = min(penalty, max(equity, 0))
    qs = state.params.quote_scale
    keeper_reward = checked_mul_down(penalty, state.params.keeper_share) // qs   # penalty >= 0
    cash = checked(acc.cash - charged)
    if new_size == 0:
        cash = checked(cash + new_quote)
        new_quote = 0
    equity = checked(equity - charged)
    init_health = _sum_checked(h.init_health, -old_upnl, new_upnl, -charged,
                               checked_mul_up(old_notional, imf), -checked_mul_up(new_notional, imf))
    maint_health = _sum_checked(h.maint_health, -old_upnl, new_upnl, -charged,
                                checked_mul_up(old_notional, mmf), -checked_mul_up(new_notional, mmf))

    # The house takes the other side; the fund (then the house) pays what the account did not.
    house = _peek(state, state.engine)
    house_old = house.positions.get(market_id, Position())
    house_size = checked(house_old.size - size_delta)
    house_quote, house_cash = _settle_position(house_size, checked(house_old.quote - quote_delta), house.cash)
    fund, house_cash = _cover(_checked_u256(keeper_reward * qs), charged, state.insurance_fund, house_cash)

    # Automatic settlement: nothing left to liquidate and the cash negative.
    bad_debt = 0
    if new_size == 0 and cash < 0 and not _has_collateral(state, acc):
        if not any(pos.size != 0 for m, pos in acc.positions.items() if m != market_id):
            bad_debt = -cash
    return LiquidationPlan(
        BaseWad(size_delta), Wad(p), Wad(quote_delta), Wad(penalty), Wad(charged), Native(keeper_reward),
        Wad(fund), BaseWad(house_size), Wad(house_quote), Wad(house_cash),
        BaseWad(new_size), Wad(new_quote), Wad(cash), Wad(equity), Wad(init_health), Wad(maint_health), Wad(bad_debt),
    )


def _sum_checked(first: int, *terms: int) -> int:
    """A left-to-right int256 sum, each partial sum checked like the engine's ``+`` / ``-``."""
    total = first
    for t in terms:
        total = checked(total + t)
    return total


def _apply_liquidation(state: ProtocolState, account: str, market_id: int,
                       plan: LiquidationPlan) -> BadDebtSettlement | None:
    """``_execute_liquidation``'s writes (after every check); returns the automatic settlement."""
    settlement = _settlement(plan.bad_debt, plan.insurance_fund, plan.house_cash) if plan.bad_debt else None
    _store_position(state.account(account), market_id, plan.size, plan.quote, plan.cash)
    _store_position(_house(state), market_id, plan.house_size, plan.house_quote, plan.house_cash)
    state.insurance_fund = plan.insurance_fund
    if settlement is not None:
        _apply_settlement(state, account, settlement)
    return settlement


def preview_liquidate(state: ProtocolState, account: str, market_id: int, max_size: int) -> LiquidationPlan:
    """The ``preview_liquidate`` view: the plan at the latest prices, ages not checked (PREVIEW).

    It raises ``liquidate``'s reasons in ``liquidate``'s order, a bad price of the closed feed
    included; a bad price elsewhere counts against the account as in ``liquidate``.
    """
    return _liquidation_plan(state, account, market_id, max_size, PREVIEW)


def liquidate(state: ProtocolState, caller: str, account: str, market_id: int, max_size: int,
              wallets: Wallets | None = None) -> LiquidationPlan:
    """``liquidate(account, market, max_size)`` sent by ``caller``; the caller earns ``keeper_reward``.

    Where the plan has ``bad_debt``, the account's cash was settled to 0 after the close
    (``BadDebtSettled``); :func:`liquidate_many` returns that settlement with each outcome.
    """
    plan = _liquidation_plan(state, account, market_id, max_size, LIQUIDATION)
    if plan.bad_debt:
        _settlement(plan.bad_debt, plan.insurance_fund, plan.house_cash)   # its overflow checks
    if plan.keeper_reward > 0:
        _move(wallets, [_Transfer(state.params.quote_token, state.engine, caller, plan.keeper_reward, None)])
    _apply_liquidation(state, account, market_id, plan)
    return plan


def _collateral_plan(state: ProtocolState, account: str, token: str, max_repay: int, mode: int) -> CollateralLiquidationPlan:
    """``_collateral_plan``: assert for assert, rounding for rounding (``mode``: LIQUIDATION or PREVIEW)."""
    _uint256("max_repay", max_repay)
    col = _collateral(state, token)
    if col is None:
        raise Revert("not listed")
    if max_repay == 0:
        raise Revert("zero amount")
    if account == state.engine:
        raise Revert("house")
    acc = _peek(state, account)
    h = health(state, acc, mode)
    if h.maint_health >= 0:
        raise Skip("healthy")
    c = acc.cash
    if c >= 0:
        raise Skip("no debt")
    balance = acc.collateral.get(token, 0)
    if balance == 0:
        raise Skip("no collateral")
    p, status = read_feed(state.feeds[col.feed], col.price_scale, state.timestamp, price_age(state, col), mode)
    if status != PRICE_OK:
        raise _price_skip(status)

    # The caller's price: P * (1 - discount), rounded up so the account gives up no extra wei.
    discounted = checked_mul_up(p, WAD - col.liquidation_discount)
    unit = col.unit
    qs = state.params.quote_scale

    # Repay in native quote units: the whole debt rounded up, at most max_repay, at most what the
    # balance is worth at the discounted price rounded down (``cap``). A repay of the whole cap
    # takes the whole balance, so that no dust worth under one quote unit blocks settlement
    # (a balance worth less than one unit goes for a repay of 0). Everything here is >= 0, so //
    # is the engine's unsigned division.
    debt = (-c + qs - 1) // qs
    cap = _checked_u256(balance * discounted) // unit // qs
    repay = min(debt, max_repay, cap)
    if repay == cap:
        seized = balance
    else:
        seized = _checked_u256(repay * qs * unit) // discounted   # repay < cap: below the balance
    left = balance - seized

    # The account bears the discount only as far as its equity allows: equity never falls below
    # min(equity before, 0); the fund (then the house) credits the rest to its cash.
    lost = checked(_checked_u256(balance * p) // unit - _checked_u256(left * p) // unit)
    equity = checked(checked(h.equity + checked(repay * qs)) - lost)
    lowest = min(h.equity, 0)
    subsidy = 0
    if equity < lowest:
        subsidy = lowest - equity
        equity = lowest
    cash = checked(c + checked(_checked_u256(repay * qs + subsidy)))
    fund, house_cash = _cover(subsidy, 0, state.insurance_fund, _peek(state, state.engine).cash)

    # Automatic settlement: nothing left to liquidate and the cash negative.
    bad_debt = 0
    if left == 0 and cash < 0 and not _has_positions(acc):
        if not any(b > 0 for t, b in acc.collateral.items() if t != token):
            bad_debt = -cash
    return CollateralLiquidationPlan(
        Native(repay), Native(seized), Wad(p), Wad(subsidy), Wad(cash), Native(left),
        Wad(fund), Wad(house_cash), Wad(equity), Wad(bad_debt),
    )


def _apply_collateral(state: ProtocolState, account: str, token: str,
                      plan: CollateralLiquidationPlan) -> BadDebtSettlement | None:
    """``_execute_collateral``'s writes (after every check); returns the automatic settlement."""
    settlement = _settlement(plan.bad_debt, plan.insurance_fund, plan.house_cash) if plan.bad_debt else None
    acc = state.account(account)
    acc.cash = plan.cash
    if plan.collateral == 0:
        acc.collateral.pop(token, None)
    else:
        acc.collateral[token] = plan.collateral
    state.total_collateral[token] = state.total_collateral.get(token, 0) - plan.seized
    state.insurance_fund = plan.insurance_fund
    _house(state).cash = plan.house_cash
    if settlement is not None:
        _apply_settlement(state, account, settlement)
    return settlement


def preview_liquidate_collateral(state: ProtocolState, account: str, token: str, max_repay: int) -> CollateralLiquidationPlan:
    """The ``preview_liquidate_collateral`` view (PREVIEW): ``liquidate_collateral``'s reasons in
    its order, a bad price of the seized feed included; ages are not checked."""
    return _collateral_plan(state, account, token, max_repay, PREVIEW)


def liquidate_collateral(state: ProtocolState, caller: str, account: str, token: str, max_repay: int,
                         wallets: Wallets | None = None) -> CollateralLiquidationPlan:
    """``liquidate_collateral(account, token, max_repay)`` sent by ``caller``.

    The caller pays ``repay`` quote native units and receives ``seized`` units of ``token``.
    """
    plan = _collateral_plan(state, account, token, max_repay, LIQUIDATION)
    if plan.bad_debt:
        _settlement(plan.bad_debt, plan.insurance_fund, plan.house_cash)
    transfers = []
    if plan.repay > 0:
        transfers.append(_Transfer(state.params.quote_token, caller, state.engine, plan.repay, state.engine))
    if plan.seized > 0:
        transfers.append(_Transfer(token, state.engine, caller, plan.seized, None))
    _move(wallets, transfers)
    _apply_collateral(state, account, token, plan)
    return plan


def _order(o: LiquidationOrder | tuple) -> LiquidationOrder:
    o = LiquidationOrder(*o)
    _uint256("market", o.market)
    _uint256("amount", o.amount)
    if o.is_collateral and o.market != 0:
        raise Revert("bad order")
    return o


def liquidate_many(state: ProtocolState, caller: str, orders: list[LiquidationOrder],
                   wallets: Wallets | None = None) -> BatchResult:
    """``liquidate_many(orders)`` sent by ``caller``: each order as the single action would, in
    order, on the state the earlier orders left; an order the single action rejects with a
    :class:`Skip` reason is skipped (``LiquidationSkipped``), any other reason reverts the whole
    call and leaves the state untouched. The repayments are pulled from the caller in one transfer
    and the rewards paid in one, after the orders.
    """
    if len(orders) > MAX_ORDERS:
        raise ConfigError(f"liquidate_many takes at most {MAX_ORDERS} orders, got {len(orders)}")
    # Journal for the all-or-nothing revert: the state of everything an order can write.
    saved_accounts: dict[str, Account | None] = {}
    saved_house = _copy_account(_house(state))
    saved_fund = state.insurance_fund
    saved_totals = dict(state.total_collateral)
    outcomes: list[OrderOutcome] = []
    transfers: list[_Transfer] = []
    rewards = repays = executed = 0
    try:
        for raw in orders:
            o = _order(raw)
            if o.account not in saved_accounts and o.account != state.engine:
                acc = state.accounts.get(o.account)
                saved_accounts[o.account] = None if acc is None else _copy_account(acc)
            try:
                if o.is_collateral:
                    plan = _collateral_plan(state, o.account, o.token, o.amount, LIQUIDATION)
                else:
                    plan = _liquidation_plan(state, o.account, o.market, o.amount, LIQUIDATION)
            except Skip as skip:
                outcomes.append(OrderOutcome(skip.code, skip.reason))
                continue
            if o.is_collateral:
                settlement = _apply_collateral(state, o.account, o.token, plan)
                if plan.seized > 0:
                    transfers.append(_Transfer(o.token, state.engine, caller, plan.seized, None))
                repays += plan.repay
            else:
                settlement = _apply_liquidation(state, o.account, o.market, plan)
                rewards += plan.keeper_reward
            executed += 1
            outcomes.append(OrderOutcome(EXECUTED, "", plan, settlement))
        if repays > 0:
            transfers.append(_Transfer(state.params.quote_token, caller, state.engine, repays, state.engine))
        if rewards > 0:
            transfers.append(_Transfer(state.params.quote_token, state.engine, caller, rewards, None))
        _move(wallets, transfers)
    except BaseException:
        for address, acc in saved_accounts.items():
            if acc is None:
                state.accounts.pop(address, None)
            else:
                state.accounts[address] = acc
        state.house = saved_house
        state.insurance_fund = saved_fund
        state.total_collateral = saved_totals
        raise
    return BatchResult(executed, outcomes, Native(rewards), Native(repays))


def preview_liquidate_many(state: ProtocolState, orders: list[LiquidationOrder]) -> list[OrderPreview]:
    """The ``preview_liquidate_many`` view: each order read against the current state (ages
    checked, as the action does), not after the earlier orders of the batch; raises where the
    action reverts for a malformed order. For the exact sequential outcome of a batch, run
    :func:`liquidate_many` on ``state.copy()``."""
    if len(orders) > MAX_ORDERS:
        raise ConfigError(f"liquidate_many takes at most {MAX_ORDERS} orders, got {len(orders)}")
    out: list[OrderPreview] = []
    for raw in orders:
        o = _order(raw)
        try:
            if o.is_collateral:
                c = _collateral_plan(state, o.account, o.token, o.amount, LIQUIDATION)
                out.append(OrderPreview(EXECUTED, Native(0), c.repay, c.seized, BaseWad(0), c.bad_debt))
            else:
                p = _liquidation_plan(state, o.account, o.market, o.amount, LIQUIDATION)
                out.append(OrderPreview(EXECUTED, p.keeper_reward, Native(0), Native(0), p.size_delta, p.bad_debt))
        except Skip as skip:
            out.append(OrderPreview(skip.code, Native(0), Native(0), Native(0), BaseWad(0), Wad(0)))
    return out


def _copy_account(acc: Account) -> Account:
    return Account(acc.address, acc.cash, dict(acc.collateral), dict(acc.positions))


def settle_bad_debt(state: ProtocolState, account: str) -> BadDebtSettlement:
    """``settle_bad_debt(account)``: the insurance fund covers first, the house's cash the rest."""
    if account == state.engine:
        raise Revert("house")
    acc = _peek(state, account)
    if _has_positions(acc):
        raise Revert("open positions")
    if _has_collateral(state, acc):
        raise Revert("has collateral")
    c = acc.cash
    if c >= 0:
        raise Revert("no bad debt")
    s = _settlement(-c, state.insurance_fund, _house(state).cash)
    _apply_settlement(state, account, s)
    return s


# ---------------------------------------------------------------- price feeds (PriceFeed.vy)


def set_answer(state: ProtocolState, feed: str, answer: int, timestamp: int,
               sender: str | None = None, updater: str | None = None) -> int:
    """``PriceFeed.set_answer(answer)`` mined at ``timestamp``; returns the new round id.

    The model's :class:`Feed` does not record the updater: pass ``sender`` and ``updater`` to have
    the ``"not updater"`` check, otherwise the caller is taken to be the updater.
    """
    _int256("answer", answer)
    f = state.feeds.get(feed)
    if f is None:
        raise ConfigError(f"feed {feed} is not in the model state")
    if sender is not None and updater is not None and sender != updater:
        raise Revert("not updater")
    if not (f.min_answer <= answer <= f.max_answer):
        raise Revert("answer out of range")
    f.round_id += 1
    f.answer = answer
    f.updated_at = timestamp
    return f.round_id


# ---------------------------------------------------------------- admin


def _only_owner(state: ProtocolState, sender: str) -> None:
    if sender != state.params.owner:
        raise Revert("not owner")


def pause(state: ProtocolState, sender: str) -> None:
    """``pause()``: stops trades and withdrawals (deposits and liquidations go on)."""
    _only_owner(state, sender)
    if state.params.paused:
        raise Revert("paused")
    state.params.paused = True


def unpause(state: ProtocolState, sender: str) -> None:
    """``unpause()``."""
    _only_owner(state, sender)
    if not state.params.paused:
        raise Revert("not paused")
    state.params.paused = False


def set_params(state: ProtocolState, sender: str, keeper_share: int, max_price_age: int, dust_notional: int) -> None:
    """``set_params(keeper_share, max_price_age, dust_notional)``."""
    for name, v in (("keeper_share", keeper_share), ("max_price_age", max_price_age), ("dust_notional", dust_notional)):
        _uint256(name, v)
    _only_owner(state, sender)
    if keeper_share > WAD:
        raise Revert("bad params")
    if max_price_age > MAX_PRICE_AGE:
        raise Revert("bad params")
    if dust_notional > MAX_PRICE:
        raise Revert("bad params")
    state.params.keeper_share = Wad(keeper_share)
    state.params.max_price_age = max_price_age
    state.params.dust_notional = Wad(dust_notional)


def set_market_params(state: ProtocolState, sender: str, market_id: int, imf: int, mmf: int,
                      liquidation_fee: int, taker_fee: int, oi_cap: int) -> None:
    """``set_market_params(market, imf, mmf, liquidation_fee, taker_fee, oi_cap)``."""
    for name, v in (("market_id", market_id), ("imf", imf), ("mmf", mmf), ("liquidation_fee", liquidation_fee),
                    ("taker_fee", taker_fee), ("oi_cap", oi_cap)):
        _uint256(name, v)
    _only_owner(state, sender)
    if market_id >= len(state.markets):
        raise Revert("not listed")
    if not (imf <= WAD and imf > mmf and mmf > liquidation_fee and liquidation_fee > 0):
        raise Revert("bad params")
    if taker_fee >= WAD:
        raise Revert("bad params")
    m = state.markets[market_id]
    m.imf, m.mmf, m.liquidation_fee, m.taker_fee, m.oi_cap = Wad(imf), Wad(mmf), Wad(liquidation_fee), Wad(taker_fee), BaseWad(oi_cap)


def set_market_price_age(state: ProtocolState, sender: str, market_id: int, max_price_age: int) -> None:
    """``set_market_price_age(market, max_price_age)``."""
    _uint256("market_id", market_id)
    _uint256("max_price_age", max_price_age)
    _only_owner(state, sender)
    if market_id >= len(state.markets):
        raise Revert("not listed")
    if max_price_age > MAX_PRICE_AGE:
        raise Revert("bad params")
    state.markets[market_id].max_price_age = max_price_age


def set_collateral_price_age(state: ProtocolState, sender: str, token: str, max_price_age: int) -> None:
    """``set_collateral_price_age(token, max_price_age)``."""
    _uint256("max_price_age", max_price_age)
    _only_owner(state, sender)
    col = _collateral(state, token)
    if col is None:
        raise Revert("not listed")
    if max_price_age > MAX_PRICE_AGE:
        raise Revert("bad params")
    col.max_price_age = max_price_age


def set_collateral_params(state: ProtocolState, sender: str, token: str, init_weight: int, maint_weight: int,
                          liquidation_discount: int, deposit_cap: int) -> None:
    """``set_collateral_params(token, init_weight, maint_weight, liquidation_discount, deposit_cap)``."""
    for name, v in (("init_weight", init_weight), ("maint_weight", maint_weight),
                    ("liquidation_discount", liquidation_discount), ("deposit_cap", deposit_cap)):
        _uint256(name, v)
    _only_owner(state, sender)
    col = _collateral(state, token)
    if col is None:
        raise Revert("not listed")
    if init_weight > maint_weight:
        raise Revert("bad params")
    if maint_weight + liquidation_discount > UINT256_MAX:
        raise Revert("")   # uint256 overflow in the engine's sum
    if maint_weight + liquidation_discount >= WAD:
        raise Revert("bad params")
    col.init_weight, col.maint_weight = Wad(init_weight), Wad(maint_weight)
    col.liquidation_discount, col.deposit_cap = Wad(liquidation_discount), Native(deposit_cap)


def _owner_amount(state: ProtocolState, sender: str, amount: int) -> None:
    """The checks of the owner's quote seedings, in the engine's order."""
    _uint256("amount", amount)
    _only_owner(state, sender)
    _token_amount(amount)


def seed_house(state: ProtocolState, sender: str, amount: int, wallets: Wallets | None = None) -> Wad:
    """``seed_house(amount)``: quote tokens from the owner into the house's cash; returns that cash."""
    _owner_amount(state, sender, amount)
    house = _house(state)
    c = checked(house.cash + amount * state.params.quote_scale)
    _move(wallets, [_Transfer(state.params.quote_token, sender, state.engine, amount, state.engine)])
    house.cash = Wad(c)
    return Wad(c)


def seed_insurance(state: ProtocolState, sender: str, amount: int, wallets: Wallets | None = None) -> Wad:
    """``seed_insurance(amount)``: quote tokens from the owner into the insurance fund; returns it."""
    _owner_amount(state, sender, amount)
    fund = _checked_u256(state.insurance_fund + amount * state.params.quote_scale)
    _move(wallets, [_Transfer(state.params.quote_token, sender, state.engine, amount, state.engine)])
    state.insurance_fund = Wad(fund)
    return Wad(fund)
