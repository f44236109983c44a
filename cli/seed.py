"""``xmargin seed``: traders with random collateral and positions, some close to liquidation."""

from __future__ import annotations

import click

from protocol_model.seeding import seed_accounts

from . import cli
from .common import EXIT_FAILED, common_options, fail, get_ctx, handle_errors, progress_bar


@cli.command()
@common_options
@click.option("--accounts", "n", type=click.IntRange(1, 100_000), default=100, show_default=True, help="number of traders")
@click.option("--seed", type=click.IntRange(0, 2**63 - 1), default=1, show_default=True, help="random seed (same seed, same traders)")
@handle_errors
def seed(n: int, seed: int) -> None:
    """Create N traders: random collateral and leverage, a fifth of them close to liquidation.

    Traders are derived from the seed; running it again skips those already seeded and finishes
    any that an interrupted run left half-way (so a larger --accounts adds traders)."""
    ctx = get_ctx()
    dep = ctx.dep()
    owner = ctx.sender()
    try:
        if ctx.as_json:
            plans = seed_accounts(ctx.chain(), dep, owner, n, seed)
        else:
            with progress_bar("seeding traders", ctx.console) as bar:
                task = bar.add_task("seed", total=3 * n)
                plans = seed_accounts(ctx.chain(), dep, owner, n, seed,
                                      progress=lambda done, total: bar.update(task, completed=done))
    except KeyboardInterrupt:
        fail(f"interrupted: run the same `xmargin seed --accounts {n} --seed {seed}` again to finish "
             "(traders already seeded are skipped)", EXIT_FAILED)
    high = sum(1 for p in plans if p.leverage_pct >= 800)
    already = f"; {plans.skipped} of them were already seeded and skipped" if plans.skipped else ""
    ctx.emit(
        {"seed": seed, "skipped": plans.skipped, "accounts": [p.to_json() for p in plans]},
        lambda c: c.print(f"seeded {len(plans)} traders (seed {seed}); {high} leveraged 8x or more{already}"),
    )
