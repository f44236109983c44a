"""A per-feed liquidation-price index: which accounts can a price move make liquidatable?

:class:`~protocol_model.health.HealthBook` uses it so that a price update recomputes the exact
health of the few accounts the move can reach (the *candidates*) instead of repricing every account
exposed to the moved feed. The index only ever answers "may be liquidatable"; the book decides with
the exact integer health of SPEC section 5 (:func:`protocol_model.health.health`).

The bound (why the index never misses an account)
-------------------------------------------------
In the loose reads the book mirrors, ``maint_health`` is *separable by feed*:
``mh(P) = cash + sum_i T_i(P_f(i))`` where each term ``T_i`` (a position's
``mul_down(size, p) + quote - mul_up(mul_up(|size|, p), mmf)`` or a collateral's
``mul_down(balance * p // unit, maint_weight)``) depends on the price of one feed ``f(i)`` only.
Each term is a linear function of its price plus integer rounding:

* a position: slope ``size / WAD - |size| * mmf / WAD**2`` (magnitude at most
  ``l = |size| * (WAD + mmf) / WAD**2``); the floor, the inner ceil and the outer ceil each move
  the value by less than one wei from the linear part, so the term is within 3 wei of it, and two
  evaluations differ by at most ``l * |dp| + 6``;
* a collateral: slope ``balance * maint_weight / (unit * WAD)`` (``= l``); the two floors keep it
  within ``1 + maint_weight / WAD < 2`` wei of the linear part, so two evaluations differ by at
  most ``l * |dp| + 4``.

So with ``L_f`` the sum of the ``l`` of the account's terms priced by ``f`` and ``E`` the sum of
their 6 / 4 wei, for any two price vectors ``mh(Q) >= mh(P0) - sum_f L_f |Q_f - P0_f| - E``, at
*every* price, however many feeds move at once (no range restriction: the bound is global).

The index keeps one reference price vector ``R`` (the prices at the last full recompute) and per
account a slack ``s`` and the vector ``L``. When the account's health is known exactly at prices
``P0`` (a full recompute, an account update, or a recompute as a candidate), the triangle
inequality ``|Q_f - P0_f| <= |Q_f - R_f| + |P0_f - R_f|`` gives::

    mh(Q) >= s - sum_f L_f |Q_f - R_f|,     s = mh(P0) - sum_f L_f |P0_f - R_f| - E        (*)

for every ``Q``. An account re-measured later keeps the larger of its old and new ``s`` (both
satisfy (*)). Hence, at the current prices ``Q`` with ``m_f = |Q_f - R_f|``:

1. ``mh(Q) < 0`` implies ``s < sum_f L_f m_f`` (the *stage-2 test*);
2. that implies ``s < 0`` (the account is *hot*) or, with ``k`` the number of feeds with
   ``m_f > 0``, ``L_f m_f > s / k`` for some moved ``f``, i.e. ``d_f = s / L_f < k m_f``
   (the *stage-1 test*): one ``searchsorted`` in each moved feed's array of ``d_f``, sorted once.

Candidates are the union of the stage-1 hits, the hot accounts and the accounts updated since the
arrays were last sorted (their sorted entries are stale, so they are always tested), filtered by the
stage-2 test; every account outside that set provably has ``mh(Q) >= 0``.

Floats are used only in the filter and every rounding is made to widen it: ``L_f`` is rounded up
(correctly rounded integer divisions, then a relative ``1e-12`` margin), ``s`` is rounded down (the
exact integer ``mh`` converted, then lowered by relative margins of ``2**-50`` at each step), and
the query thresholds are raised by a relative ``1e-9``. Float errors are relative errors of at most
a few ``2**-53`` per operation, far inside these margins. Exact health stays integer.

A feed whose answer becomes unusable (``<= 0`` or above ``MAX_PRICE``) makes every account
exposed to it a candidate regardless of the bound (:meth:`LiqIndex.exposed`).
"""

from __future__ import annotations

from typing import Iterable

import numpy as np

__all__ = ["LiqIndex", "TERM_ROUNDING_POSITION", "TERM_ROUNDING_COLLATERAL"]

# Wei by which two evaluations of one term can differ beyond its linear part (see the docstring).
TERM_ROUNDING_POSITION = 6
TERM_ROUNDING_COLLATERAL = 4

_L_MARGIN = 1e-12        # relative widening of every Lipschitz bound
_Q_MARGIN = 1e-9         # relative widening of every query threshold
_S_MARGIN = 2.0**-50     # relative lowering of every slack at each rounding step


def _down(x: float) -> float:
    return x - abs(x) * _S_MARGIN


class LiqIndex:
    """Slack and per-feed Lipschitz bounds of every account, and a sorted distance array per feed.

    Slots are the book's account slots (0..n-1). A slot that is not indexed (never put, removed,
    or an account the book recomputes on every update anyway) has slack ``+inf`` and no exposure,
    so it is never a candidate. See the module docstring for the argument.
    """

    def __init__(self, feeds: Iterable[str], reference: dict[str, int]) -> None:
        self.feeds: list[str] = list(feeds)
        self._row = {f: i for i, f in enumerate(self.feeds)}
        self.reference: dict[str, int] = {f: int(reference[f]) for f in self.feeds}   # R (USD WAD)
        self.current: dict[str, int] = dict(self.reference)                              # Q (USD WAD)
        self._n = 0
        cap = 1024
        self._s = np.full(cap, np.inf)
        self._L = np.zeros((len(self.feeds), cap))
        self._hot: set[int] = set()
        self._hot_array: np.ndarray | None = None     # the hot slots as an array, until they change
        self._dirty: set[int] = set()
        self._sorted: dict[str, tuple[np.ndarray, np.ndarray]] = {}
        self.resort()

    # storage ------------------------------------------------------------
    def __len__(self) -> int:
        return self._n

    def _ensure(self, slot: int) -> None:
        if slot < self._n:
            return
        cap = self._s.shape[0]
        if slot >= cap:
            new = max(2 * cap, slot + 1)
            s = np.full(new, np.inf)
            s[:cap] = self._s
            L = np.zeros((len(self.feeds), new))
            L[:, :cap] = self._L
            self._s, self._L = s, L
        self._n = slot + 1

    def distance(self, exposure: dict[str, float]) -> float:
        """``sum_f L_f |P0_f - R_f|`` at the current prices, rounded up."""
        ref, cur = self.reference, self.current
        t = 0.0
        for f, lf in exposure.items():
            m = cur[f] - ref[f]
            if m:
                t += lf * float(abs(m))
        return t * (1 + _Q_MARGIN)

    def put(self, slot: int, maint_health: int, exposure: dict[str, float], rounding: int) -> None:
        """Index an account whose ``maint_health`` is exact at the current prices.

        ``exposure`` maps each feed to ``L_f`` (already rounded up, > 0); ``rounding`` is ``E``.
        Replaces whatever the slot held (the account changed).
        """
        self._ensure(slot)
        s = _down(_down(float(maint_health)) - self.distance(exposure) - rounding)
        self._s[slot] = s
        col = self._L[:, slot]
        col[:] = 0.0
        for f, lf in exposure.items():
            col[self._row[f]] = lf
        self._mark(slot, s)

    def tighten(self, slot: int, maint_health: int, rounding: int) -> None:
        """A fresh exact ``maint_health`` (current prices) of an unchanged account: keep the larger
        of the old and the new slack (both satisfy the bound)."""
        old = self._s[slot]
        if old == np.inf:
            return
        col = self._L[:, slot]
        exposure = {self.feeds[i]: float(col[i]) for i in np.nonzero(col)[0]}
        s = _down(_down(float(maint_health)) - self.distance(exposure) - rounding)
        if s > old:
            self._s[slot] = s
            self._mark(slot, s)

    def remove(self, slot: int) -> None:
        """Stop indexing a slot (never a candidate)."""
        self._ensure(slot)
        self._s[slot] = np.inf
        self._L[:, slot] = 0.0
        if slot in self._hot:
            self._hot.discard(slot)
            self._hot_array = None
        self._dirty.add(slot)

    def _mark(self, slot: int, s: float) -> None:
        if (s < 0) != (slot in self._hot):
            if s < 0:
                self._hot.add(slot)
            else:
                self._hot.discard(slot)
            self._hot_array = None
        self._dirty.add(slot)

    @property
    def hot(self) -> set[int]:
        return self._hot

    @property
    def dirty(self) -> int:
        return len(self._dirty)

    def resort(self) -> None:
        """Sort every feed's distances ``s / L_f`` again (folds the updated slots back in)."""
        n = self._n
        s = self._s[:n]
        for i, f in enumerate(self.feeds):
            L = self._L[i, :n]
            slots = np.nonzero(L > 0)[0]
            keys = s[slots] / L[slots]
            order = np.argsort(keys, kind="stable")
            self._sorted[f] = (keys[order], slots[order])
        self._dirty.clear()

    # prices -------------------------------------------------------------
    def move(self, feed: str, price: int) -> None:
        """Record the current (loose) price of a feed."""
        self.current[feed] = int(price)

    def rereference(self, maint_health: Iterable[tuple[int, int, int]]) -> None:
        """Make the current prices the reference: ``(slot, exact maint_health, E)`` of every indexed
        slot at the current prices; then sort again."""
        self.reference = dict(self.current)
        s = self._s
        hot: set[int] = set()
        for slot, mh, rounding in maint_health:
            v = _down(_down(float(mh)) - rounding)
            s[slot] = v
            if v < 0:
                hot.add(slot)
        self._hot = hot
        self._hot_array = None
        self.resort()

    # queries ------------------------------------------------------------
    def moved(self) -> dict[str, float]:
        """``m_f = |Q_f - R_f|`` (rounded up) of every feed away from its reference."""
        ref = self.reference
        return {f: float(abs(q - ref[f])) * (1 + _Q_MARGIN) for f, q in self.current.items() if q != ref[f]}

    def exposed(self, feed: str) -> np.ndarray:
        """Every indexed slot with a term priced by ``feed``."""
        return np.nonzero(self._L[self._row[feed], :self._n] > 0)[0]

    def _hot_slots(self) -> np.ndarray:
        if self._hot_array is None:
            self._hot_array = np.fromiter(self._hot, dtype=np.int64, count=len(self._hot))
        return self._hot_array

    def stage1(self) -> np.ndarray:
        """Slots that pass the stage-1 test (plus the hot and the updated ones), sorted, unique."""
        moved = self.moved()
        k = len(moved)
        mask = np.zeros(self._n, dtype=bool)
        mask[self._hot_slots()] = True
        if self._dirty:
            mask[np.fromiter(self._dirty, dtype=np.int64, count=len(self._dirty))] = True
        for f, m in moved.items():
            keys, slots = self._sorted[f]
            cut = int(np.searchsorted(keys, k * m * (1 + _Q_MARGIN), side="right"))
            if cut:
                mask[slots[:cut]] = True
        return np.flatnonzero(mask)

    def candidates(self, *forced: np.ndarray) -> np.ndarray:
        """Slots that can be liquidatable at the current prices (stage 1, then stage 2), with the
        ``forced`` slots added whatever the bound says; sorted, unique."""
        sub = self.stage1()
        if sub.size:
            bound = np.zeros(sub.size)
            for f, m in self.moved().items():
                bound += self._L[self._row[f], sub] * m
            sub = sub[self._s[sub] <= bound * (1 + _Q_MARGIN)]
        if not forced:
            return sub
        mask = np.zeros(self._n, dtype=bool)
        mask[sub] = True
        for extra in forced:
            mask[extra] = True
        return np.flatnonzero(mask)

    def slack(self, slot: int) -> float:
        return float(self._s[slot])

    def nbytes(self) -> int:
        """Bytes held by the arrays (capacity included)."""
        total = self._s.nbytes + self._L.nbytes
        for keys, slots in self._sorted.values():
            total += keys.nbytes + slots.nbytes
        return total
