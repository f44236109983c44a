"""Run many stress paths on Ray, sweep parameters, and summarise: VaR, CVaR, depletion, cost.

* **Ray.** :func:`run` starts Ray in this process's machine (``ray.init``, ``workers`` CPUs) unless
  it is running already or ``address`` names a cluster (whose nodes need xmargin installed). Paths
  are sharded into tasks of a few paths each; at most ``workers`` tasks are in flight, so ``workers``
  is the parallelism whatever the cluster's size. A path's result depends only on the state, the
  settings, the seed and the path's index (:mod:`simulator.stress.paths`), so the results are the
  same for any number of workers and any sharding.
* **Sweeps.** ``--sweep NAME=LO:HI:STEP`` (repeatable; the grid is their product) changes the state
  before the paths run: ``imf``, ``mmf``, ``liquidation_fee`` (every market, through
  :func:`protocol_model.actions.set_market_params`, so the engine's bounds apply), ``keeper_share``,
  ``maint_weight``, ``liquidation_discount`` (every collateral; ``init_weight`` is lowered to at most
  the maintenance weight), ``insurance`` (the insurance fund at the start, USD), and the keepers'
  ``latency`` (steps). Every set runs the same paths (same seed).
* **Cost of a set** (to recommend the cheapest that meets the target): the sum, over the swept
  parameters, of its position in its range (0 at the cheap end, 1 at the dear end). Dear is a higher
  ``imf``/``mmf``/``liquidation_fee``/``liquidation_discount`` (traders post more or pay more), a
  larger insurance fund (capital), a higher ``keeper_share`` (less of each penalty for the fund), a
  lower ``maint_weight`` (collateral counts for less) and a lower ``latency`` (faster keepers).
  Ties: the lower 99 % VaR, then the grid order.
* **Figures** (:func:`summarise`): VaR at level q is the smallest of the worst ``ceil((1-q) n)``
  bad debts of ``n`` paths, CVaR their mean (rounded down); Gauntlet's VaR is the 95 % one.
  Open interest (OI) is, per market, the larger of the traders' long and short sizes at the start,
  at the starting price.
"""

from __future__ import annotations

import itertools
import logging
import math
import os
import re
import socket
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from decimal import Decimal
from typing import Any

from protocol_model.actions import set_collateral_params, set_market_params
from protocol_model.errors import ChainError, ConfigError, Revert
from protocol_model.health import price
from protocol_model.state import ProtocolState
from protocol_model.wad import WAD

from .engine import KeeperSettings, PathResult, Paths, run_path

log = logging.getLogger(__name__)

INSTALL_HINT = "ray is not installed: install the stress extra, e.g. pip install -e '.[stress]'"
TASKS_PER_WORKER = 4                 # shards per worker: load balance and a progress bar that moves
LEVELS = (95, 99)
# +1: a higher value costs more; -1: a lower value costs more.
SWEEPABLE: dict[str, int] = {
    "imf": 1, "mmf": 1, "liquidation_fee": 1, "keeper_share": 1, "maint_weight": -1,
    "liquidation_discount": 1, "insurance": 1, "latency": -1,
}
FRACTION_PARAMS = {"imf", "mmf", "liquidation_fee", "keeper_share", "maint_weight", "liquidation_discount"}
TARGET_METRICS = ("var95", "var99", "cvar95", "cvar99", "mean", "p_depleted")

Progress = Callable[[int], None]


# ---------------------------------------------------------------------- ray


def import_ray() -> Any:
    """The ``ray`` module, or a ConfigError that says how to install it (exit 2)."""
    try:
        import ray
    except ImportError:
        raise ConfigError(INSTALL_HINT) from None
    return ray


def default_workers() -> int:
    return os.cpu_count() or 1


def _run_chunk(state: ProtocolState, paths: Paths, keepers: KeeperSettings, seed: int,
               indices: Sequence[int]) -> tuple[list[PathResult], float]:
    """One task: its paths, and the CPU seconds the worker spent on them."""
    cpu = time.process_time()
    return [run_path(state, paths, keepers, seed, i) for i in indices], time.process_time() - cpu


def check_reachable(address: str, timeout: float = 5.0) -> None:
    """A TCP connection to a ``host:port`` or ``ray://host:port`` address, or ChainError (exit 3):
    Ray itself retries an unreachable cluster for minutes."""
    m = re.fullmatch(r"(?:ray://)?\[?([^\]/]+?)\]?:(\d+)/?", address.strip())
    if m is None:
        if address.strip() == "auto":
            return
        raise ConfigError(f"invalid --ray-address {address!r}: expected HOST:PORT or ray://HOST:PORT")
    try:
        socket.create_connection((m.group(1), int(m.group(2))), timeout=timeout).close()
    except OSError as exc:
        raise ChainError(f"cannot reach the Ray cluster at {address}: {exc.strerror or exc}; "
                         "start one with `ray start --head`, or leave out --ray-address") from None


def ensure_ray(workers: int, address: str | None) -> Any:
    """Ray, started if it is not: in this machine with ``workers`` CPUs, or connected to ``address``."""
    ray = import_ray()
    if address:
        check_reachable(address)
    if not ray.is_initialized():
        kwargs: dict[str, Any] = {"include_dashboard": False, "log_to_driver": False, "logging_level": logging.ERROR}
        if address:
            ray.init(address=address, **kwargs)
        else:
            # A local instance for this process only: it advertises the loopback address (Ray
            # 2.60's own servers still listen on every interface) and stops when the process ends.
            ray.init(num_cpus=workers, _node_ip_address="127.0.0.1", **kwargs)
    return ray


@dataclass(frozen=True)
class Job:
    """One parameter set's paths."""

    state: ProtocolState
    keepers: KeeperSettings


def run(jobs: Sequence[Job], paths: Paths, n_paths: int, seed: int, workers: int, address: str | None = None,
        progress: Progress | None = None, stats: dict[str, float] | None = None) -> list[list[PathResult]]:
    """Every job's ``n_paths`` paths on Ray, at most ``workers`` tasks at a time; results by path index.
    ``stats["cpu_s"]`` (if given) adds up the CPU seconds the workers spent on the paths."""
    if workers < 1:
        raise ConfigError(f"--workers must be at least 1, got {workers}")
    if n_paths < 1:
        raise ConfigError(f"--paths must be at least 1, got {n_paths}")
    ray = ensure_ray(workers, address)
    remote = ray.remote(num_cpus=1)(_run_chunk)
    size = max(1, math.ceil(n_paths / (workers * TASKS_PER_WORKER)))
    shards = [list(range(lo, min(lo + size, n_paths))) for lo in range(0, n_paths, size)]
    paths_ref = ray.put(paths)
    queue = []
    for j, job in enumerate(jobs):
        state_ref = ray.put(job.state)
        queue.extend((j, state_ref, job.keepers, shard) for shard in shards)
    out: list[list[PathResult]] = [[] for _ in jobs]
    pending: dict[Any, int] = {}
    queue.reverse()
    while queue or pending:
        while queue and len(pending) < workers:
            j, state_ref, keepers, shard = queue.pop()
            pending[remote.remote(state_ref, paths_ref, keepers, seed, shard)] = j
        ready, _ = ray.wait(list(pending), num_returns=1)
        for ref in ready:
            j = pending.pop(ref)
            results, cpu = ray.get(ref)
            out[j].extend(results)
            if stats is not None:
                stats["cpu_s"] = stats.get("cpu_s", 0.0) + cpu
            if progress is not None:
                progress(len(results))
    for results in out:
        results.sort(key=lambda r: r.index)
    return out


# ---------------------------------------------------------------------- sweeps


@dataclass(frozen=True)
class Sweep:
    name: str
    values: tuple[Decimal, ...]

    @property
    def lo(self) -> Decimal:
        return self.values[0]

    @property
    def hi(self) -> Decimal:
        return self.values[-1]


def parse_sweep(text: str) -> Sweep:
    """``imf=0.05:0.2:0.05`` (percentages allowed: ``imf=5%:20%:5%``) -> the values lo, lo+step, ... <= hi."""
    name, sep, rng = text.partition("=")
    name = name.strip().lower()
    if not sep or name not in SWEEPABLE:
        raise ConfigError(f"invalid --sweep {text!r}: expected NAME=LO:HI:STEP with NAME one of {', '.join(SWEEPABLE)}")
    parts = rng.split(":")
    if len(parts) != 3:
        raise ConfigError(f"invalid --sweep {text!r}: expected NAME=LO:HI:STEP, e.g. imf=0.05:0.2:0.05")
    lo, hi, step = (_number(p, text) for p in parts)
    if step <= 0 or hi < lo:
        raise ConfigError(f"invalid --sweep {text!r}: need LO <= HI and STEP > 0")
    count = int((hi - lo) / step) + 1
    if count > 50:
        raise ConfigError(f"--sweep {text!r} gives {count} values: give at most 50 (a larger STEP)")
    values = tuple(lo + step * i for i in range(count))
    if name == "latency" and any(v != int(v) or v < 0 for v in values):
        raise ConfigError(f"--sweep {text!r}: latency is a whole number of steps >= 0")
    return Sweep(name, values)


def _number(text: str, whole: str) -> Decimal:
    t = text.strip()
    try:
        return Decimal(t[:-1]) / 100 if t.endswith("%") else Decimal(t)
    except ArithmeticError:
        raise ConfigError(f"invalid --sweep {whole!r}: {text!r} is not a number") from None


def grid(sweeps: Sequence[Sweep]) -> list[dict[str, Decimal]]:
    names = [s.name for s in sweeps]
    if len(set(names)) != len(names):
        raise ConfigError("each parameter may be swept once")
    return [dict(zip(names, combo)) for combo in itertools.product(*(s.values for s in sweeps))]


def apply_set(state: ProtocolState, keepers: KeeperSettings, params: dict[str, Decimal]) -> tuple[ProtocolState, KeeperSettings]:
    """A copy of ``state`` (and the keepers) with one parameter set; ConfigError if the engine refuses it."""
    s = state.copy()
    owner = s.params.owner
    wad = {k: int(v * WAD) for k, v in params.items() if k in FRACTION_PARAMS}
    label = ", ".join(f"{k}={v}" for k, v in params.items())
    try:
        for m in s.markets:
            if {"imf", "mmf", "liquidation_fee"} & wad.keys():
                set_market_params(s, owner, m.id, wad.get("imf", m.imf), wad.get("mmf", m.mmf),
                                  wad.get("liquidation_fee", m.liquidation_fee), m.taker_fee, m.oi_cap)
        for c in s.collaterals:
            if {"maint_weight", "liquidation_discount"} & wad.keys():
                mw = wad.get("maint_weight", c.maint_weight)
                set_collateral_params(s, owner, c.token, min(c.init_weight, mw), mw,
                                      wad.get("liquidation_discount", c.liquidation_discount), c.deposit_cap)
    except Revert as exc:
        raise ConfigError(f"the engine refuses the parameter set {label}: {exc.reason} "
                          "(it needs imf > mmf > liquidation_fee > 0, maint_weight + liquidation_discount < 1)") from None
    if "keeper_share" in wad:
        if not 0 <= wad["keeper_share"] <= WAD:
            raise ConfigError(f"keeper_share must be between 0 and 1, got {params['keeper_share']}")
        s.params.keeper_share = wad["keeper_share"]
    if "insurance" in params:
        if params["insurance"] < 0:
            raise ConfigError("insurance must be >= 0 USD")
        s.insurance_fund = int(params["insurance"] * WAD)
    if "latency" in params:
        keepers = replace(keepers, latency=int(params["latency"]))
    return s, keepers


def cost(params: dict[str, Decimal], sweeps: Sequence[Sweep]) -> Decimal:
    """The set's cost: its position in each swept range, 0 at the cheap end and 1 at the dear end."""
    total = Decimal(0)
    for sw in sweeps:
        if sw.hi == sw.lo:
            continue
        x = (params[sw.name] - sw.lo) / (sw.hi - sw.lo)
        total += x if SWEEPABLE[sw.name] > 0 else 1 - x
    return total


# ---------------------------------------------------------------------- figures


def open_interest(state: ProtocolState) -> int:
    """Per market the larger of the traders' long and short sizes, at the state's price (USD WAD)."""
    total = 0
    for m in state.markets:
        longs = shorts = 0
        for acc in state.accounts.values():
            pos = acc.positions.get(m.id)
            if pos is None:
                continue
            if pos.size > 0:
                longs += pos.size
            else:
                shorts -= pos.size
        total += max(longs, shorts) * price(state, m.feed, False, m.price_scale) // WAD
    return total


def tail(values: Sequence[int], level: int) -> tuple[int, int]:
    """(VaR, CVaR) at ``level`` % of ``values``: the smallest and the mean (rounded down) of the
    worst ``ceil((100 - level) n / 100)`` values."""
    xs = sorted(values)
    k = max(1, -(-(100 - level) * len(xs) // 100))
    worst = xs[len(xs) - k:]
    return worst[0], sum(worst) // len(worst)


def summarise(results: Sequence[PathResult], oi: int) -> dict[str, Any]:
    """The figures of one parameter set (USD WAD integers as exact strings, probabilities as floats)."""
    n = len(results)
    bad = [r.bad_debt for r in results]
    figures: dict[str, Any] = {"paths": n, "open_interest": str(oi)}
    for q in LEVELS:
        var, cvar = tail(bad, q)
        figures[f"var{q}"] = str(var)
        figures[f"cvar{q}"] = str(cvar)
    figures["mean"] = str(sum(bad) // n)
    figures["max"] = str(max(bad))
    figures["p_bad_debt"] = sum(1 for b in bad if b > 0) / n
    figures["p_depleted"] = sum(1 for r in results if r.depleted) / n
    for name in ("socialised", "covered", "unsettled", "volume", "keeper_rewards", "keeper_gas", "house_pnl"):
        figures[f"{name}_mean"] = str(sum(getattr(r, name) for r in results) // n)
    figures["socialised_max"] = str(max(r.socialised for r in results))
    figures["liquidations_mean"] = sum(r.liquidations + r.collateral_liquidations for r in results) / n
    steps = min(len(r.liquidatable) for r in results)
    figures["liquidatable_mean_by_step"] = [sum(r.liquidatable[t] for r in results) / n for t in range(steps)]
    figures["liquidatable_max_by_step"] = [max(r.liquidatable[t] for r in results) for t in range(steps)]
    figures["account_steps_liquidatable_mean"] = sum(r.account_steps_liquidatable for r in results) / n
    figures["longest_liquidatable_steps"] = max(r.longest_liquidatable for r in results)
    return figures


@dataclass(frozen=True)
class Target:
    metric: str
    limit: Decimal       # a fraction of OI (USD metrics) or a probability (p_depleted)

    def meets(self, figures: dict[str, Any]) -> bool:
        value = Decimal(str(figures[self.metric]))
        if self.metric == "p_depleted":
            return value < self.limit
        return value < self.limit * Decimal(int(figures["open_interest"]))

    def __str__(self) -> str:
        what = "" if self.metric == "p_depleted" else " of OI"
        return f"{self.metric} < {(self.limit * 100).normalize():f}%{what}"


def parse_target(text: str) -> Target:
    """``var99<1%`` (99 % VaR of bad debt below 1 % of open interest), ``cvar95<0.5%``, ``p_depleted<5%``."""
    m = re.fullmatch(r"\s*([a-z_0-9]+)\s*<\s*([0-9.]+)\s*(%?)\s*", text.lower())
    if not m or m.group(1) not in TARGET_METRICS:
        raise ConfigError(f"invalid --target {text!r}: expected METRIC<LIMIT%, METRIC one of {', '.join(TARGET_METRICS)}, "
                          "e.g. var99<1%")
    try:
        limit = Decimal(m.group(2))
    except ArithmeticError:
        raise ConfigError(f"invalid --target {text!r}: {m.group(2)!r} is not a number") from None
    return Target(m.group(1), limit / 100 if m.group(3) else limit)


def recommend(rows: Sequence[dict[str, Any]], sweeps: Sequence[Sweep], target: Target) -> dict[str, Any] | None:
    """The cheapest row meeting ``target`` (see the module docstring), or None."""
    ok = [(cost({k: Decimal(v) for k, v in r["params"].items()}, sweeps), int(r["figures"]["var99"]), i)
          for i, r in enumerate(rows) if target.meets(r["figures"])]
    if not ok:
        return None
    c, _, i = min(ok)
    return {"params": rows[i]["params"], "cost": str(c), "index": i}


def timed(fn: Callable[[], Any]) -> tuple[Any, float]:
    t = time.perf_counter()
    value = fn()
    return value, time.perf_counter() - t


__all__ = [
    "INSTALL_HINT", "Job", "SWEEPABLE", "Sweep", "Target", "apply_set", "check_reachable", "cost", "default_workers", "ensure_ray",
    "grid", "import_ray", "open_interest", "parse_sweep", "parse_target", "recommend", "run", "summarise", "tail",
]
