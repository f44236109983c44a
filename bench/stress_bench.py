"""Stress engine benchmark: paths per second per core, and the speed-up from 1 to 2 Ray workers.

    python bench/stress_bench.py                                   # 1,000 and 10,000 accounts
    python bench/stress_bench.py --accounts 1000 --paths 48 --seed 1

For each number of accounts N: the seeded population (``--seed``), the default price model of
``xmargin simulate stress`` (28 steps over 7 days, 100 % volatility, correlation 0.8, crash
events 10 a year of -15 % +- 5 %) and the default keepers (the bot's decision function, 30 gwei,
backstop). The same paths run three times:

* **plain loop** (the baseline): :func:`simulator.stress.engine.run_path` path after path in this
  process, no Ray: one core;
* **Ray, 1 worker** and **Ray, 2 workers**: :func:`simulator.stress.runner.run` with at most 1 or 2
  tasks in flight on a local Ray started once with 2 CPUs (its start-up and a warm-up of two paths,
  in which both workers import the engine, are not timed; shipping the state to the workers is).

The scaling is the 2-worker rate over the 1-worker rate. Paths per CPU-second is the engine's
speed per core whatever the neighbours do (paths over the CPU seconds the workers spent on them);
equal figures for 1 and 2 workers mean the workers do not slow each other down. The three runs give identical results (checked: the bench fails if
not). Paths differ in cost (a crash path liquidates thousands of accounts), so use enough paths
for two workers to share them evenly. On a shared machine the scaling says as much about the
neighbours as about the engine, so the table also prints the load average and the cores the
workers obtained (their CPU seconds on the paths over the wall time: 2.00 is two idle cores).
The table asserts nothing else.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from rich.console import Console  # noqa: E402
from rich.table import Table  # noqa: E402

from simulator.stress.engine import KeeperSettings, run_path  # noqa: E402
from simulator.stress.paths import PathModel  # noqa: E402
from simulator.stress.runner import Job, ensure_ray, run  # noqa: E402
from simulator.stress.study import gas_feed, seeded_state  # noqa: E402


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--accounts", type=int, action="append", help="accounts (repeatable; default 1,000 and 10,000)")
    ap.add_argument("--paths", type=int, action="append",
                    help="paths per run, one per --accounts (default 48 at 1,000 and 8 at 10,000)")
    ap.add_argument("--seed", type=int, default=1)
    args = ap.parse_args()
    sizes = args.accounts or [1_000, 10_000]
    counts = args.paths or [48 if n <= 1_000 else 8 for n in sizes]
    if len(counts) != len(sizes):
        ap.error("give one --paths per --accounts")
    ray = ensure_ray(2, None)
    table = Table(title="stress engine: paths per second (28 steps per path)")
    for col in ("accounts", "paths", "plain loop\npaths/s", "Ray 1 worker\npaths/s", "Ray 2 workers\npaths/s",
                "scaling\n1 -> 2", "paths per CPU-s\n1 / 2 workers", "cores obtained\n1 / 2 workers",
                "load avg\nbefore/after"):
        table.add_column(col, justify="right")
    for n, count in zip(sizes, counts):
        state = seeded_state(n, args.seed)
        feeds = tuple(state.feeds)
        paths = PathModel(feeds, tuple(state.feeds[f].answer for f in feeds), (1.0,) * len(feeds))
        keepers = KeeperSettings(gas_feed=gas_feed(state))
        run([Job(state, keepers)], paths, 2, args.seed, 2)   # warm-up: both workers import the engine
        load_before = os.getloadavg()[0]
        t = time.perf_counter()
        plain = [run_path(state, paths, keepers, args.seed, i) for i in range(count)]
        t_plain = time.perf_counter() - t
        rates, cores, per_cpu = {}, {}, {}
        for workers in (1, 2):
            stats: dict[str, float] = {}
            t = time.perf_counter()
            (results,) = run([Job(state, keepers)], paths, count, args.seed, workers, stats=stats)
            wall = time.perf_counter() - t
            rates[workers], cores[workers] = count / wall, stats["cpu_s"] / wall
            per_cpu[workers] = count / stats["cpu_s"]
            if [r.to_json() for r in results] != [r.to_json() for r in plain]:
                print(f"error: Ray with {workers} workers gave other results than the plain loop", file=sys.stderr)
                return 1
        load_after = os.getloadavg()[0]
        table.add_row(f"{n:,}", str(count), f"{count / t_plain:.2f}", f"{rates[1]:.2f}", f"{rates[2]:.2f}",
                      f"{rates[2] / rates[1]:.2f}x", f"{per_cpu[1]:.2f} / {per_cpu[2]:.2f}",
                      f"{cores[1]:.2f} / {cores[2]:.2f}", f"{load_before:.2f} / {load_after:.2f}")
    ray.shutdown()
    Console(width=160).print(table)
    print(f"python bench/stress_bench.py --seed {args.seed} " + " ".join(
        f"--accounts {n} --paths {c}" for n, c in zip(sizes, counts)) + f"   ({os.cpu_count()} cores)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
