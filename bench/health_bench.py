"""A price move over 100,000 and 1,000,000 accounts: the liquidation-price index against the scan.

    python bench/health_bench.py                             # 100,000 and 1,000,000 accounts, ETH -1 %
    python bench/health_bench.py --accounts 20000 --seed 7 --move -0.05 --naive

Each account holds two perp positions (ETH-PERP, BTC-PERP) and two collaterals (WETH, WBTC), with
seeded random sizes, entries, balances and cash; the house books the opposite of every position.
The ETH/USD feed then moves (default -1 %), and for each size the benchmark times, side by side in
one run (best of --repeat runs; each timed run is the same move from the same prices):

* ours, ``HealthBook(index=True).update_price``: the per-feed liquidation-price index
  (protocol_model.liqindex) yields the candidates (*detection*, the target: under 50 ms at
  1,000,000 accounts), whose exact health is then recomputed (*exact*);
* the baseline, ``HealthBook(index=False).update_price``: every column the feed prices is repriced
  for every account (the full repricing scan; its detection is the whole update);
* with --naive, a loop of ``health.health`` over every account.

Memory per account is the resident-set (RSS) growth while each book is built, divided by the number
of accounts (``/proc/self/statm``; the index's own arrays are shown apart). Both books are checked:
equal liquidatable sets, and a random sample of the index book's results equal to ``health.health``
exactly (a read of an account the update did not recompute recomputes it on demand). Exit status 1
on a mismatch, 2 if detection misses the target at 1,000,000 accounts.
"""

from __future__ import annotations

import argparse
import gc
import importlib
import os
import random
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

TARGET_SECONDS = 0.050    # candidate detection at 1,000,000 accounts (issue 12)
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


def rss_bytes() -> int:
    """Resident set size of this process (Linux ``/proc/self/statm``; 0 elsewhere)."""
    try:
        with open("/proc/self/statm") as fh:
            return int(fh.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError):
        return 0


def timed_book(state: ProtocolState, index: bool) -> tuple[object, float, int]:
    gc.collect()
    before = rss_bytes()
    t0 = time.perf_counter()
    book = health_mod.HealthBook(state, index=index)
    seconds = time.perf_counter() - t0
    gc.collect()
    return book, seconds, rss_bytes() - before


def run(n: int, args: argparse.Namespace, move: Fraction) -> tuple[list[tuple], int]:
    t0 = time.perf_counter()
    state = build_state(n, args.seed)
    t_state = time.perf_counter() - t0
    scan_book, t_scan_build, scan_rss = timed_book(state, index=False)
    ours, t_ours_build, ours_rss = timed_book(state, index=True)
    before = len(ours.liquidatable())
    feed = state.feeds[ETH_FEED]
    old_answer = feed.answer
    new_answer = int(feed.answer * (1 + move))
    updated_at = feed.updated_at + 12
    repeats = max(1, args.repeat)

    def timed(book: object) -> tuple[list[float], list[float], list[int]]:
        totals, detect, cands = [], [], []
        for r in range(repeats):
            if r:   # move back (untimed) so that every timed run is the same move from the same prices
                book.update_price(ETH_FEED, old_answer, updated_at)
            t0 = time.perf_counter()
            book.update_price(ETH_FEED, new_answer, updated_at)
            totals.append(time.perf_counter() - t0)
            detect.append(getattr(book, "last_detection_s", 0.0) if book.indexed else totals[-1])
            cands.append(book.last_candidates if book.indexed else n + 1)
        return totals, detect, cands

    ours_t, ours_d, ours_c = timed(ours)
    ours_liq = ours.liquidatable()
    scan_t, scan_d, scan_c = timed(scan_book)
    scan_liq = scan_book.liquidatable()
    best = min(range(repeats), key=lambda i: ours_t[i])
    rows = [
        ("index (ours)", n, ours_c[best], min(ours_d), ours_t[best] - ours_d[best], min(ours_t), len(ours_liq),
         ours_rss / n, ours._index.nbytes() / n, t_ours_build),
        ("full repricing scan (baseline)", n, scan_c[0], min(scan_d), 0.0, min(scan_t), len(scan_liq),
         scan_rss / n, 0.0, t_scan_build),
    ]
    if args.naive:
        naive_times = []
        for _ in range(repeats):
            t0 = time.perf_counter()
            naive_liq = [a for a, acc in state.accounts.items() if health_mod.health(state, acc).maint_health < 0]
            naive_times.append(time.perf_counter() - t0)
        rows.append(("health.health loop (naive)", n, n, min(naive_times), 0.0, min(naive_times), len(naive_liq),
                     0.0, 0.0, 0.0))
    print(f"{n:,} accounts: state built in {t_state:.1f} s; liquidatable before the move {before:,}, after {len(ours_liq):,}; "
          f"ETH/USD {old_answer // 10**8:,} -> {new_answer / 10**8:,.2f} ({args.move})")

    status = 0
    if set(ours_liq) != set(scan_liq) or (args.naive and set(ours_liq) != set(naive_liq)):
        print(f"MISMATCH: liquidatable sets differ ({len(ours_liq)} index vs {len(scan_liq)} scan)")
        status = 1
    rng = random.Random(args.seed + 1)
    sample = rng.sample(sorted(state.accounts), min(args.sample, n)) + sorted(ours_liq)[:args.sample]
    bad = [a for a in sample if ours.health(a) != health_mod.health(state, state.accounts[a])]
    house = state.house
    if house is not None and ours.health(house.address) != health_mod.health(state, house):
        bad.append(house.address)
    print(f"check: {len(sample):,} sampled and liquidatable accounts and the house equal health.health exactly: "
          f"{'yes' if not bad else f'NO ({len(bad)} differ)'}")
    if bad:
        status = 1
    return rows, status


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--accounts", type=str, default="100000,1000000",
                    help="comma-separated numbers of accounts (default 100000,1000000)")
    ap.add_argument("--seed", type=int, default=1, help="random seed for the account book (default 1)")
    ap.add_argument("--move", type=str, default="-0.01", help="ETH price move as a decimal fraction (default -0.01)")
    ap.add_argument("--repeat", type=int, default=3, help="timed runs of each method; the best is reported (default 3)")
    ap.add_argument("--sample", type=int, default=2_000, help="accounts checked against health.health (default 2,000)")
    ap.add_argument("--naive", action="store_true", help="also time a health.health loop over every account (slow)")
    args = ap.parse_args(argv)
    try:
        sizes = [int(x.replace("_", "")) for x in args.accounts.split(",") if x.strip()]
        move = Fraction(args.move)
    except ValueError as exc:
        ap.error(f"bad --accounts or --move: {exc}")
    if not sizes or min(sizes) < 1 or not -1 < move:
        ap.error("--accounts needs positive counts and --move a fraction above -1")

    rows: list[tuple] = []
    status = 0
    for n in sizes:
        r, s = run(n, args, move)
        rows += r
        status = max(status, s)
    print()
    header = (f"{'method':<31} {'accounts':>10} {'candidates':>10} {'detect ms':>10} {'exact ms':>9} {'total ms':>9} "
              f"{'liquidatable':>12} {'RSS B/acct':>10} {'index B/acct':>12} {'build s':>8}")
    print(header)
    print("-" * len(header))
    for name, count, cands, detect, exact, total, liq, rss, idx, build in rows:
        print(f"{name:<31} {count:>10,} {cands:>10,} {detect * 1e3:>10.1f} {exact * 1e3:>9.1f} {total * 1e3:>9.1f} "
              f"{liq:>12,} {rss:>10,.0f} {idx:>12,.0f} {build:>8.1f}")
    print(f"(best of {args.repeat} runs; candidates: accounts whose health the update recomputes, every account "
          f"for the scan; RSS B/acct: resident-set growth while the book is built / accounts; the machine may be shared)")
    big = [r for r in rows if r[0] == "index (ours)" and r[1] >= 1_000_000]
    for r in big:
        verdict = "met" if r[3] < TARGET_SECONDS else "MISSED"
        print(f"target: candidate detection under {TARGET_SECONDS * 1e3:.0f} ms at {r[1]:,} accounts -> {verdict} ({r[3] * 1e3:.1f} ms)")
        if verdict == "MISSED" and status == 0:
            status = 2
    return status


if __name__ == "__main__":
    sys.exit(main())
