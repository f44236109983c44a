"""A stress study end to end: the population, the paths, the parameter sets, Ray, the report."""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any

from protocol_model.errors import ConfigError
from protocol_model.loader import discover_accounts, load_state
from protocol_model.scenarios import resolve_feed
from protocol_model.state import ProtocolState

from .engine import KeeperSettings, Paths
from .paths import PathFile, PathModel
from .report import StressReport
from .runner import Job, Sweep, Target, apply_set, grid, open_interest, recommend, run, summarise
from .runner import Progress


def seeded_state(accounts: int, seed: int) -> ProtocolState:
    """The default deployment with ``accounts`` traders of ``seed``, built on the model alone (the
    traders of :func:`protocol_model.seeding.plan_traders`, as ``xmargin seed`` creates them)."""
    from simulator.competition.offchain import build_initial_state

    if accounts < 1:
        raise ConfigError(f"--accounts must be at least 1, got {accounts}")
    state, _ = build_initial_state(accounts, seed)
    return state


def chain_state(w3: Any, deployment: Any) -> ProtocolState:
    """The protocol and every account that ever deposited, read from a chain (Lens batches)."""
    return load_state(w3, deployment, discover_accounts(w3, deployment))


def feed_map(state: ProtocolState, spec: Sequence[tuple[str, Any]], what: str) -> dict[str, Any]:
    """``(("ETH", v), ...)`` -> ``{feed address: v}``; unknown names are a ConfigError."""
    out: dict[str, Any] = {}
    for key, value in spec:
        feed = resolve_feed(state, key)
        if feed in out:
            raise ConfigError(f"two {what} values for the feed of {key}")
        out[feed] = value
    return out


def gas_feed(state: ProtocolState) -> str | None:
    try:
        return resolve_feed(state, "ETH")
    except ConfigError:
        return None


def run_study(
    state: ProtocolState,
    population: str,
    paths: Paths,
    n_paths: int,
    seed: int,
    keepers: KeeperSettings,
    sweeps: Sequence[Sweep] = (),
    target: Target | None = None,
    workers: int = 1,
    address: str | None = None,
    progress: Progress | None = None,
) -> StressReport:
    """Run every parameter set's paths and summarise them (see :mod:`simulator.stress.runner`)."""
    sets = grid(sweeps) if sweeps else [{}]
    jobs = []
    for params in sets:
        s, k = apply_set(state, keepers, params) if params else (state, keepers)
        jobs.append(Job(s, k))
    started = time.perf_counter()
    stats: dict[str, float] = {}
    results = run(jobs, paths, n_paths, seed, workers, address, progress, stats)
    elapsed = time.perf_counter() - started
    rows = []
    for params, job, res in zip(sets, jobs, results):
        figures = summarise(res, open_interest(job.state))
        row: dict[str, Any] = {"params": {k: str(v) for k, v in params.items()}, "figures": figures,
                               "bad_debt": [str(r.bad_debt) for r in res]}
        if target is not None:
            row["meets"] = target.meets(figures)
        rows.append(row)
    steps = len(paths.answers(seed, 0))
    model: dict[str, Any]
    if isinstance(paths, PathModel):
        model = {"kind": "gbm+jumps", "horizon_days": paths.horizon_days, "vols": dict(zip(paths.feeds, paths.vols)),
                 "corr": paths.corr, "jump_rate": paths.jump_rate, "jump_mean": paths.jump_mean,
                 "jump_std": paths.jump_std, "shocks": {f: str(v) for f, v in paths.shocks},
                 "shock_step": paths.shock_step}
    elif isinstance(paths, PathFile):
        model = {"kind": "file", "paths_in_file": len(paths.paths)}
    else:
        model = {"kind": type(paths).__name__}
    settings = {
        "accounts": len(state.accounts), "population": population, "paths": n_paths, "seed": seed, "steps": steps,
        "price_model": model,
        "keeper": {k: (str(v) if isinstance(v, int) and not isinstance(v, bool) and abs(v) > 2**53 else v)
                   for k, v in keepers.__dict__.items()},
    }
    total = n_paths * len(sets)
    report = StressReport(
        settings=settings, sets=rows, sweeps=[f"{s.name}={s.lo}:{s.hi}" for s in sweeps],
        target=str(target) if target is not None else None,
        recommended=recommend(rows, sweeps, target) if (target is not None and sweeps) else None,
        run={"paths_total": total, "elapsed_s": elapsed, "paths_per_s": total / elapsed if elapsed > 0 else 0.0,
             "workers": workers, "ray_address": address, "worker_cpu_s": stats.get("cpu_s", 0.0),
             # How many cores the workers actually got: below `workers` on a busy machine.
             "cores_obtained": stats.get("cpu_s", 0.0) / elapsed if elapsed > 0 else 0.0},
    )
    return report


__all__ = ["chain_state", "feed_map", "gas_feed", "run_study", "seeded_state"]
