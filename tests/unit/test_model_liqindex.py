"""protocol_model.liqindex through HealthBook(index=True): the index never misses an account the
full scan (``health.is_liquidatable`` on every account) finds, under multi-feed moves, unusable
answers, account updates and new accounts; plus the edge cases one by one.

Accounts are drawn near the liquidation threshold (their cash is chosen so that maint_health at
the starting prices is within a few hundred USD of zero), so that small moves flip many of them.
"""

from __future__ import annotations

import random

import pytest
from hypothesis import given, note, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, precondition, rule

import protocol_model as pm
from protocol_model import WAD
from protocol_model.health import HealthBook
from protocol_model.liqindex import LiqIndex
from protocol_model.wad import MAX_PRICE

ENGINE = "0x00000000000000000000000000000000000000E0"
USDC = "0x0000000000000000000000000000000000000001"
WETH = "0x0000000000000000000000000000000000000002"
WBTC = "0x0000000000000000000000000000000000000003"
WSOL = "0x0000000000000000000000000000000000000004"
ETH_FEED = "0x00000000000000000000000000000000000000F1"
BTC_FEED = "0x00000000000000000000000000000000000000F2"
SOL_FEED = "0x00000000000000000000000000000000000000F3"
OWNER = "0x000000000000000000000000000000000000000A"
T0 = 1_000_000
SCALE = 10**10          # 8-decimal feeds
FEEDS = (ETH_FEED, BTC_FEED, SOL_FEED)
START = {ETH_FEED: 2_000 * 10**8, BTC_FEED: 60_000 * 10**8, SOL_FEED: 150 * 10**8}
MARKETS = 4             # ETH-PERP, BTC-PERP, SOL-PERP, ETH-PERP2 (a second market on the ETH feed)
TOKENS = (WETH, WBTC, WSOL)


def make_state() -> pm.ProtocolState:
    """Three feeds, four markets (two on ETH/USD) and three collaterals (WETH shares ETH/USD)."""
    feeds = {f: pm.Feed(f, 8, START[f], T0, 1, 1, MAX_PRICE // SCALE) for f in FEEDS}
    markets = [
        pm.Market(0, ETH_FEED, SCALE, WAD // 10, WAD // 20, WAD // 50, 5 * 10**14, name="ETH-PERP"),
        pm.Market(1, BTC_FEED, SCALE, WAD // 10, WAD // 20, WAD // 50, 5 * 10**14, name="BTC-PERP"),
        pm.Market(2, SOL_FEED, SCALE, WAD // 5, WAD // 10, WAD // 20, 5 * 10**14, name="SOL-PERP"),
        pm.Market(3, ETH_FEED, SCALE, WAD // 4, 3 * WAD // 20, WAD // 20, 5 * 10**14, name="ETH-PERP2"),
    ]
    collaterals = [
        pm.Collateral(WETH, ETH_FEED, SCALE, 18, 10**18, 80 * 10**16, 85 * 10**16, 5 * 10**16, 0, 0, "WETH"),
        pm.Collateral(WBTC, BTC_FEED, SCALE, 8, 10**8, 75 * 10**16, 80 * 10**16, 5 * 10**16, 0, 1, "WBTC"),
        pm.Collateral(WSOL, SOL_FEED, SCALE, 9, 10**9, 50 * 10**16, 60 * 10**16, 10 * 10**16, 0, 2, "WSOL"),
    ]
    params = pm.Params(USDC, 10**12, WAD // 2, 3_600, 10 * WAD, owner=OWNER)
    state = pm.ProtocolState(ENGINE, params, markets, collaterals, feeds, timestamp=T0)
    state.house.cash = 10_000_000 * WAD
    return state


# One account: (positions {market: (size, entry in whole USD)}, collateral {token: balance}, offset of
# maint_health from zero in USD at the current prices).
accounts_st = st.tuples(
    st.dictionaries(st.integers(0, MARKETS - 1),
                    st.tuples(st.integers(-50 * WAD, 50 * WAD).filter(bool), st.integers(90, 110)), max_size=MARKETS),
    st.dictionaries(st.sampled_from(TOKENS), st.integers(1, 10**20), max_size=len(TOKENS)),
    st.integers(-300, 3_000),
)


def fill(state: pm.ProtocolState, acc: pm.Account, drawn: tuple) -> None:
    """Give ``acc`` the drawn holdings, with cash set so that maint_health = offset USD."""
    positions, collateral, offset = drawn
    acc.positions.clear()
    acc.collateral.clear()
    acc.cash = 0
    for m, (size, entry_pct) in positions.items():
        market = state.markets[m]
        mark = state.feeds[market.feed].answer * SCALE
        acc.positions[m] = pm.Position(size, -pm.mul_down(size, mark * entry_pct // 100))
    acc.collateral.update(collateral)
    acc.cash = offset * WAD - pm.health(state, acc).maint_health


def scan(state: pm.ProtocolState) -> list[str]:
    return sorted(a for a, acc in state.accounts.items() if pm.is_liquidatable(state, acc))


def assert_equal_to_scan(book: HealthBook, state: pm.ProtocolState) -> None:
    assert sorted(book.liquidatable()) == scan(state)
    for acc in list(state.accounts.values()) + [state.house]:
        assert book.health(acc.address) == pm.health(state, acc), acc.address


# ---------------------------------------------------------------- the property: equal to the scan


class IndexAgainstScan(RuleBasedStateMachine):
    """Random books near the threshold; random single and multi-feed moves, unusable answers,
    account updates and new accounts; after every step the book's liquidatable set (and every
    health it reports) equals the full scan's."""

    @initialize(drawn=st.lists(accounts_st, min_size=1, max_size=25), resort_min=st.sampled_from([0, 3, 1024]),
                rereference_min=st.sampled_from([0, 10**9]))
    def build(self, drawn: list, resort_min: int, rereference_min: int) -> None:
        self.state = make_state()
        self.count = 0
        for d in drawn:
            self._new(d)
        self.book = HealthBook(self.state)
        self.book.RESORT_MIN = resort_min              # 0: sort again after any update; 1024: never here
        self.book.REREFERENCE_MIN = rereference_min    # 0: re-reference whenever a quarter are candidates
        note(f"{len(drawn)} accounts, resort_min={resort_min}, rereference_min={rereference_min}")

    def _new(self, drawn: tuple) -> str:
        address = "0x" + f"{0x1000 + self.count:040x}"
        self.count += 1
        fill(self.state, self.state.account(address), drawn)
        return address

    def _set(self, feed: str, answer: int) -> None:
        note(f"{feed[-2:]} -> {answer}")
        self.book.update_price(feed, answer, T0, None)

    @rule(feed=st.sampled_from(FEEDS), bps=st.integers(-3_000, 3_000))
    def move_one(self, feed: str, bps: int) -> None:
        answer = self.state.feeds[feed].answer
        self._set(feed, max(1, answer + answer * bps // 10_000))

    @rule(bps=st.lists(st.integers(-500, 500), min_size=len(FEEDS), max_size=len(FEEDS)))
    def move_all(self, bps: list[int]) -> None:
        for feed, b in zip(FEEDS, bps):
            answer = self.state.feeds[feed].answer
            self._set(feed, max(1, answer + answer * b // 10_000))

    @rule(feed=st.sampled_from(FEEDS), answer=st.sampled_from([0, -1, MAX_PRICE // SCALE + 1, 2**200]))
    def unusable(self, feed: str, answer: int) -> None:
        self._set(feed, answer)

    @rule(feed=st.sampled_from(FEEDS))
    def back_to_start(self, feed: str) -> None:
        self._set(feed, START[feed])

    @precondition(lambda self: self.count > 0)
    @rule(which=st.integers(0, 10**6), drawn=accounts_st)
    def update_account(self, which: int, drawn: tuple) -> None:
        address = "0x" + f"{0x1000 + which % self.count:040x}"
        fill(self.state, self.state.accounts[address], drawn)
        self.book.apply_account(self.state.accounts[address])

    @rule(drawn=accounts_st)
    def add_account(self, drawn: tuple) -> None:
        address = self._new(drawn)
        self.book.apply_account(self.state.accounts[address])

    @invariant()
    def equal_to_scan(self) -> None:
        if hasattr(self, "book"):
            assert_equal_to_scan(self.book, self.state)


TestIndexAgainstScan = IndexAgainstScan.TestCase


@settings(max_examples=60)
@given(drawn=st.lists(accounts_st, min_size=1, max_size=20),
       answers=st.lists(st.tuples(*(st.integers(1, 4 * START[f]) for f in FEEDS)), min_size=1, max_size=4))
def test_every_liquidatable_account_is_a_candidate(drawn: list, answers: list) -> None:
    """The index's own guarantee, at arbitrary price vectors (every feed moved at once): every
    account with maint_health < 0 is among ``LiqIndex.candidates()``, before the book recomputes."""
    state = make_state()
    for i, d in enumerate(drawn):
        fill(state, state.account("0x" + f"{0x1000 + i:040x}"), d)
    book = HealthBook(state)
    index = book._index
    assert isinstance(index, LiqIndex)
    for vector in answers:
        for feed, answer in zip(FEEDS, vector):
            state.feeds[feed].answer = answer
            index.move(feed, pm.answer_to_price(answer, SCALE))
        candidates = {book._addr[s] for s in index.candidates().tolist()}
        assert set(scan(state)) <= candidates
        for feed in FEEDS:       # back to the prices the book has applied, then let the book apply these
            index.move(feed, book.price(feed))
        for feed, answer in zip(FEEDS, vector):
            book.update_price(feed, answer, T0)
        assert_equal_to_scan(book, state)


# ---------------------------------------------------------------- edge cases


def near_book(n: int, seed: int) -> pm.ProtocolState:
    rng = random.Random(seed)
    state = make_state()
    for i in range(n):
        positions = {m: (rng.choice([1, -1]) * rng.randint(1, 20 * WAD), rng.randint(95, 105))
                     for m in rng.sample(range(MARKETS), rng.randint(1, 3))}
        collateral = {t: rng.randint(1, 10**19) for t in rng.sample(TOKENS, rng.randint(0, 2))}
        fill(state, state.account("0x" + f"{0x1000 + i:040x}"), (positions, collateral, rng.randint(50, 20_000)))
    return state


def test_a_small_move_recomputes_only_the_candidates() -> None:
    state = near_book(2_000, seed=1)
    book = HealthBook(state)
    book.update_price(ETH_FEED, START[ETH_FEED] * 99 // 100, T0)      # -1 %
    assert 0 < book.last_candidates < len(book) // 4
    assert_equal_to_scan(book, state)
    book.update_price(BTC_FEED, START[BTC_FEED] * 101 // 100, T0)     # then +1 % on another feed: k = 2
    assert 0 < book.last_candidates < len(book) // 2
    assert book.rereferences == 0
    assert_equal_to_scan(book, state)


@pytest.mark.parametrize("answer", [0, -7, MAX_PRICE // SCALE + 1])
def test_an_unusable_answer_makes_every_exposed_account_a_candidate(answer: int) -> None:
    state = near_book(300, seed=2)
    book = HealthBook(state)
    exposed = book.exposed(SOL_FEED)
    assert 0 < len(exposed) < len(book)
    book.update_price(SOL_FEED, answer, T0)
    assert book.last_candidates >= len(exposed)
    assert_equal_to_scan(book, state)
    book.update_price(SOL_FEED, START[SOL_FEED], T0)                   # usable again
    assert_equal_to_scan(book, state)


def test_an_account_without_exposure_stays_where_it_is() -> None:
    state = make_state()
    broke = state.account("0x" + "11" * 20)
    broke.cash = -WAD                                                  # liquidatable at every price: hot
    rich = state.account("0x" + "22" * 20)
    rich.cash = WAD                                                    # never a candidate
    book = HealthBook(state)
    assert book.liquidatable() == [broke.address]
    book.update_price(ETH_FEED, 1, T0)
    assert book.liquidatable() == [broke.address]
    assert book.health(rich.address) == (WAD, WAD, WAD)


def test_the_exact_boundary_one_wei_either_side() -> None:
    """maint_health == 0 is not liquidatable; the first answer that makes it negative is found
    even when it is one feed unit away."""
    state = make_state()
    acc = state.account("0x" + "33" * 20)
    fill(state, acc, ({0: (WAD, 100)}, {}, 0))                         # long 1 ETH, maint_health exactly 0
    assert pm.health(state, acc).maint_health == 0
    other = state.account("0x" + "44" * 20)
    fill(state, other, ({1: (-WAD, 100)}, {WBTC: 10**8}, 10_000))
    book = HealthBook(state)
    assert book.liquidatable() == []
    lp = pm.feed_liquidation_price(state, acc, ETH_FEED)
    assert lp is not None
    book.update_price(ETH_FEED, lp // SCALE + 1, T0)                   # one unit above: still healthy
    assert book.liquidatable() == []
    book.update_price(ETH_FEED, lp // SCALE, T0)
    assert book.liquidatable() == [acc.address]
    assert_equal_to_scan(book, state)


def test_accounts_updated_after_the_sort_are_never_missed() -> None:
    """An account changed (or added) after the index was sorted has a stale sorted entry; it is
    tested anyway until the next sort."""
    state = near_book(50, seed=3)
    book = HealthBook(state)
    book.RESORT_MIN = 10**9                                            # keep the sorted arrays stale
    victim = next(iter(state.accounts.values()))
    fill(state, victim, ({0: (40 * WAD, 100)}, {}, 1))                 # 1 USD from the threshold
    book.apply_account(victim)
    newcomer = state.account("0x" + "55" * 20)
    fill(state, newcomer, ({0: (-40 * WAD, 100)}, {}, 1))
    book.apply_account(newcomer)
    book.update_price(ETH_FEED, START[ETH_FEED] - 10**8, T0)           # 1 USD down: 40 ETH long lose 40 USD
    assert victim.address in book.liquidatable()
    book.update_price(ETH_FEED, START[ETH_FEED] + 10**8, T0)           # 1 USD up: the short loses 40 USD
    assert newcomer.address in book.liquidatable()
    assert_equal_to_scan(book, state)


def test_drift_re_references_and_stays_exact() -> None:
    state = near_book(400, seed=4)
    book = HealthBook(state)
    book.REREFERENCE_MIN = 0
    for step in range(1, 6):                                           # ETH down 6 % at a time
        book.update_price(ETH_FEED, START[ETH_FEED] * (100 - 6 * step) // 100, T0 + step)
        assert_equal_to_scan(book, state)
    assert book.rereferences >= 1
    assert book._index is not None and book._index.reference[ETH_FEED] != START[ETH_FEED] * SCALE


def test_reindex_when_idle_shrinks_the_candidates() -> None:
    state = near_book(1_000, seed=7)
    book = HealthBook(state)
    book.update_price(ETH_FEED, START[ETH_FEED] * 92 // 100, T0)       # -8 %
    book.update_price(ETH_FEED, START[ETH_FEED] * 91 // 100, T0)       # one more percent
    drifted = book.last_candidates
    book.reindex()
    assert_equal_to_scan(book, state)
    book.update_price(ETH_FEED, START[ETH_FEED] * 92 // 100, T0)       # the same one percent, from the new reference
    assert book.last_candidates < drifted
    assert_equal_to_scan(book, state)


def test_scan_and_index_books_agree() -> None:
    state = near_book(500, seed=5)
    indexed, scanned = HealthBook(state), HealthBook(state, index=False)
    rng = random.Random(6)
    for step in range(20):
        feed = rng.choice(FEEDS)
        answer = state.feeds[feed].answer * rng.randint(950, 1050) // 1000
        indexed.update_price(feed, answer, T0 + step)
        scanned.update_price(feed, answer, T0 + step)
        assert indexed.liquidatable() == scanned.liquidatable()
    for address in state.accounts:
        assert indexed.health(address) == scanned.health(address)
