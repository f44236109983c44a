"""The competition report: per bot and per run, as a table, one JSON document, and a PNG plot.

Units: rewards are the engine's ``keeper_reward`` (quote token native units) and their USD value
(WAD); gas is wei, split into what successful and what reverted transactions cost
(``gas used x effective gas price``); tips are the part of that the block producer earns
(``gas used x (effective gas price - base fee)``). USD values of gas use the ETH price right after
the shock (the ETH feed's answer in the shock block): costs round up, so profit is never overstated.

* ``net_profit_usd_wad`` of a bot = rewards (USD) - gas (USD, rounded up);
* ``tip_share`` of a run = tips (USD) / rewards (USD): the share of all liquidation rewards that
  went to the block producer as tips (``tip_share_wad`` exact, rounded down; ``tip_share`` the same
  rounded to 6 decimals for people and plots);
* ``bad_debt_usd_wad`` = the sum of ``max(0, -equity)`` over the traders at the end of the run
  (the bad debt left unsettled);
* ``bad_debt_settled_usd_wad`` = the deficits the run's liquidations settled automatically
  (``BadDebtSettled``), of which ``socialised_usd_wad`` fell on the house (the insurance fund
  covered the rest): bad debt is settled in the liquidation that leaves it, so it does not appear
  in ``bad_debt_usd_wad``;
* ``blocks_to_last_liquidation`` = the block of the last ``Liquidation`` minus the update's block
  (the block ``S`` that includes the shock's price updates; None without liquidations);
* ``same_block`` (per bot and per run) = the liquidations in block ``S`` itself, i.e. in the same
  block as the price update that caused them (only a backrun gets there: every other bot learns of
  the update from block ``S``); ``same_block_share_wad`` = their share of all liquidations
  (``same_block_share`` rounded to 6 decimals);
* backruns (per bot and per run): ``backruns`` = transactions sent in the update round and mined;
  ``backruns_before_update`` = those mined before the update (earlier in block ``S`` than its last
  price update, or in a block without it), ``backruns_before_update_failed`` = of those, the ones
  that reverted (the account was still healthy), and ``gas_backruns_failed_wei`` = the gas those
  failed ones cost (``gas used x effective gas price``, also counted in ``gas_reverted_wei``).

Block numbers in the report are offsets from the update's block, so the on-chain and the off-chain
run of one scenario give equal reports (:meth:`CompetitionReport.comparable`).
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from decimal import ROUND_DOWN, Decimal
from pathlib import Path
from typing import Any

from protocol_model.fmt import fmt_amount
from protocol_model.wad import WAD



def _ceil_div(a: int, b: int) -> int:
    return -(-a // b)


@dataclass
class BotResult:
    """One agent's results over the run."""

    name: str
    strategy: str
    kind: str
    latency: int
    address: str
    won: int = 0                   # Liquidation events naming the bot as liquidator
    mined: int = 0                 # the bot's transactions in blocks, successful or not
    reverted: int = 0
    rebids: int = 0                # replacements sent to outbid a rival
    pending_at_end: int = 0        # the bot's transactions still in the pool after the last block
    rewards_native: int = 0        # keeper_reward, quote native units
    rewards_usd_wad: int = 0
    gas_success_wei: int = 0
    gas_reverted_wei: int = 0
    tips_wei: int = 0
    gas_used: int = 0              # gas units of all its mined transactions
    net_profit_usd_wad: int = 0
    same_block: int = 0            # liquidations won in the price update's own block
    backruns: int = 0              # transactions sent backrunning the pending update, mined
    backruns_before_update: int = 0          # of those, mined before the update (or without it)
    backruns_before_update_failed: int = 0   # of those, reverted
    gas_backruns_failed_wei: int = 0         # what the failed ones cost

    @property
    def gas_wei(self) -> int:
        return self.gas_success_wei + self.gas_reverted_wei

    def count_backrun(self, before_update: bool, ok: bool, cost_wei: int) -> None:
        """Book one mined backrun: whether it landed before the update, succeeded, and its cost."""
        self.backruns += 1
        if before_update:
            self.backruns_before_update += 1
            if not ok:
                self.backruns_before_update_failed += 1
                self.gas_backruns_failed_wei += cost_wei


@dataclass(frozen=True)
class Liquidated:
    """One ``Liquidation`` of the run: block offset from the shock, whom, what, who, for what."""

    block: int
    account: str
    market: int
    bot: str
    size_delta: int
    reward_native: int


@dataclass(frozen=True)
class SweepPoint:
    """The tip share of the same scenario with ``bots`` competitors (an off-chain run)."""

    bots: int
    tip_share_wad: int
    tips_usd_wad: int
    rewards_usd_wad: int
    liquidations: int


@dataclass
class CompetitionReport:
    """A competition's results (see the module docstring for the units)."""

    mode: str
    seed: int
    accounts: int
    shocks: dict[str, int]                     # asset -> signed WAD fraction
    blocks: int
    quote_symbol: str
    quote_decimals: int
    eth_price_wad: int
    base_fee_wei: int                          # of the shock's block
    bots: list[BotResult]
    liquidations: list[Liquidated] = field(default_factory=list)
    bad_debt_usd_wad: int = 0
    bad_debt_settled_usd_wad: int = 0
    socialised_usd_wad: int = 0
    bankrupt_accounts: int = 0
    liquidatable_at_end: int = 0
    # per run, filled by finish()
    rewards_native: int = 0
    rewards_usd_wad: int = 0
    gas_wei: int = 0
    tips_wei: int = 0
    tips_usd_wad: int = 0
    tip_share_wad: int = 0
    blocks_to_last_liquidation: int | None = None
    same_block: int = 0
    same_block_share_wad: int = 0
    backruns: int = 0
    backruns_before_update: int = 0
    backruns_before_update_failed: int = 0
    gas_backruns_failed_wei: int = 0
    # not part of the comparison between modes
    gas_table: dict[str, int] = field(default_factory=dict)   # on-chain: measured execution gas by key
    model_mismatches: list[str] = field(default_factory=list)  # on-chain: receipts the model disagrees with
    sweep: list[SweepPoint] = field(default_factory=list)
    elapsed_s: float = 0.0

    # ------------------------------------------------------------------ totals

    def finish(self) -> "CompetitionReport":
        """Compute every derived figure from the per-bot results and the liquidations."""
        scale = 10 ** (18 - self.quote_decimals)
        for b in self.bots:
            b.rewards_usd_wad = b.rewards_native * scale
            gas_usd = _ceil_div(b.gas_wei * self.eth_price_wad, WAD)
            b.net_profit_usd_wad = b.rewards_usd_wad - gas_usd
        self.rewards_native = sum(b.rewards_native for b in self.bots)
        self.rewards_usd_wad = self.rewards_native * scale
        self.gas_wei = sum(b.gas_wei for b in self.bots)
        self.tips_wei = sum(b.tips_wei for b in self.bots)
        self.tips_usd_wad = self.tips_wei * self.eth_price_wad // WAD
        self.tip_share_wad = self.tips_wei * self.eth_price_wad // self.rewards_usd_wad if self.rewards_usd_wad else 0
        self.blocks_to_last_liquidation = max((x.block for x in self.liquidations), default=None)
        same: dict[str, int] = {}
        for x in self.liquidations:
            if x.block == 0:
                same[x.bot] = same.get(x.bot, 0) + 1
        for b in self.bots:
            b.same_block = same.get(b.name, 0)
        self.same_block = sum(same.values())
        self.same_block_share_wad = self.same_block * WAD // len(self.liquidations) if self.liquidations else 0
        self.backruns = sum(b.backruns for b in self.bots)
        self.backruns_before_update = sum(b.backruns_before_update for b in self.bots)
        self.backruns_before_update_failed = sum(b.backruns_before_update_failed for b in self.bots)
        self.gas_backruns_failed_wei = sum(b.gas_backruns_failed_wei for b in self.bots)
        return self

    @property
    def same_block_share(self) -> float:
        return _ratio(self.same_block_share_wad)

    @property
    def tip_share(self) -> float:
        return _ratio(self.tip_share_wad)

    def by_strategy(self) -> dict[str, int]:
        """Net profit (USD WAD) summed over the bots of each strategy, in first-appearance order."""
        out: dict[str, int] = {}
        for b in self.bots:
            out[b.strategy] = out.get(b.strategy, 0) + b.net_profit_usd_wad
        return out

    def comparable(self) -> dict[str, Any]:
        """The report without what legitimately differs between runs and modes (mode, timing,
        the measured gas table, diagnostics, the sweep)."""
        out = self.to_json()
        for key in ("mode", "elapsed_s", "gas_table", "model_mismatches", "sweep"):
            out.pop(key, None)
        return out

    # ------------------------------------------------------------------ output

    def to_json(self) -> dict[str, Any]:
        """One JSON-ready document: money as exact integer strings, counts as numbers."""
        def money(d: dict[str, Any]) -> dict[str, Any]:
            return {k: (str(v) if isinstance(v, int) and not isinstance(v, bool) and _is_money(k) else v)
                    for k, v in d.items()}

        bots = []
        for b in self.bots:
            d = money(asdict(b))
            d["gas_wei"] = str(b.gas_wei)
            bots.append(d)
        return {
            "mode": self.mode,
            "seed": self.seed,
            "accounts": self.accounts,
            "shocks": {k: str(v) for k, v in self.shocks.items()},
            "blocks": self.blocks,
            "quote_symbol": self.quote_symbol,
            "quote_decimals": self.quote_decimals,
            "eth_price_wad": str(self.eth_price_wad),
            "base_fee_wei": str(self.base_fee_wei),
            "bots": bots,
            "liquidations": [money(asdict(x)) for x in self.liquidations],
            "liquidation_count": len(self.liquidations),
            "rewards_native": str(self.rewards_native),
            "rewards_usd_wad": str(self.rewards_usd_wad),
            "gas_wei": str(self.gas_wei),
            "tips_wei": str(self.tips_wei),
            "tips_usd_wad": str(self.tips_usd_wad),
            "tip_share": self.tip_share,
            "tip_share_wad": str(self.tip_share_wad),
            "bad_debt_usd_wad": str(self.bad_debt_usd_wad),
            "bad_debt_settled_usd_wad": str(self.bad_debt_settled_usd_wad),
            "socialised_usd_wad": str(self.socialised_usd_wad),
            "bankrupt_accounts": self.bankrupt_accounts,
            "liquidatable_at_end": self.liquidatable_at_end,
            "blocks_to_last_liquidation": self.blocks_to_last_liquidation,
            "same_block": self.same_block,
            "same_block_share": self.same_block_share,
            "same_block_share_wad": str(self.same_block_share_wad),
            "backruns": self.backruns,
            "backruns_before_update": self.backruns_before_update,
            "backruns_before_update_failed": self.backruns_before_update_failed,
            "gas_backruns_failed_wei": str(self.gas_backruns_failed_wei),
            "gas_table": dict(self.gas_table),
            "model_mismatches": list(self.model_mismatches),
            "sweep": [{"bots": p.bots, "tip_share": _ratio(p.tip_share_wad), "tip_share_wad": str(p.tip_share_wad),
                       "tips_usd_wad": str(p.tips_usd_wad), "rewards_usd_wad": str(p.rewards_usd_wad),
                       "liquidations": p.liquidations} for p in self.sweep],
            "elapsed_s": round(self.elapsed_s, 3),
        }

    def dumps(self) -> str:
        return json.dumps(self.to_json(), indent=2)

    def render(self, console: Any) -> None:
        """The report as tables on a rich console."""
        from rich.table import Table

        q = self.quote_symbol
        shocks = ", ".join(f"{a} {fmt_pct(f)}" for a, f in self.shocks.items())
        t = Table(title=f"liquidator competition ({self.mode}): {len(self.bots)} bots, {self.accounts} accounts, "
                        f"shock {shocks}, seed {self.seed}, {self.blocks} blocks")
        for col in ("bot", "strategy", "won", "same block", f"rewards ({q})", "gas ok (ETH)", "gas reverted (ETH)",
                    "tips (ETH)", "reverted", "rebids", "net profit (USD)"):
            t.add_column(col, justify="left" if col in ("bot", "strategy") else "right")
        for b in self.bots:
            t.add_row(b.name, b.strategy, str(b.won), f"{b.same_block}/{b.won}",
                      fmt_amount(b.rewards_native, self.quote_decimals, 2),
                      fmt_amount(b.gas_success_wei, 18, 6), fmt_amount(b.gas_reverted_wei, 18, 6), fmt_amount(b.tips_wei, 18, 6),
                      f"{b.reverted}/{b.mined}", str(b.rebids), fmt_amount(b.net_profit_usd_wad, 18, 2))
        console.print(t)
        console.print(
            f"in the same block as the price update: {self.same_block} of {len(self.liquidations)} liquidations "
            f"({fmt_amount(self.same_block_share_wad * 100, 18, 2)}%); backruns {self.backruns}, of which "
            f"{self.backruns_before_update} landed before the update ({self.backruns_before_update_failed} reverted, "
            f"gas {fmt_amount(self.gas_backruns_failed_wei, 18, 6)} ETH)"
        )
        last = "-" if self.blocks_to_last_liquidation is None else str(self.blocks_to_last_liquidation)
        console.print(
            f"liquidations {len(self.liquidations)}, "
            f"rewards {fmt_amount(self.rewards_native, self.quote_decimals, 2)} {q}; "
            f"tips to the block producer {fmt_amount(self.tips_wei, 18, 6)} ETH = {fmt_amount(self.tips_usd_wad, 18, 2)} USD "
            f"(tip share {fmt_amount(self.tip_share_wad * 100, 18, 2)}% of rewards)"
        )
        console.print(
            f"bad debt settled in the liquidations {fmt_amount(self.bad_debt_settled_usd_wad, 18, 2)} USD "
            f"(socialised {fmt_amount(self.socialised_usd_wad, 18, 2)}); left unsettled "
            f"{fmt_amount(self.bad_debt_usd_wad, 18, 2)} USD over {self.bankrupt_accounts} bankrupt account(s)"
        )
        console.print(
            f"{self.liquidatable_at_end} still liquidatable; blocks until the last liquidation {last}; "
            f"ETH {fmt_amount(self.eth_price_wad, 18, 2)} USD, base fee {self.base_fee_wei} wei"
        )
        if self.sweep:
            console.print("tip share by number of competitors (off-chain sweep): " + ", ".join(
                f"{p.bots}: {fmt_amount(p.tip_share_wad * 100, 18, 1)}%" for p in self.sweep))
        if self.model_mismatches:
            console.print(f"[yellow]the model disagreed with {len(self.model_mismatches)} receipt(s)[/yellow]")


def _is_money(key: str) -> bool:
    return key.endswith(("_wei", "_wad", "_native")) or key in ("size_delta",)


def _ratio(wad: int) -> float:
    """A WAD fraction rounded to 6 decimals, for JSON readers and plots (presentation only)."""
    return float((Decimal(wad) / WAD).quantize(Decimal("0.000001"), rounding=ROUND_DOWN))


def fmt_pct(fraction_wad: int) -> str:
    d = (Decimal(fraction_wad) * 100 / WAD).normalize()
    return f"{'+' if fraction_wad > 0 else ''}{d:f}%"


# ---------------------------------------------------------------------- plot


def plot(report: CompetitionReport, path: str | Path, sweep: list[SweepPoint] | None = None) -> Path:
    """A PNG with two panels: net profit by strategy (this run), and the tip share of rewards as
    the number of competitors grows (``sweep``, default ``report.sweep``). Uses the Agg backend."""
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    points = sweep if sweep is not None else report.sweep
    profits = report.by_strategy()
    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4.2))
    try:
        names = list(profits)
        values = [float(Decimal(v) / WAD) for v in profits.values()]     # floats for drawing only
        colors = ["tab:green" if v >= 0 else "tab:red" for v in values]
        left.bar(range(len(names)), values, color=colors)
        left.set_xticks(range(len(names)))
        left.set_xticklabels(names, rotation=20, ha="right", fontsize=8)
        left.axhline(0, color="black", linewidth=0.6)
        left.set_ylabel("net profit (USD)")
        left.set_title(f"profit by strategy ({len(report.bots)} bots, {report.mode})")
        if points:
            xs = [p.bots for p in points]
            ys = [100 * _ratio(p.tip_share_wad) for p in points]
            right.plot(xs, ys, marker="o")
            right.set_xticks(xs)
            right.set_ylim(bottom=0)
        else:
            right.text(0.5, 0.5, "no sweep", ha="center", va="center", transform=right.transAxes)
        right.set_xlabel("number of competitors")
        right.set_ylabel("tips / rewards (%)")
        right.set_title("share of rewards paid to the block producer")
        fig.suptitle(f"seed {report.seed}, {report.accounts} accounts, shock "
                     + ", ".join(f"{a} {fmt_pct(f)}" for a, f in report.shocks.items()), fontsize=9)
        fig.tight_layout()
        out = Path(path)   # its folder must exist: no folders are created (the CLI checks it first)
        fig.savefig(out, format="png", dpi=100)
        return out
    finally:
        plt.close(fig)


__all__ = ["BotResult", "CompetitionReport", "Liquidated", "SweepPoint", "fmt_pct", "plot"]
