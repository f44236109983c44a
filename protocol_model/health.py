"""Prices and account health, exactly as ``contracts/MarginEngine.vy`` computes them.

* :func:`price` mirrors ``_price`` in its three read modes: strict reads (``STRICT`` or ``True``,
  actions) revert with ``"bad price"`` / ``"stale price"``; preview reads (``PREVIEW``, the preview
  views) revert with ``"bad price"`` and ignore the age; loose reads (``LOOSE`` or ``False``, the
  other views) clamp to ``[0, MAX_PRICE]`` and ignore the age.
* :func:`health` mirrors ``_health``: cash, then the active markets in id order, then the held
  collaterals in index order; in strict (preview) mode the first unusable (bad) price raises its
  reason.
* :func:`margin_ratio` and :func:`liquidation_price` are derived figures for people and the bot.
* :class:`HealthBook` keeps the health of many accounts current under price updates: a per-feed
  liquidation-price index (:mod:`protocol_model.liqindex`) names the accounts a move can make
  liquidatable and only those are recomputed (bench/health_bench.py: 1,000,000 accounts), with
  results identical to :func:`health`.

Health is integer arithmetic through :mod:`protocol_model.wad`; floats appear only in the index's
candidate filter, rounded so that it only ever widens.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from typing import Iterable, NamedTuple

import numpy as np

from .errors import ConfigError, Revert
from .liqindex import TERM_ROUNDING_COLLATERAL, TERM_ROUNDING_POSITION, LiqIndex
from .state import Account, Collateral, Feed, Market, ProtocolState
from .wad import INT256_MAX, INT256_MIN, MAX_PRICE, UINT256_MAX, WAD, Wad, div_ceil, div_floor, mul_down, mul_up

log = logging.getLogger(__name__)

__all__ = [
    "Health",
    "HealthBreakdown",
    "HealthBook",
    "LIQUIDATION",
    "LOOSE",
    "PREVIEW",
    "PRICE_BAD",
    "PRICE_OK",
    "PRICE_STALE",
    "STRICT",
    "UNBOUNDED_RATIO",
    "answer_to_price",
    "breakdown",
    "checked",
    "checked_div_up",
    "checked_mul_down",
    "checked_mul_up",
    "feed_liquidation_price",
    "feed_max_age",
    "feed_price",
    "health",
    "is_bankrupt",
    "is_liquidatable",
    "liquidation_price",
    "margin_ratio",
    "overflow_safe",
    "price",
    "price_age",
    "read_feed",
    "require_usable",
    "term_price",
]

# margin_ratio of an account with a requirement and a non-positive margin balance.
UNBOUNDED_RATIO = INT256_MAX

# Price read modes, the ``strict`` argument of the functions below (``False`` and ``True`` are
# LOOSE and STRICT), the engine's read modes: views read loosely (clamped, ages ignored), trades and
# withdrawals strictly (a bad or stale price reverts), liquidations in LIQUIDATION mode (a term
# whose price is unusable counts against the account, SPEC section 6 "Prices a liquidation needs"),
# the single preview views in PREVIEW mode (as LIQUIDATION, ages ignored).
LOOSE = 0
STRICT = 1
PREVIEW = 2
LIQUIDATION = 3

# Status of one feed reading (the engine's ``_read``).
PRICE_OK = 0
PRICE_BAD = 1      # answer <= 0 or above MAX_PRICE
PRICE_STALE = 2    # older than the max age (checked in STRICT and LIQUIDATION reads)

_MODES = (LOOSE, STRICT, PREVIEW, LIQUIDATION)


class Health(NamedTuple):
    """The engine's ``Health`` struct (USD WAD)."""

    equity: Wad
    init_health: Wad
    maint_health: Wad


class HealthBreakdown(NamedTuple):
    """The terms of SPEC section 5 that :func:`health` sums (USD WAD)."""

    cash: Wad
    collateral_value: Wad    # sum_c value(c)
    collateral_init: Wad     # sum_c mul_down(value(c), init_weight_c)
    collateral_maint: Wad    # sum_c mul_down(value(c), maint_weight_c)
    upnl: Wad                # sum_m upnl(m)
    req_init: Wad            # sum_m mul_up(notional(m), imf_m)
    req_maint: Wad           # sum_m mul_up(notional(m), mmf_m)

    @property
    def health(self) -> Health:
        return Health(
            Wad(self.collateral_value + self.cash + self.upnl),
            Wad(self.collateral_init + self.cash + self.upnl - self.req_init),
            Wad(self.collateral_maint + self.cash + self.upnl - self.req_maint),
        )


# ---------------------------------------------------------------- prices


def answer_to_price(answer: int, price_scale: int) -> Wad:
    """A feed answer normalised to WAD the way a loose (view) read does: clamped to [0, MAX_PRICE]."""
    if answer <= 0:
        return Wad(0)
    if answer > MAX_PRICE // price_scale:
        return Wad(MAX_PRICE)
    return Wad(answer * price_scale)


def _mode(strict: int) -> int:
    mode = int(strict)
    if mode not in _MODES:
        raise ConfigError(f"unknown price read mode {strict!r}: LOOSE, STRICT, PREVIEW or LIQUIDATION")
    return mode


def read_feed(feed: Feed, price_scale: int, timestamp: int, max_age: int, strict: int) -> tuple[Wad, int]:
    """The engine's ``_read``: the answer in WAD clamped to ``[0, MAX_PRICE]`` and its status.

    ``PRICE_BAD`` outside ``(0, MAX_PRICE]``; else ``PRICE_STALE`` if the mode checks ages (STRICT,
    LIQUIDATION) and the answer is more than ``max_age`` seconds older than ``timestamp``; else
    ``PRICE_OK``. Never raises.
    """
    mode = _mode(strict)
    answer = feed.answer
    if answer <= 0:
        return Wad(0), PRICE_BAD
    if answer > MAX_PRICE // price_scale:
        return Wad(MAX_PRICE), PRICE_BAD
    p = Wad(answer * price_scale)
    if mode in (STRICT, LIQUIDATION) and feed.updated_at < timestamp and timestamp - feed.updated_at > max_age:
        return p, PRICE_STALE
    return p, PRICE_OK


def require_usable(status: int) -> None:
    """The engine's ``_require_usable``: ``"bad price"`` / ``"stale price"``."""
    if status == PRICE_BAD:
        raise Revert("bad price")
    if status == PRICE_STALE:
        raise Revert("stale price")


def feed_price(feed: Feed, price_scale: int, timestamp: int, max_age: int, strict: int) -> Wad:
    """One price as an action or a view reads it: a strict read raises ``"bad price"`` /
    ``"stale price"``; PREVIEW and LIQUIDATION reads raise ``"bad price"`` (PREVIEW ignores the
    age, LIQUIDATION raises ``"stale price"`` too); a loose read clamps and ignores the age."""
    mode = _mode(strict)
    p, status = read_feed(feed, price_scale, timestamp, max_age, mode)
    if mode != LOOSE:
        require_usable(status)
    return p


def _feed(state: ProtocolState, feed_address: str) -> Feed:
    feed = state.feeds.get(feed_address)
    if feed is None:
        raise ConfigError(f"feed {feed_address} is not in the model state: load the state from the deployment again")
    return feed


def price_age(state: ProtocolState, item: Market | Collateral) -> int:
    """The max price age (seconds) of a market or a collateral: its own, or the protocol default
    (``params.max_price_age``, what the engine gives a newly listed one) where the model has none."""
    return state.params.max_price_age if item.max_price_age is None else item.max_price_age


def feed_max_age(state: ProtocolState, feed_address: str) -> int:
    """The smallest max age of whatever the feed prices (the protocol default if nothing)."""
    ages = [price_age(state, m) for m in state.markets if m.feed == feed_address]
    ages += [price_age(state, c) for c in state.collaterals if c.feed == feed_address]
    return min(ages) if ages else state.params.max_price_age


def price(state: ProtocolState, feed_address: str, strict: int, price_scale: int | None = None,
          max_age: int | None = None) -> Wad:
    """One price in read mode ``strict`` at ``state.timestamp`` (see :func:`feed_price`).

    ``price_scale`` defaults to the feed's own ``10**(18 - decimals)``, which is what the engine
    stored for every market and collateral priced by it; ``max_age`` to the smallest max age of
    the markets and collaterals the feed prices.
    """
    feed = _feed(state, feed_address)
    scale = feed.price_scale if price_scale is None else price_scale
    age = feed_max_age(state, feed_address) if max_age is None else max_age
    return feed_price(feed, scale, state.timestamp, age, strict)


def term_price(state: ProtocolState, item: Market | Collateral, strict: int) -> tuple[Wad, bool]:
    """The engine's ``_term_price`` for a market or collateral: (price, usable). LOOSE reads any
    answer as usable, STRICT raises on an unusable one, LIQUIDATION and PREVIEW report it."""
    mode = _mode(strict)
    p, status = read_feed(_feed(state, item.feed), item.price_scale, state.timestamp, price_age(state, item), mode)
    if mode == STRICT:
        require_usable(status)
    return p, mode == LOOSE or status == PRICE_OK


# ---------------------------------------------------------------- health


def checked(x: int) -> int:
    """``x`` if it fits in an int256, else the engine's overflow revert (reason ``""``)."""
    if x > INT256_MAX or x < INT256_MIN:
        raise Revert("")
    return x


def checked_mul_down(a: int, b: int) -> int:
    """The engine's ``_mul_down``: the product is checked before the floor division."""
    return div_floor(checked(a * b), WAD)


def checked_mul_up(a: int, b: int) -> int:
    """The engine's ``_mul_up``."""
    return div_ceil(checked(a * b), WAD)


def checked_div_up(a: int, b: int) -> int:
    """The engine's ``_div_up`` (``b > 0``; a zero ``b`` is the engine's division-by-zero revert)."""
    if b == 0:
        raise Revert("")
    return div_ceil(checked(a * WAD), b)


def breakdown(state: ProtocolState, account: Account, strict: int = LOOSE) -> HealthBreakdown:
    """The terms of the account's health, computed exactly as ``_health`` computes them.

    Markets are visited in id order, then collaterals in index order, skipping zero entries (the
    engine's bitmasks). Every product and running sum is checked like the engine's int256
    arithmetic, so in strict (preview) mode the first unusable (bad) price raises its reason and
    an overflow raises ``Revert("")`` at the same point as in the engine; the ``health`` view
    (loose) reverts on overflow too, and so does this function.
    """
    c = account.cash
    eq = ih = mh = checked(c)             # the engine's running Health
    upnl = req_init = req_maint = 0       # the components, for the breakdown
    for m in sorted(account.positions):
        pos = account.positions[m]
        if pos.size == 0:
            continue
        market = state.markets[m]
        p, usable = term_price(state, market, strict)
        u = checked(checked_mul_down(pos.size, p) + pos.quote)
        if not usable:
            u = min(u, 0)                 # its loss at the last answer, none of its profit
        notional = checked_mul_up(checked(abs(pos.size)), p)
        ri = checked_mul_up(notional, market.imf)
        rm = checked_mul_up(notional, market.mmf)
        eq = checked(eq + u)
        ih = checked(ih + checked(u - ri))
        mh = checked(mh + checked(u - rm))
        upnl += u
        req_init += ri
        req_maint += rm

    value = coll_init = coll_maint = 0
    if account.collateral:
        for col in sorted(state.collaterals, key=lambda c: c.index):
            balance = account.collateral.get(col.token, 0)
            if balance == 0:
                continue
            p, usable = term_price(state, col, strict)
            if not usable:
                continue                  # worth 0 while its price is unusable
            v = checked(checked(balance) * p) // col.unit    # both factors >= 0: floor == the engine's //
            vi = checked_mul_down(v, col.init_weight)
            vm = checked_mul_down(v, col.maint_weight)
            eq = checked(eq + v)
            ih = checked(ih + vi)
            mh = checked(mh + vm)
            value += v
            coll_init += vi
            coll_maint += vm

    return HealthBreakdown(
        Wad(c), Wad(value), Wad(coll_init), Wad(coll_maint), Wad(upnl), Wad(req_init), Wad(req_maint)
    )


def health(state: ProtocolState, account: Account, strict: int = LOOSE) -> Health:
    """``_health(account, max_age)``: (equity, init_health, maint_health) in USD WAD.

    With ``strict=False`` (``LOOSE``) this equals the engine's ``health(account)`` view; with
    ``strict=True`` (``STRICT``) it raises :class:`Revert` where an action's health check would, with
    ``PREVIEW`` where a preview's would. All raise ``Revert("")`` where the engine's int256
    arithmetic overflows, which the deposit cap (``MAX_TOTAL_COLLATERAL``) keeps collateral balances
    from doing; only an account's cash or quote near the int256 limit still could.
    """
    return breakdown(state, account, strict).health


def overflow_safe(state: ProtocolState, account: Account) -> bool:
    """True if no price in ``[0, MAX_PRICE]`` can overflow the account's health arithmetic.

    A conservative bound on every product and running sum of ``_health``; accounts that fail it
    (astronomical collateral balances) are the only ones :func:`health` can revert for.
    """
    limit = 2**253
    total = abs(account.cash)
    for pos in account.positions.values():
        prod = abs(pos.size) * MAX_PRICE
        nmax = prod // WAD + 1
        if prod >= limit or nmax * WAD >= limit:
            return False
        total += 2 * nmax + abs(pos.quote)
    for token, balance in account.collateral.items():
        col = state.collateral_by_token(token)
        unit = col.unit if col is not None else 1
        prod = balance * MAX_PRICE
        vmax = prod // unit
        if prod >= limit or vmax * WAD >= limit:
            return False
        total += vmax
    return total < limit


def is_liquidatable(state: ProtocolState, account: Account) -> bool:
    """``maint_health < 0`` at the latest (loose) prices."""
    return health(state, account).maint_health < 0


def is_bankrupt(state: ProtocolState, account: Account) -> bool:
    """``equity < 0`` at the latest (loose) prices."""
    return health(state, account).equity < 0


def margin_ratio(state: ProtocolState, account: Account) -> Wad | None:
    """The maintenance requirement as a WAD fraction of the maintenance-weighted margin balance.

    ``ratio = req_maint / (coll_maint + cash + upnl)`` at the latest (loose) prices: 0.5 WAD means
    the account uses half of its maintenance margin. The ratio is rounded so that
    ``ratio >= WAD`` exactly when the account is liquidatable (``maint_health < 0``): up while
    liquidatable, down otherwise, and a not-liquidatable account at exactly 1.0 reads ``WAD - 1``.

    Returns ``None`` when the account has no requirement (no open position), even if its cash is
    negative (then only a collateral liquidation applies), and :data:`UNBOUNDED_RATIO` when it
    has a requirement but a margin balance of zero or less.
    """
    b = breakdown(state, account)
    req = b.req_maint
    if req == 0:
        return None
    balance = b.collateral_maint + b.cash + b.upnl
    if balance <= 0:
        return Wad(UNBOUNDED_RATIO)
    if req > balance:  # liquidatable: round up, which stays > WAD
        return Wad(div_ceil(req * WAD, balance))
    return Wad(min(div_floor(req * WAD, balance), WAD - 1))


# ---------------------------------------------------------------- liquidation price


def liquidation_price(state: ProtocolState, account: Account, market_id: int) -> Wad | None:
    """The first liquidatable price (USD WAD) of market ``market_id``'s feed, every other feed held.

    See :func:`feed_liquidation_price`; whatever else the same feed prices (a WETH balance under the
    ETH/USD feed of ETH-PERP) moves with it.
    """
    if not 0 <= market_id < len(state.markets):
        raise ConfigError(f"market {market_id} is not listed: markets are 0..{len(state.markets) - 1}")
    return feed_liquidation_price(state, account, state.markets[market_id].feed)


@dataclass(frozen=True, slots=True)
class _MovingTerms:
    fixed_maint: int                                   # cash + every term priced by other feeds
    positions: tuple[tuple[int, int, int], ...]        # (size, quote, mmf)
    collaterals: tuple[tuple[int, int, int], ...]      # (balance, unit, maint_weight)

    def maint_health(self, p: int) -> int:
        h = self.fixed_maint
        for size, quote, mmf in self.positions:
            h += mul_down(size, p) + quote - mul_up(mul_up(abs(size), p), mmf)
        for balance, unit, weight in self.collaterals:
            h += mul_down(balance * p // unit, weight)
        return h


def _moving_terms(state: ProtocolState, account: Account, feed_address: str) -> _MovingTerms:
    fixed = account.cash
    positions: list[tuple[int, int, int]] = []
    for m in sorted(account.positions):
        pos = account.positions[m]
        if pos.size == 0:
            continue
        market = state.markets[m]
        if market.feed == feed_address:
            positions.append((pos.size, pos.quote, market.mmf))
            continue
        p = price(state, market.feed, False, market.price_scale)
        fixed += mul_down(pos.size, p) + pos.quote - mul_up(mul_up(abs(pos.size), p), market.mmf)
    collaterals: list[tuple[int, int, int]] = []
    for col in state.collaterals:
        balance = account.collateral.get(col.token, 0)
        if balance == 0:
            continue
        if col.feed == feed_address:
            collaterals.append((balance, col.unit, col.maint_weight))
            continue
        p = price(state, col.feed, False, col.price_scale)
        fixed += mul_down(balance * p // col.unit, col.maint_weight)
    return _MovingTerms(fixed, tuple(positions), tuple(collaterals))


def feed_liquidation_price(state: ProtocolState, account: Account, feed_address: str) -> Wad | None:
    """The first price of ``feed_address`` (USD WAD) at which ``maint_health < 0``, others held.

    ``maint_health`` as a function of the feed's answer ``a`` is piecewise linear with integer
    rounding. The search runs over the answers the engine can use, ``[max(1, min_answer),
    min(max_answer, MAX_PRICE // price_scale)]``, on the exact health function (loose prices, as
    the ``health`` view computes it): it tests both ends of that range and bisects between the
    current answer (healthy) and each liquidatable end down to two adjacent answers, ``good`` with
    ``maint_health >= 0`` and ``bad`` with ``maint_health < 0``, and returns ``bad * price_scale``;
    if both directions liquidate (a flat, hedged account can), the one nearer the current answer.
    An answer at which the engine's health arithmetic overflows (astronomical balances only) counts
    as not liquidatable, since the engine cannot liquidate there either.

    Returns ``None`` when no usable answer makes the account liquidatable, and also when it is
    already liquidatable at the current price (there is then no distance to show). Raises
    ``Revert("")`` like :func:`health` if the engine cannot compute the account's health at the
    current prices. About 2 x 70 evaluations of a few terms: well under a millisecond.
    """
    feed = _feed(state, feed_address)
    scale = feed.price_scale
    if health(state, account).maint_health < 0:
        return None
    lo = max(1, feed.min_answer)
    hi = min(feed.max_answer, MAX_PRICE // scale)
    if lo > hi:
        return None
    start = min(max(feed.answer, lo), hi)

    if overflow_safe(state, account):
        terms = _moving_terms(state, account, feed_address)
        if not terms.positions and not terms.collaterals:
            return None

        def bad(a: int) -> bool:
            return terms.maint_health(answer_to_price(a, scale)) < 0
    else:
        def bad(a: int) -> bool:
            saved = feed.answer
            feed.answer = a
            try:
                return health(state, account).maint_health < 0
            except Revert:
                return False
            finally:
                feed.answer = saved

    if bad(start):
        return None
    found: list[int] = []
    for end in (lo, hi):
        if end == start or not bad(end):
            continue
        good_a, bad_a = start, end
        while abs(bad_a - good_a) > 1:
            mid = good_a + div_floor(bad_a - good_a, 2)
            if bad(mid):
                bad_a = mid
            else:
                good_a = mid
        found.append(bad_a)
    if not found:
        return None
    nearest = min(found, key=lambda a: abs(a - start))
    return Wad(nearest * scale)


# ---------------------------------------------------------------- the fast path for many accounts
# The book stores every market's and every collateral's terms as dense columns indexed by account
# slot (zeros where an account holds nothing), so that repricing a feed is a handful of list
# comprehensions over its columns, and the totals move by the columns' differences in one more
# comprehension per total: no Python statement per account.


@dataclass(slots=True)
class _MarketColumn:
    market_id: int
    feed: str
    imf: int
    mmf: int
    sizes: list[int] = field(default_factory=list)
    quotes: list[int] = field(default_factory=list)
    upnl: list[int] = field(default_factory=list)     # mul_down(size, P) + quote
    net_init: list[int] = field(default_factory=list)   # upnl - mul_up(notional, imf)
    net_maint: list[int] = field(default_factory=list)  # upnl - mul_up(notional, mmf)
    holders: int = 0                                  # slots with size != 0

    def terms(self, size: int, quote: int, p: int) -> tuple[int, int, int]:
        u = mul_down(size, p) + quote
        notional = mul_up(abs(size), p)
        return u, u - mul_up(notional, self.imf), u - mul_up(notional, self.mmf)

    def grow(self) -> None:
        for col in (self.sizes, self.quotes, self.upnl, self.net_init, self.net_maint):
            col.append(0)

    def put(self, slot: int, size: int, quote: int, p: int) -> None:
        if size == 0:
            quote = 0   # a closed position's quote lives in cash (the engine's invariant)
        self.holders += (size != 0) - (self.sizes[slot] != 0)
        self.sizes[slot], self.quotes[slot] = size, quote
        self.upnl[slot], self.net_init[slot], self.net_maint[slot] = self.terms(size, quote, p) if size else (0, 0, 0)

    def reprice(self, p: int) -> None:
        imf, mmf = self.imf, self.mmf
        upnl = [mul_down(s, p) + q for s, q in zip(self.sizes, self.quotes)]
        notional = [mul_up(abs(s), p) for s in self.sizes]
        self.net_init = [u - mul_up(n, imf) for u, n in zip(upnl, notional)]
        self.net_maint = [u - mul_up(n, mmf) for u, n in zip(upnl, notional)]
        self.upnl = upnl


@dataclass(slots=True)
class _CollateralColumn:
    token: str
    feed: str
    unit: int
    init_weight: int
    maint_weight: int
    balances: list[int] = field(default_factory=list)
    value: list[int] = field(default_factory=list)    # balance * P // unit
    init: list[int] = field(default_factory=list)     # mul_down(value, init_weight)
    maint: list[int] = field(default_factory=list)    # mul_down(value, maint_weight)
    holders: int = 0

    def terms(self, balance: int, p: int) -> tuple[int, int, int]:
        v = balance * p // self.unit
        return v, mul_down(v, self.init_weight), mul_down(v, self.maint_weight)

    def grow(self) -> None:
        for col in (self.balances, self.value, self.init, self.maint):
            col.append(0)

    def put(self, slot: int, balance: int, p: int) -> None:
        self.holders += (balance != 0) - (self.balances[slot] != 0)
        self.balances[slot] = balance
        self.value[slot], self.init[slot], self.maint[slot] = self.terms(balance, p) if balance else (0, 0, 0)

    def reprice(self, p: int) -> None:
        unit, iw, mw = self.unit, self.init_weight, self.maint_weight
        value = [b * p // unit for b in self.balances]   # balances and p are >= 0: floor == the engine's //
        self.init = [mul_down(v, iw) for v in value]
        self.maint = [mul_down(v, mw) for v in value]
        self.value = value


def _shift(total: list[int], pairs: list[tuple[list[int], list[int]]]) -> list[int]:
    """``total - old + new`` for each (old, new) column pair, element-wise, in as few passes as the
    common shapes allow (a feed usually prices one market and one collateral)."""
    while len(pairs) >= 2:
        (a0, a1), (b0, b1) = pairs[0], pairs[1]
        total = [t - x0 + x1 - y0 + y1 for t, x0, x1, y0, y1 in zip(total, a0, a1, b0, b1)]
        pairs = pairs[2:]
    if pairs:
        a0, a1 = pairs[0]
        total = [t - x0 + x1 for t, x0, x1 in zip(total, a0, a1)]
    return total


class HealthBook:
    """The health of many accounts, kept current incrementally; equal to :func:`health` (loose).

    Built from a :class:`ProtocolState`, it resolves each feed's price once and keeps, per market
    and per collateral token, a dense column of every account's holdings, and every account's
    (equity, init_health, maint_health).

    With ``index=True`` (the default) a price update asks a per-feed liquidation-price index
    (:class:`~protocol_model.liqindex.LiqIndex`, whose docstring proves it conservative) which
    accounts the move can make liquidatable, and recomputes only those exactly; any other account's
    health is recomputed on demand when :meth:`health` reads it, so what is read is never stale.
    When the prices have drifted so far from the index's reference that a quarter of the accounts
    are candidates, the book recomputes everything (a columnar scan) and takes the current prices as
    the new reference. With ``index=False`` every update reprices the columns the moved feed prices
    (the scan, by list comprehension) and shifts the totals by the columns' differences.

    Accounts whose balances are so large that the engine's int256 arithmetic could overflow at
    some price (see :func:`overflow_safe`; none in any real deployment) are kept out of the columns
    and the index and recomputed with :func:`health` on every update; where that overflows,
    :meth:`health` raises ``Revert("")`` as the engine's view does.

    The book reads configuration from the state it was built from and keeps that state's feeds in
    sync (:meth:`update_price` writes the new answer there). After an account changes in the state
    (a mirrored deposit, trade, liquidation, ...) call :meth:`apply_account`; after a parameter change
    (weights, margin fractions) call :meth:`rebuild`. The house is tracked but never reported as
    liquidatable (the engine rejects liquidating it). Like the ``health`` view, the book reads prices
    loosely (ages ignored, answers clamped); a feed whose answer becomes unusable (``<= 0`` or above
    ``MAX_PRICE``) makes every account exposed to it a candidate.
    """

    # Index mode: recompute everything and take the current prices as the index's reference when
    # more than 1/REREFERENCE_SHARE of the accounts are candidates of one update (books of more than
    # REREFERENCE_MIN accounts); sort the index again when more than RESORT_MIN accounts (and a 16th
    # of the book) changed since it was last sorted.
    REREFERENCE_SHARE = 4
    REREFERENCE_MIN = 4096
    RESORT_MIN = 1024

    def __init__(self, state: ProtocolState, accounts: Iterable[Account] | None = None, *, index: bool = True) -> None:
        self.state = state
        self._accounts = accounts
        self.indexed = index
        self.last_candidates = 0      # accounts recomputed exactly by the last update_price (index mode)
        self.last_detection_s = 0.0   # seconds the last update_price spent finding them (index mode)
        self.rereferences = 0         # full recomputes done because the prices drifted (index mode)
        self.rebuild()

    # building ----------------------------------------------------------
    def rebuild(self) -> None:
        """Recompute everything from the state (after a configuration change)."""
        state = self.state
        self._slot: dict[str, int] = {}
        self._addr: list[str] = []
        self._cash: list[int] = []
        self._eq: list[int] = []
        self._ih: list[int] = []
        self._mh: list[int] = []
        self._prices: dict[str, int] = {}
        self._markets: list[_MarketColumn] = []
        self._collaterals: dict[str, _CollateralColumn] = {}
        self._by_feed: dict[str, tuple[list[_MarketColumn], list[_CollateralColumn]]] = {}
        self._unsafe: dict[int, Account] = {}      # slot -> account computed by health()
        self._reverts: set[int] = set()            # slots whose health view reverts (overflow)
        self._version = 0                          # bumped by every price change
        self._ver: list[int] = []                  # per slot: the version its health was computed at
        self._liq: set[int] = set()                # index mode: slots with maint_health < 0
        self._rounding: list[int] = []             # per slot: the index's E (wei)
        for market in state.markets:
            self._check_scale(market.feed, market.price_scale)
            mc = _MarketColumn(market.id, market.feed, market.imf, market.mmf)
            self._markets.append(mc)
            self._feed_entry(market.feed)[0].append(mc)
        for col in sorted(state.collaterals, key=lambda c: c.index):
            self._check_scale(col.feed, col.price_scale)
            cc = _CollateralColumn(col.token, col.feed, col.unit, col.init_weight, col.maint_weight)
            self._collaterals[col.token] = cc
            self._feed_entry(col.feed)[1].append(cc)
        for address, feed in state.feeds.items():
            self._prices[address] = answer_to_price(feed.answer, feed.price_scale)
        self._index: LiqIndex | None = LiqIndex(self._prices, self._prices) if self.indexed else None
        accounts = list(state.accounts.values()) if self._accounts is None else list(self._accounts)
        if state.house is not None:
            accounts.append(state.house)
        for account in accounts:
            self.apply_account(account)
        if self._index is not None:
            self._index.resort()
        log.debug("health book built: %d accounts, %d feeds", len(self._addr), len(self._prices))

    def _check_scale(self, feed_address: str, price_scale: int) -> None:
        feed = _feed(self.state, feed_address)
        if feed.price_scale != price_scale:
            raise ConfigError(
                f"feed {feed_address} has {feed.decimals} decimals but is listed with price_scale {price_scale}: "
                "reload the state from the chain"
            )

    def _feed_entry(self, feed_address: str) -> tuple[list[_MarketColumn], list[_CollateralColumn]]:
        entry = self._by_feed.get(feed_address)
        if entry is None:
            entry = self._by_feed[feed_address] = ([], [])
        return entry

    # accounts ----------------------------------------------------------
    def apply_account(self, account: Account) -> Health | None:
        """(Re)read one account from ``account`` (after a mirrored change); returns its health.

        ``None`` for an account whose health the engine cannot compute (int256 overflow).
        """
        slot = self._slot.get(account.address)
        if slot is None:
            slot = self._slot[account.address] = len(self._addr)
            self._addr.append(account.address)
            for lst in (self._cash, self._eq, self._ih, self._mh, self._ver, self._rounding):
                lst.append(0)
            for mc in self._markets:
                mc.grow()
            for cc in self._collaterals.values():
                cc.grow()
        self._unsafe.pop(slot, None)
        self._reverts.discard(slot)
        self._ver[slot] = self._version
        index = self._index
        if not overflow_safe(self.state, account):
            for mc in self._markets:
                mc.put(slot, 0, 0, 0)
            for cc in self._collaterals.values():
                cc.put(slot, 0, 0)
            self._cash[slot] = 0
            self._unsafe[slot] = account
            if index is not None:
                index.remove(slot)
            h_unsafe = self._recompute_unsafe(slot)
            self._mark_liq(slot)
            return h_unsafe
        for token in account.collateral:
            if token not in self._collaterals and account.collateral[token]:
                raise ConfigError(f"account {account.address} holds unlisted token {token}")
        c = account.cash
        eq = ih = mh = c
        exposure: dict[str, float] = {}
        rounding = 0
        for mc in self._markets:
            pos = account.positions.get(mc.market_id)
            size, quote = (pos.size, pos.quote) if pos is not None else (0, 0)
            mc.put(slot, size, quote, self._prices[mc.feed])
            eq += mc.upnl[slot]
            ih += mc.net_init[slot]
            mh += mc.net_maint[slot]
            if size:
                exposure[mc.feed] = exposure.get(mc.feed, 0.0) + abs(size) * (WAD + mc.mmf) / (WAD * WAD)
                rounding += TERM_ROUNDING_POSITION
        for cc in self._collaterals.values():
            balance = account.collateral.get(cc.token, 0)
            cc.put(slot, balance, self._prices[cc.feed])
            eq += cc.value[slot]
            ih += cc.init[slot]
            mh += cc.maint[slot]
            if balance:
                exposure[cc.feed] = exposure.get(cc.feed, 0.0) + balance * cc.maint_weight / (cc.unit * WAD)
                rounding += TERM_ROUNDING_COLLATERAL
        self._cash[slot] = c
        self._eq[slot], self._ih[slot], self._mh[slot] = eq, ih, mh
        if index is not None:
            self._rounding[slot] = rounding
            index.put(slot, mh, {f: lf * (1 + 1e-12) for f, lf in exposure.items() if lf > 0}, rounding)
            self._mark_liq(slot)
        return Health(Wad(eq), Wad(ih), Wad(mh))

    def _mark_liq(self, slot: int) -> None:
        if self._mh[slot] < 0 and slot not in self._reverts:
            self._liq.add(slot)
        else:
            self._liq.discard(slot)

    def _recompute_unsafe(self, slot: int) -> Health | None:
        account = self._unsafe[slot]
        try:
            h = health(self.state, account)
        except Revert:
            self._reverts.add(slot)
            self._eq[slot] = self._ih[slot] = self._mh[slot] = 0
            return None
        self._reverts.discard(slot)
        self._eq[slot], self._ih[slot], self._mh[slot] = h
        return h

    def _exact(self, slot: int) -> tuple[int, int, int]:
        """The slot's (equity, init_health, maint_health) at the current prices, from its holdings
        (the terms of :func:`health`, summed exactly); stores it and marks it current."""
        prices = self._prices
        eq = ih = mh = self._cash[slot]
        for mc in self._markets:
            size = mc.sizes[slot]
            if size:
                p = prices[mc.feed]
                u = (size * p) // WAD + mc.quotes[slot]
                notional = -((-abs(size) * p) // WAD)
                eq += u
                ih += u + ((-notional * mc.imf) // WAD)
                mh += u + ((-notional * mc.mmf) // WAD)
        for cc in self._collaterals.values():
            balance = cc.balances[slot]
            if balance:
                v = balance * prices[cc.feed] // cc.unit
                eq += v
                ih += (v * cc.init_weight) // WAD
                mh += (v * cc.maint_weight) // WAD
        self._eq[slot], self._ih[slot], self._mh[slot] = eq, ih, mh
        self._ver[slot] = self._version
        return eq, ih, mh

    def _exact_many(self, slots: list[int]) -> tuple[list[int], list[int], list[int]]:
        """:meth:`_exact` for many slots at once, column by column (a comprehension per term, as the
        scan does, over the slots only); returns (equity, init_health, maint_health) lists."""
        prices = self._prices
        cash = self._cash
        eq = [cash[s] for s in slots]
        ih, mh = eq, eq
        for mc in self._markets:
            if not mc.holders:
                continue
            col = mc.sizes
            sizes = [col[s] for s in slots]
            if not any(sizes):
                continue
            col = mc.quotes
            quotes = [col[s] for s in slots]     # a closed position's quote is 0 (put)
            p, imf, mmf = prices[mc.feed], mc.imf, mc.mmf
            upnl = [(z * p) // WAD + q for z, q in zip(sizes, quotes)]
            notional = [-((-abs(z) * p) // WAD) for z in sizes]
            eq = [a + u for a, u in zip(eq, upnl)]
            ih = [a + u + ((-x * imf) // WAD) for a, u, x in zip(ih, upnl, notional)]
            mh = [a + u + ((-x * mmf) // WAD) for a, u, x in zip(mh, upnl, notional)]
        for cc in self._collaterals.values():
            if not cc.holders:
                continue
            col = cc.balances
            balances = [col[s] for s in slots]
            if not any(balances):
                continue
            p, unit, iw, mw = prices[cc.feed], cc.unit, cc.init_weight, cc.maint_weight
            value = [b * p // unit for b in balances]
            eq = [a + v for a, v in zip(eq, value)]
            ih = [a + (v * iw) // WAD for a, v in zip(ih, value)]
            mh = [a + (v * mw) // WAD for a, v in zip(mh, value)]
        return eq, ih, mh

    # prices ------------------------------------------------------------
    def update_price(self, feed_address: str, answer: int, updated_at: int, round_id: int | None = None) -> set[str]:
        """Record a feed update (also in the state) and return the accounts whose health changed.

        With the index, only the candidates (the accounts the move can make liquidatable, see
        :mod:`protocol_model.liqindex`) are recomputed here, so the set holds the candidates whose
        health changed; every other account's health is recomputed when :meth:`health` reads it.
        Those include every account that became liquidatable or stopped being so. Without the
        index, the set is every account whose health changed.
        """
        feed = _feed(self.state, feed_address)
        feed.answer = answer
        feed.updated_at = updated_at
        feed.round_id = feed.round_id + 1 if round_id is None else round_id
        p = answer_to_price(answer, feed.price_scale)
        if p == self._prices.get(feed_address):
            return set()
        self._prices[feed_address] = p
        self._version += 1
        if self._index is not None:
            unusable = answer <= 0 or answer > MAX_PRICE // feed.price_scale
            return self._update_indexed(feed_address, p, unusable)
        markets, collaterals = self._by_feed.get(feed_address, ([], []))
        if not any(mc.holders for mc in markets) and not any(cc.holders for cc in collaterals) and not self._unsafe:
            return set()
        pairs_e: list[tuple[list[int], list[int]]] = []   # (old column, new column) per total
        pairs_i: list[tuple[list[int], list[int]]] = []
        pairs_m: list[tuple[list[int], list[int]]] = []
        for mc in markets:
            if mc.holders:
                before = (mc.upnl, mc.net_init, mc.net_maint)
                mc.reprice(p)
                pairs_e.append((before[0], mc.upnl))
                pairs_i.append((before[1], mc.net_init))
                pairs_m.append((before[2], mc.net_maint))
        for cc in collaterals:
            if cc.holders:
                before = (cc.value, cc.init, cc.maint)
                cc.reprice(p)
                pairs_e.append((before[0], cc.value))
                pairs_i.append((before[1], cc.init))
                pairs_m.append((before[2], cc.maint))
        old = (self._eq, self._ih, self._mh)
        self._eq, self._ih, self._mh = _shift(old[0], pairs_e), _shift(old[1], pairs_i), _shift(old[2], pairs_m)
        for slot in self._reverts:
            self._eq[slot] = self._ih[slot] = self._mh[slot] = 0
        eq, ih, mh = self._eq, self._ih, self._mh
        addr = self._addr
        changed = {addr[i] for i, a, b, c, d, e, f in zip(range(len(addr)), old[0], eq, old[1], ih, old[2], mh)
                   if a != b or c != d or e != f}
        for slot in self._unsafe:
            before_unsafe = (slot in self._reverts, old[0][slot], old[1][slot], old[2][slot])
            self._recompute_unsafe(slot)
            if before_unsafe != (slot in self._reverts, eq[slot], ih[slot], mh[slot]):
                changed.add(addr[slot])
        return changed

    def _update_indexed(self, feed_address: str, p: int, unusable: bool) -> set[str]:
        index = self._index
        assert index is not None  # dev: index mode
        t0 = time.perf_counter()
        index.move(feed_address, p)
        if index.dirty > max(self.RESORT_MIN, len(self._addr) // 16):
            index.resort()
        slots = index.candidates(index.exposed(feed_address)) if unusable else index.candidates()
        self.last_candidates = int(slots.size)
        self.last_detection_s = time.perf_counter() - t0
        if slots.size * self.REREFERENCE_SHARE > len(self._addr) > self.REREFERENCE_MIN:
            return self._rereference(slots)
        eq, ih, mh, addr, hot, unsafe = self._eq, self._ih, self._mh, self._addr, index.hot, self._unsafe
        wanted = [s for s in slots.tolist() if s not in unsafe] if unsafe else slots.tolist()
        new_eq, new_ih, new_mh = self._exact_many(wanted)
        changed: set[str] = set()
        liq: set[int] = set()
        version, ver, rounding = self._version, self._ver, self._rounding
        for slot, e, i, m in zip(wanted, new_eq, new_ih, new_mh):
            if e != eq[slot] or i != ih[slot] or m != mh[slot]:
                changed.add(addr[slot])
                eq[slot], ih[slot], mh[slot] = e, i, m
            ver[slot] = version
            if m < 0:
                liq.add(slot)
            elif slot in hot:
                index.tighten(slot, m, rounding[slot])
        # Liquidatable before, not a candidate now: provably not liquidatable, so its health changed
        # (recomputed when read).
        changed.update(addr[s] for s in self._liq.difference(wanted) if s not in unsafe)
        for slot in self._unsafe:
            before_unsafe = (slot in self._reverts, eq[slot], ih[slot], mh[slot])
            self._recompute_unsafe(slot)
            self._ver[slot] = self._version
            if before_unsafe != (slot in self._reverts, eq[slot], ih[slot], mh[slot]):
                changed.add(addr[slot])
            if mh[slot] < 0 and slot not in self._reverts:
                liq.add(slot)
        self._liq = liq
        return changed

    def reindex(self) -> None:
        """Recompute every account (a columnar scan) and take the current prices as the index's
        reference, so that later moves are measured from here. Optional (update_price does it
        itself past a quarter of the book); a keeper can call it when idle after the prices have
        drifted. No-op without the index."""
        if self._index is not None:
            self._rereference(np.zeros(0, dtype=np.int64))

    def _rereference(self, slots: np.ndarray) -> set[str]:
        """Recompute every account (a columnar scan) and make the current prices the reference."""
        index = self._index
        assert index is not None  # dev: index mode
        self.rereferences += 1
        wanted = set(slots.tolist())
        addr = self._addr
        before = {s: (self._eq[s], self._ih[s], self._mh[s]) for s in wanted}
        for mc in self._markets:
            if mc.holders:
                mc.reprice(self._prices[mc.feed])
        for cc in self._collaterals.values():
            if cc.holders:
                cc.reprice(self._prices[cc.feed])
        eq, ih, mh = list(self._cash), list(self._cash), list(self._cash)
        for mc in self._markets:
            if mc.holders:
                eq = [a + b for a, b in zip(eq, mc.upnl)]
                ih = [a + b for a, b in zip(ih, mc.net_init)]
                mh = [a + b for a, b in zip(mh, mc.net_maint)]
        for cc in self._collaterals.values():
            if cc.holders:
                eq = [a + b for a, b in zip(eq, cc.value)]
                ih = [a + b for a, b in zip(ih, cc.init)]
                mh = [a + b for a, b in zip(mh, cc.maint)]
        self._eq, self._ih, self._mh = eq, ih, mh
        self._ver = [self._version] * len(addr)
        unsafe = self._unsafe
        for slot in unsafe:
            self._recompute_unsafe(slot)
        index.rereference((s, m, r) for s, (m, r) in enumerate(zip(mh, self._rounding)) if s not in unsafe)
        self._liq = {s for s, m in enumerate(mh) if m < 0 and s not in self._reverts}
        changed = {addr[s] for s in wanted if before[s] != (eq[s], ih[s], mh[s])}
        changed |= {addr[s] for s in unsafe}
        return changed

    # reading -----------------------------------------------------------
    def health(self, address: str) -> Health:
        """The account's (equity, init_health, maint_health); zeros for an unknown address.

        Raises ``Revert("")`` where the engine's ``health`` view overflows.
        """
        slot = self._slot.get(address)
        if slot is None:
            return Health(Wad(0), Wad(0), Wad(0))
        if slot in self._reverts:
            raise Revert("")
        if self._index is not None and self._ver[slot] != self._version and slot not in self._unsafe:
            return Health(*self._exact(slot))
        return Health(Wad(self._eq[slot]), Wad(self._ih[slot]), Wad(self._mh[slot]))

    def liquidatable(self) -> list[str]:
        """Accounts with ``maint_health < 0`` (the house excluded), in the order they were added."""
        house = self.state.engine
        if self._index is not None:
            addr = self._addr
            return [addr[s] for s in sorted(self._liq) if addr[s] != house]
        return [a for a, m in zip(self._addr, self._mh) if m < 0 and a != house]   # reverting slots hold 0

    def exposed(self, feed_address: str) -> list[str]:
        """Accounts with a position or a collateral priced by ``feed_address`` (the overflow-unsafe
        ones included), in the order they were added."""
        markets, collaterals = self._by_feed.get(feed_address, ([], []))
        held = {i for mc in markets for i, s in enumerate(mc.sizes) if s}
        held |= {i for cc in collaterals for i, b in enumerate(cc.balances) if b}
        held |= set(self._unsafe)
        return [self._addr[s] for s in sorted(held)]

    def price(self, feed_address: str) -> Wad:
        """The loose (view) price the book uses for a feed."""
        return Wad(self._prices[feed_address])

    def __len__(self) -> int:
        return len(self._addr)

    def __contains__(self, address: object) -> bool:
        return address in self._slot
