"""Price paths for the stress engine: correlated geometric Brownian motion with jumps, or a file.

A path gives, for every step ``1..steps``, the answer of every feed (feed units, integers). Step 0 is
the state's own prices.

* **Generated** (:class:`PathModel`): per step of ``dt = horizon_days / 365 / steps`` years, each
  feed's log price moves by ``-sigma**2 / 2 * dt + sigma * sqrt(dt) * Z`` with ``Z`` standard normals
  correlated pairwise by ``corr`` (one coefficient for every pair), plus jumps: market-wide crash
  events arrive as a Poisson process of ``jump_rate`` per year (the same events for every feed), and
  each event moves each feed's log price by ``jump_mean + jump_std * Z'`` (``Z'`` correlated like
  ``Z``). No drift. The answer is ``round(answer0 * exp(cumulative log move))``; with ``sigma = 0``
  and no jumps it is exactly ``answer0``.
* **Deterministic shocks** (``shocks``: feed -> signed WAD fraction, applied from ``shock_step``
  on) move the generated answer by :func:`protocol_model.scenarios.moved_answer`, the rounding of
  the model's price shocks, so that a zero-volatility path with one shock is the model's shock.
* **Per-path seeds**: path ``i`` of seed ``s`` draws from ``numpy.random.SeedSequence([s, i])``, so a
  path is the same whichever worker computes it and whatever the number of workers.
* **A path file** (:func:`load_path_file`): a CSV with a header naming the feeds (a market name such
  as ``ETH`` / ``ETH-PERP``, a collateral symbol, or a feed address), one row per step with prices in
  USD (e.g. a replay of a historical crash); an optional ``path`` column numbers several paths and an
  optional ``step`` column is ignored (rows are steps in file order). Feeds not in the file keep their
  price. Prices are converted to feed units exactly (decimal arithmetic, rounded down).
"""

from __future__ import annotations

import csv
import math
from dataclasses import dataclass, field
from decimal import Decimal, InvalidOperation
from pathlib import Path

import numpy as np

from protocol_model.errors import ConfigError
from protocol_model.scenarios import moved_answer, resolve_feed
from protocol_model.state import ProtocolState

DAYS_PER_YEAR = 365


@dataclass(frozen=True)
class PathModel:
    """Correlated GBM with jumps over the feeds ``feeds`` (in this order)."""

    feeds: tuple[str, ...]                   # feed addresses
    start: tuple[int, ...]                   # each feed's answer at step 0 (feed units)
    vols: tuple[float, ...]                  # annualised volatility of each feed (0.8 = 80 %)
    steps: int = 28
    horizon_days: float = 7.0
    corr: float = 0.8                        # pairwise correlation of the feeds' moves
    jump_rate: float = 10.0                  # crash events per year
    jump_mean: float = -0.15                 # mean log move of a feed in an event
    jump_std: float = 0.05                   # its standard deviation
    shocks: tuple[tuple[str, int], ...] = ()  # (feed, signed WAD fraction), applied from shock_step on
    shock_step: int = 1

    def __post_init__(self) -> None:
        n = len(self.feeds)
        if self.steps < 1:
            raise ConfigError(f"--steps must be at least 1, got {self.steps}")
        if not self.horizon_days > 0:
            raise ConfigError(f"--horizon must be > 0 days, got {self.horizon_days}")
        if any(v < 0 or not math.isfinite(v) for v in self.vols):
            raise ConfigError("volatility must be a finite number >= 0")
        lo = -1.0 / (n - 1) if n > 1 else -1.0
        if n > 1 and not lo < self.corr <= 1.0:
            raise ConfigError(f"--corr {self.corr} makes no valid correlation matrix for {n} feeds: give one in ({lo:g}, 1]")
        if self.jump_rate < 0 or self.jump_std < 0:
            raise ConfigError("--jump-rate and --jump-std must be >= 0")
        if not 1 <= self.shock_step <= self.steps:
            raise ConfigError(f"--shock-step must be between 1 and --steps ({self.steps}), got {self.shock_step}")

    def _chol(self) -> np.ndarray:
        n = len(self.feeds)
        if n == 1 or self.corr == 1.0:
            chol = np.zeros((n, n))
            chol[:, 0] = 1.0          # every feed takes the first draw
            return chol
        return np.linalg.cholesky(np.full((n, n), self.corr) + np.eye(n) * (1.0 - self.corr))

    def answers(self, seed: int, index: int) -> list[list[int]]:
        """Path ``index``: ``steps`` rows, each the answer of every feed (feed units)."""
        n = len(self.feeds)
        rng = np.random.default_rng(np.random.SeedSequence([seed, index]))
        dt = self.horizon_days / DAYS_PER_YEAR / self.steps
        vols = np.asarray(self.vols, dtype=float)
        chol = self._chol()
        z = rng.standard_normal((self.steps, n)) @ chol.T
        log_moves = -0.5 * vols**2 * dt + vols * math.sqrt(dt) * z
        events = rng.poisson(self.jump_rate * dt, self.steps)
        jz = rng.standard_normal((self.steps, n)) @ chol.T
        jumps = events[:, None] * self.jump_mean + np.sqrt(events)[:, None] * self.jump_std * jz
        cumulative = np.cumsum(log_moves + jumps, axis=0)
        still = not any(self.vols) and not events.any()
        shocks = dict(self.shocks)
        rows: list[list[int]] = []
        for t in range(self.steps):
            row = []
            for j, feed in enumerate(self.feeds):
                a = self.start[j] if still else int(round(self.start[j] * math.exp(float(cumulative[t, j]))))
                if feed in shocks and t + 1 >= self.shock_step:
                    a = moved_answer(a, shocks[feed])
                row.append(max(a, 1))
            rows.append(row)
        return rows


@dataclass(frozen=True)
class PathFile:
    """Paths read from a CSV (see the module docstring)."""

    feeds: tuple[str, ...]
    paths: tuple[tuple[tuple[int, ...], ...], ...] = field(default=())   # path -> step -> answer per feed

    @property
    def steps(self) -> int:
        return min(len(p) for p in self.paths)

    def answers(self, seed: int, index: int) -> list[list[int]]:   # noqa: ARG002 - same interface as PathModel
        return [list(row) for row in self.paths[index][: self.steps]]


def _to_answer(text: str, decimals: int, where: str) -> int:
    try:
        d = Decimal(text.strip().replace("_", ""))
    except InvalidOperation:
        raise ConfigError(f"{where}: {text!r} is not a price in USD") from None
    if not d.is_finite() or d <= 0:
        raise ConfigError(f"{where}: a price must be a positive number, got {text!r}")
    return max(1, int(d.scaleb(decimals)))


def load_path_file(path: str, state: ProtocolState) -> PathFile:
    """Read a CSV of prices per step (see the module docstring); raises ConfigError on bad input."""
    p = Path(path)
    try:
        with p.open(newline="") as fh:
            rows = list(csv.reader(fh))
    except OSError as exc:
        raise ConfigError(f"cannot read the path file {path}: {exc.strerror or exc}") from None
    rows = [r for r in rows if any(c.strip() for c in r)]
    if len(rows) < 2:
        raise ConfigError(f"path file {path}: expected a header and at least one row of prices")
    header = [h.strip() for h in rows[0]]
    path_col = header.index("path") if "path" in header else None
    skip = {i for i, h in enumerate(header) if h in ("path", "step")}
    columns = [(i, resolve_feed(state, h)) for i, h in enumerate(header) if i not in skip]
    if not columns:
        raise ConfigError(f"path file {path}: the header names no feed (e.g. step,ETH,BTC)")
    feeds = tuple(f for _, f in columns)
    if len(set(feeds)) != len(feeds):
        raise ConfigError(f"path file {path}: two columns price the same feed")
    by_path: dict[str, list[tuple[int, ...]]] = {}
    for line, r in enumerate(rows[1:], start=2):
        if len(r) != len(header):
            raise ConfigError(f"path file {path} line {line}: {len(r)} values for {len(header)} columns")
        key = r[path_col].strip() if path_col is not None else "0"
        by_path.setdefault(key, []).append(tuple(
            _to_answer(r[i], state.feeds[f].decimals, f"path file {path} line {line}") for i, f in columns))
    return PathFile(feeds, tuple(tuple(v) for v in by_path.values()))


__all__ = ["DAYS_PER_YEAR", "PathFile", "PathModel", "load_path_file"]
