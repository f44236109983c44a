"""The stress study's result: one JSON document, tables for people, PNG figures."""

from __future__ import annotations

from dataclasses import dataclass, field
from decimal import Decimal
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

from protocol_model.fmt import fmt_wad

WALL_CLOCK_FIELDS = ("elapsed_s", "paths_per_s", "workers", "ray_address", "worker_cpu_s", "cores_obtained")


def usd(value: int | str, places: int = 2) -> str:
    """A USD WAD (an integer, or its decimal string from the JSON document) for people."""
    return fmt_wad(int(value), places)


def pct_of(value: int | str, base: int | str) -> str:
    b = int(base)
    if b == 0:
        return "-"
    return f"{Decimal(int(value)) * 100 / Decimal(b):.3f}%"


@dataclass
class StressReport:
    """``settings``: what ran; ``sets``: one entry per parameter set (``params`` and ``figures``);
    ``recommended``: the cheapest set meeting the target (sweeps); ``run``: wall-clock fields."""

    settings: dict[str, Any]
    sets: list[dict[str, Any]]
    sweeps: list[str] = field(default_factory=list)
    target: str | None = None
    recommended: dict[str, Any] | None = None
    run: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return {"settings": self.settings, "sweeps": self.sweeps, "target": self.target, "sets": self.sets,
                "recommended": self.recommended, "run": self.run}

    # ------------------------------------------------------------------ tables
    def render(self, console: Console) -> None:
        s = self.settings
        console.print(f"{s['paths']} paths x {s['steps']} steps over {s['accounts']} accounts "
                      f"({s['population']}); keepers: {s['keeper']['policy']}, latency {s['keeper']['latency']} steps; "
                      f"open interest {usd(self.sets[0]['figures']['open_interest'])} USD")
        if len(self.sets) == 1:
            self._render_one(console, self.sets[0]["figures"])
        else:
            self._render_sweep(console)
        r = self.run
        console.print(f"{r['paths_total']} paths in {r['elapsed_s']:.1f} s on {r['workers']} workers "
                      f"({r['paths_per_s']:.1f} paths/s; the workers got {r['cores_obtained']:.2f} cores)")

    @staticmethod
    def _render_one(console: Console, f: dict[str, Any]) -> None:
        oi = f["open_interest"]
        t = Table(title="stress: bad debt and who pays it (USD)")
        t.add_column("figure")
        t.add_column("USD", justify="right")
        t.add_column("% of OI", justify="right")
        rows = [
            ("bad debt, mean", f["mean"]), ("bad debt, VaR 95%", f["var95"]), ("bad debt, CVaR 95%", f["cvar95"]),
            ("bad debt, VaR 99%", f["var99"]), ("bad debt, CVaR 99%", f["cvar99"]), ("bad debt, worst path", f["max"]),
            ("covered by the insurance fund, mean", f["covered_mean"]),
            ("socialised to the house, mean", f["socialised_mean"]), ("socialised, worst path", f["socialised_max"]),
            ("left unsettled, mean", f["unsettled_mean"]),
            ("liquidation volume, mean", f["volume_mean"]), ("keeper rewards, mean", f["keeper_rewards_mean"]),
            ("keeper gas, mean", f["keeper_gas_mean"]), ("house P&L, mean", f["house_pnl_mean"]),
        ]
        for name, value in rows:
            t.add_row(name, usd(value), pct_of(value, oi))
        console.print(t)
        p = Table(title="stress: how often, how long")
        p.add_column("figure")
        p.add_column("value", justify="right")
        p.add_row("P(bad debt > 0)", f"{f['p_bad_debt']:.1%}")
        p.add_row("P(insurance fund depleted)", f"{f['p_depleted']:.1%}")
        p.add_row("liquidations per path, mean", f"{f['liquidations_mean']:.1f}")
        p.add_row("account-steps left liquidatable, mean", f"{f['account_steps_liquidatable_mean']:.2f}")
        p.add_row("longest an account stayed liquidatable (steps)", str(f["longest_liquidatable_steps"]))
        by_step = f["liquidatable_mean_by_step"]
        p.add_row("accounts left liquidatable per step, mean (max)",
                  f"{sum(by_step) / max(1, len(by_step)):.2f} ({max(f['liquidatable_max_by_step'], default=0)})")
        console.print(p)

    def _render_sweep(self, console: Console) -> None:
        t = Table(title=f"stress sweep: {', '.join(self.sweeps)}" + (f"; target {self.target}" if self.target else ""))
        names = list(self.sets[0]["params"])
        for n in names:
            t.add_column(n, justify="right")
        for col in ("VaR 95%", "VaR 99%", "CVaR 99%", "VaR 99% / OI", "P(depleted)", "socialised, mean", "meets"):
            t.add_column(col, justify="right")
        rec = self.recommended["index"] if self.recommended else None
        for i, row in enumerate(self.sets):
            f = row["figures"]
            mark = "yes" if row.get("meets") else "no"
            if i == rec:
                mark = "yes (cheapest)"
            t.add_row(*[str(row["params"][n]) for n in names], usd(f["var95"]), usd(f["var99"]), usd(f["cvar99"]),
                      pct_of(f["var99"], f["open_interest"]), f"{f['p_depleted']:.1%}", usd(f["socialised_mean"]), mark)
        console.print(t)
        if self.target:
            if self.recommended:
                params = ", ".join(f"{k}={v}" for k, v in self.recommended["params"].items())
                console.print(f"recommended (cheapest set meeting {self.target}): {params}")
            else:
                console.print(f"no parameter set meets {self.target}")

    # ------------------------------------------------------------------ figures
    def plot(self, directory: str) -> list[str]:
        """PNGs into ``directory``: the bad-debt distribution and accounts left liquidatable by step
        (the first set), and for a sweep the 99 % VaR over the grid (a heat map for two parameters)."""
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        out_dir = Path(directory)
        out_dir.mkdir(parents=True, exist_ok=True)
        written: list[str] = []
        f = self.sets[0]["figures"]
        bad = [int(b) / 1e18 for b in self.sets[0]["bad_debt"]]
        fig, ax = plt.subplots(figsize=(7, 4))
        ax.hist(bad, bins=min(50, max(5, len(bad) // 4)), color="#b33")
        for q, style in (("var95", "--"), ("var99", ":")):
            ax.axvline(int(f[q]) / 1e18, color="k", linestyle=style, label=f"VaR {q[3:]}% {usd(f[q], 0)} USD")
        ax.set_xlabel("bad debt per path (USD)")
        ax.set_ylabel("paths")
        ax.set_title(f"bad debt over {len(bad)} paths; P(fund depleted) {f['p_depleted']:.1%}")
        ax.legend()
        written.append(self._save(fig, out_dir / "bad_debt.png"))
        fig, ax = plt.subplots(figsize=(7, 4))
        steps = range(1, len(f["liquidatable_mean_by_step"]) + 1)
        ax.plot(steps, f["liquidatable_mean_by_step"], label="mean over paths")
        ax.plot(steps, f["liquidatable_max_by_step"], label="worst path", linestyle="--")
        ax.set_xlabel("step")
        ax.set_ylabel("accounts left liquidatable")
        ax.legend()
        written.append(self._save(fig, out_dir / "liquidatable.png"))
        if len(self.sets) > 1:
            written.append(self._plot_sweep(plt, out_dir / "sweep.png"))
        plt.close("all")
        return written

    def _plot_sweep(self, plt: Any, path: Path) -> str:
        names = list(self.sets[0]["params"])
        var = {tuple(r["params"][n] for n in names): int(r["figures"]["var99"]) / 1e18 for r in self.sets}
        fig, ax = plt.subplots(figsize=(7, 5))
        if len(names) == 2:
            xs = sorted({k[0] for k in var}, key=Decimal)
            ys = sorted({k[1] for k in var}, key=Decimal)
            grid = [[var.get((x, y), float("nan")) for x in xs] for y in ys]
            im = ax.imshow(grid, origin="lower", aspect="auto", cmap="Reds")
            ax.set_xticks(range(len(xs)), xs)
            ax.set_yticks(range(len(ys)), ys)
            ax.set_xlabel(names[0])
            ax.set_ylabel(names[1])
            lo, hi = min(var.values()), max(var.values())
            for i, y in enumerate(ys):
                for j, x in enumerate(xs):
                    dark = hi > lo and grid[i][j] > (lo + hi) / 2
                    ax.text(j, i, f"{grid[i][j]:,.0f}", ha="center", va="center", fontsize=8,
                            color="white" if dark else "black")
            fig.colorbar(im, label="99% VaR of bad debt (USD)")
        else:
            labels = [", ".join(str(v) for v in k) for k in var]
            ax.plot(range(len(labels)), list(var.values()), marker="o")
            ax.set_xticks(range(len(labels)), labels, rotation=45, ha="right")
            ax.set_xlabel(", ".join(names))
            ax.set_ylabel("99% VaR of bad debt (USD)")
        ax.set_title("99% VaR of bad debt per parameter set")
        return self._save(fig, path)

    @staticmethod
    def _save(fig: Any, path: Path) -> str:
        fig.tight_layout()
        fig.savefig(path, dpi=100)
        return str(path)


__all__ = ["StressReport", "WALL_CLOCK_FIELDS", "pct_of", "usd"]
