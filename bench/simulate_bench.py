"""How fast the liquidator competition runs: the off-chain mode (the exact model) against the
on-chain mode (real bots on an in-process dev node) on the same scenario, side by side.

    python bench/simulate_bench.py                         # 60 traders, seed 3, ETH and BTC -15 %
    python bench/simulate_bench.py --rounds 2000 --onchain-rounds 10

The off-chain run mines ``--rounds`` blocks after the shock, the on-chain run ``--onchain-rounds``
(each on-chain round is a real block with real bots, about a second); the table shows the time of
each, per round, and the liquidations found, so the two are compared per round. Set-up (seeding,
deploying) is timed apart from the race. Both runs use the same four strategies.
"""

from __future__ import annotations

import argparse
import logging
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from simulator.competition.agents import Scenario, parse_strategies  # noqa: E402
from simulator.competition.offchain import Initial, run_offchain  # noqa: E402
from simulator.competition.onchain import OnchainSimulation  # noqa: E402

PCT = 10**16
STRATEGY = "fixed:2gwei,profit-share:50%,rebid,fixed:1gwei@2"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--accounts", type=int, default=60)
    ap.add_argument("--seed", type=int, default=3)
    ap.add_argument("--rounds", type=int, default=2_000, help="blocks of the off-chain run")
    ap.add_argument("--onchain-rounds", type=int, default=10, help="blocks of the on-chain run")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.ERROR)  # the bots' lost races are the point here, not news
    shocks = (("ETH", -15 * PCT), ("BTC", -15 * PCT))
    agents = parse_strategies(STRATEGY, 4)
    rows = []

    t0 = time.perf_counter()
    initial = Initial.build(args.accounts, args.seed)
    setup = time.perf_counter() - t0
    t0 = time.perf_counter()
    report = run_offchain(Scenario(args.accounts, args.seed, shocks, args.rounds), agents, initial=initial)
    race = time.perf_counter() - t0
    rows.append(("offchain (model)", args.rounds, setup, race, len(report.liquidations)))

    t0 = time.perf_counter()
    with OnchainSimulation(Scenario(args.accounts, args.seed, shocks, args.onchain_rounds), agents) as sim:
        setup = time.perf_counter() - t0
        t0 = time.perf_counter()
        report = sim.run()
        race = time.perf_counter() - t0
    rows.append(("onchain (dev node)", args.onchain_rounds, setup, race, len(report.liquidations)))

    print(f"liquidator competition: {args.accounts} traders, seed {args.seed}, ETH and BTC -15 %, 4 bots ({STRATEGY})")
    print(f"{'mode':<20} {'rounds':>7} {'set-up (s)':>11} {'race (s)':>9} {'ms / round':>11} {'liquidations':>13}")
    for mode, rounds, setup, race, liquidations in rows:
        print(f"{mode:<20} {rounds:>7,} {setup:>11.2f} {race:>9.2f} {1000 * race / rounds:>11.2f} {liquidations:>13}")
    off, on = rows[0], rows[1]
    print(f"off-chain per round is {(on[3] / on[1]) / (off[3] / off[1]):,.0f}x faster than on-chain")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
