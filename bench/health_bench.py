"""Recompute the health of 100,000 accounts after one price change, on the exact integer path.

    python bench/health_bench.py                    # 100,000 accounts, seed 1
    python bench/health_bench.py --accounts 20000 --seed 7 --move -0.05

Each account holds two perp positions (ETH-PERP, BTC-PERP) and two collaterals (WETH, WBTC), with
seeded random sizes, entries, balances and cash; the house books the opposite of every position.
The ETH/USD feed then moves (default -10 %), and the benchmark times (best of --repeat runs):

* ``HealthBook.update_price``: protocol_model.health's incremental fast path (only the terms the
  moved feed prices are recomputed), against the target of under one second;
* a naive loop of ``health.health`` over every account, for comparison.

Both are checked: the liquidatable sets must be equal, and a random sample of the book's results
must equal ``health.health`` exactly. Exit status 1 on a mismatch, 2 if the fast path misses the
target.
"""

from __future__ import annotations

import argparse
import importlib
import random
import statistics
import sys
import time
from fractions import Fraction
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

# The package re-exports the function ``health``, which hides the submodule of the same name.
health_mod = importlib.import_module("protocol_model.health")
from protocol_model.state import Account, Collateral, Feed, Market, Params, Position, ProtocolState  # noqa: E402
from protocol_model.wad import WAD  # noqa: E402

TARGET_SECONDS = 1.0
ENGINE = "0x" + "ee" * 20
ETH_FEED = "0x" + "e0" * 20
BTC_FEED = "0x" + "b0" * 20
USDC = "0x" + "dc" * 20
WETH = "0x" + "e1" * 20
WBTC = "0x" + "b1" * 20


def build_state(n: int, seed: int) -> ProtocolState:
    """The default listing with ``n`` accounts, each with 2 positions and 2 collaterals."""
    rng = random.Random(seed)
    params = Params(quote_token=USDC, quote_scale=10**12, keeper_share=WAD // 2, max_price_age=3_600,
                    dust_notional=10 * WAD, owner="0x" + "01" * 20)
    markets = [
        Market(0, ETH_FEED, 10**10, WAD // 10, WAD // 20, WAD // 50, 5 * 10**14, name="ETH-PERP"),
        Market(1, BTC_FEED, 10**10, WAD // 10, WAD // 20, WAD // 50, 5 * 10**14, name="BTC-PERP"),
    ]
    collaterals = [
        Collateral(WETH, ETH_FEED, 10**10, 18, 10**18, 80 * 10**16, 85 * 10**16, 5 * 10**16, index=0, symbol="WETH"),
        Collateral(WBTC, BTC_FEED, 10**10, 8, 10**8, 75 * 10**16, 80 * 10**16, 5 * 10**16, index=1, symbol="WBTC"),
    ]
    feeds = {
        ETH_FEED: Feed(ETH_FEED, 8, 2_000 * 10**8, 1_000, round_id=1),
        BTC_FEED: Feed(BTC_FEED, 8, 60_000 * 10**8, 1_000, round_id=1),
    }
    state = ProtocolState(ENGINE, params, markets, collaterals, feeds, total_collateral={WETH: 0, WBTC: 0},
                          timestamp=1_000, block=1)
    house = state.house
    assert house is not None  # dev: ProtocolState always creates it
    house.cash = 10**9 * WAD
    h_size = [0, 0]
    h_quote = [0, 0]
    for i in range(n):
        addr = "0x" + f"{i + 1:040x}"
        acc = Account(addr)
        # Positions: up to +-40 ETH and +-1.5 BTC, entered within +-8 % of today's price.
        for m, (max_size, px) in enumerate(((40 * WAD, 2_000), (3 * WAD // 2, 60_000))):
            size = rng.randint(-max_size, max_size) or 1
            entry = px * WAD * rng.randint(92_000, 108_000) // 100_000
            quote = -(size * entry // WAD)
            acc.positions[m] = Position(size, quote)
            h_size[m] -= size
            h_quote[m] -= quote
        # Collaterals: up to 8 WETH (18 decimals) and 0.3 WBTC (8 decimals), never zero.
        weth = rng.randint(1, 8 * 10**18)
        wbtc = rng.randint(1, 3 * 10**7)
        acc.collateral = {WETH: weth, WBTC: wbtc}
        state.total_collateral[WETH] += weth
        state.total_collateral[WBTC] += wbtc
        acc.cash = rng.randint(-5_000 * WAD, 40_000 * WAD)
        state.accounts[addr] = acc
    for m in (0, 1):
        house.positions[m] = Position(h_size[m], h_quote[m])
    return state


def fmt_rate(n: int, seconds: float) -> str:
    return f"{n / seconds:,.0f}" if seconds > 0 else "inf"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--accounts", type=int, default=100_000, help="number of accounts (default 100,000)")
    ap.add_argument("--seed", type=int, default=1, help="random seed for the account book (default 1)")
    ap.add_argument("--move", type=str, default="-0.10", help="ETH price move as a decimal fraction (default -0.10)")
    ap.add_argument("--repeat", type=int, default=3, help="timed runs of each method; the best is reported (default 3)")
    ap.add_argument("--sample", type=int, default=2_000, help="accounts checked against health.health (default 2,000)")
    args = ap.parse_args(argv)
    n = args.accounts
    move = Fraction(args.move)

    t0 = time.perf_counter()
    state = build_state(n, args.seed)
    t_build_state = time.perf_counter() - t0

    fast_path = getattr(health_mod, "HealthBook", None)
    rows: list[tuple[str, int, list[float], int]] = []
    book = None
    if fast_path is not None:
        t0 = time.perf_counter()
        book = fast_path(state)
        t_build_book = time.perf_counter() - t0
        before = len(book.liquidatable())
    else:
        t_build_book = 0.0
        before = sum(1 for a in state.accounts.values() if health_mod.health(state, a).maint_health < 0)

    feed = state.feeds[ETH_FEED]
    old_answer = feed.answer
    new_answer = int(feed.answer * (1 + move))       # the benchmark's input; the exact path starts here
    updated_at = feed.updated_at + 12

    repeats = max(1, args.repeat)
    if book is not None:
        fast_times: list[float] = []
        for r in range(repeats):
            if r:   # move back (untimed) so that every timed run is the same move
                book.update_price(ETH_FEED, old_answer, updated_at)
            t0 = time.perf_counter()
            changed = book.update_price(ETH_FEED, new_answer, updated_at)
            fast_times.append(time.perf_counter() - t0)
        t_fast = min(fast_times)
        fast_liq = book.liquidatable()
        rows.append(("HealthBook.update_price", n, fast_times, len(fast_liq)))
    else:
        feed.answer, feed.updated_at, feed.round_id = new_answer, updated_at, feed.round_id + 1
        changed = set()
        fast_liq = []

    naive_times: list[float] = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        naive_liq = [a for a, acc in state.accounts.items() if health_mod.health(state, acc).maint_health < 0]
        naive_times.append(time.perf_counter() - t0)
    t_naive = min(naive_times)
    rows.append(("health.health loop (naive)", n, naive_times, len(naive_liq)))

    print(f"accounts: {n:,} x (2 positions + 2 collaterals), seed {args.seed}; "
          f"ETH/USD {old_answer // 10**8:,} -> {new_answer // 10**8:,} ({args.move})")
    print(f"setup: state built in {t_build_state:.2f} s" +
          (f", HealthBook built in {t_build_book:.2f} s" if book is not None else ", no HealthBook in protocol_model.health"))
    print(f"liquidatable before the move: {before:,}" + (f"; health changed for {len(changed):,} accounts" if book else ""))
    print()
    header = (f"{'method':<30} {'accounts':>10} {'seconds':>9} {'median s':>9} {'accounts/s':>13} "
              f"{'liquidatable':>13}")
    print(header)
    print("-" * len(header))
    for name, count, times, liq in rows:
        best = min(times)
        print(f"{name:<30} {count:>10,} {best:>9.3f} {statistics.median(times):>9.3f} "
              f"{fmt_rate(count, best):>13} {liq:>13,}")
    print(f"(seconds: best of {repeats} runs, as timeit reports; the machine may be shared)")
    print()

    status = 0
    if book is not None:
        if set(fast_liq) != set(naive_liq):
            print(f"MISMATCH: liquidatable sets differ ({len(fast_liq)} vs {len(naive_liq)})")
            status = 1
        rng = random.Random(args.seed + 1)
        sample = rng.sample(sorted(state.accounts), min(args.sample, n))
        bad = [a for a in sample if book.health(a) != health_mod.health(state, state.accounts[a])]
        house = state.house
        if house is not None and book.health(house.address) != health_mod.health(state, house):
            bad.append(house.address)
        print(f"check: {len(sample):,} sampled accounts and the house equal health.health exactly: "
              f"{'yes' if not bad else f'NO ({len(bad)} differ)'}")
        if bad:
            status = 1
        verdict = "met" if t_fast < TARGET_SECONDS else "MISSED"
        print(f"target: under {TARGET_SECONDS:.0f} s for one price change -> {verdict} ({t_fast:.3f} s)")
        if status == 0 and t_fast >= TARGET_SECONDS:
            status = 2
    else:
        verdict = "met" if t_naive < TARGET_SECONDS else "MISSED"
        print(f"no fast path (HealthBook) in protocol_model.health: naive figure only; target {verdict}")
    return status


if __name__ == "__main__":
    sys.exit(main())
