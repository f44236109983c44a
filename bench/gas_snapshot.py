"""Gas used by every external function of the contracts, in named scenarios.

    python bench/gas_snapshot.py            # print the table and rewrite tests/__snapshots__/gas.txt
    python bench/gas_snapshot.py --check    # exit 1 if the committed snapshot differs

The snapshot is committed so that every gas change shows in review as a diff (as Uniswap v3-core
does). tests/integration/test_gas_snapshot.py runs the --check comparison in the test suite.
Scenarios are deterministic: a fresh in-process chain, the default deployment, fixed amounts.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any, Callable

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from eth_account import Account  # noqa: E402
from eth_utils import keccak  # noqa: E402

from protocol_model.chain import Sender, memory_chain  # noqa: E402
from protocol_model.deploy import DeployConfig, deploy_contract, deploy_protocol  # noqa: E402
from protocol_model.wad import UINT256_MAX, WAD  # noqa: E402

SNAPSHOT = ROOT / "tests" / "__snapshots__" / "gas.txt"
BATCH_ORDERS = 16
BATCH_LABEL = f"MarginEngine.liquidate_many ({BATCH_ORDERS} partial position orders, 2 positions + 2 collaterals each)"

# Targets from the issue: (function label prefix, gas ceiling).
TARGETS = {
    "MarginEngine.liquidate (partial, 2 positions + 2 collaterals)": 150_000,
    "MarginEngine.trade (increase, 2 positions + 2 collaterals)": 120_000,
    # issue 11: at most 90,000 per order in a batch of 16
    BATCH_LABEL: 16 * 90_000,
}


def measure() -> dict[str, int]:
    w3 = memory_chain()
    owner, trader, trader2, liquidator, rival = (Sender.unlocked(w3, i) for i in range(5))
    dep = deploy_protocol(w3, owner, DeployConfig())
    eng = dep.engine_contract
    usdc, weth, wbtc = dep.quote_contract, dep.token_contract("WETH"), dep.token_contract("WBTC")
    eth_feed, btc_feed = dep.feed_contract("ETH"), dep.feed_contract("BTC")
    gas: dict[str, int] = {}

    def rec(label: str, sender: Sender, call: Any) -> None:
        gas[label] = int(sender.send(call)["gasUsed"])

    def fund(actor: Sender, token: Any, amount: int) -> None:
        owner.send(token.functions.mint(actor.address, amount))
        actor.send(token.functions.approve(eng.address, UINT256_MAX))

    # Tokens and feeds ---------------------------------------------------------
    fund(trader, usdc, 1_000_000 * 10**6)
    fund(trader, weth, 100 * 10**18)
    fund(trader, wbtc, 10 * 10**8)
    fund(trader2, usdc, 1_000_000 * 10**6)
    fund(trader2, weth, 100 * 10**18)
    fund(liquidator, usdc, 1_000_000 * 10**6)
    fund(rival, usdc, 10**6)
    rec("Token.mint (to a holder)", owner, usdc.functions.mint(trader.address, 10**6))
    rec("Token.approve", trader, usdc.functions.approve(rival.address, 10**6))
    rec("Token.transfer (to a holder)", trader, usdc.functions.transfer(rival.address, 10**6))
    rec("Token.transferFrom (to a holder)", rival, usdc.functions.transferFrom(trader.address, rival.address, 10**6))
    rec("PriceFeed.set_answer", owner, eth_feed.functions.set_answer(2_000 * 10**8))
    rec("PriceFeed.set_updater", owner, btc_feed.functions.set_updater(owner.address))

    # Deposits -----------------------------------------------------------------
    rec("MarginEngine.deposit (quote, first)", trader, eng.functions.deposit(usdc.address, 2_000 * 10**6))
    rec("MarginEngine.deposit (quote, again)", trader, eng.functions.deposit(usdc.address, 1_000 * 10**6))
    rec("MarginEngine.deposit (collateral, first)", trader, eng.functions.deposit(weth.address, 10**18))
    rec("MarginEngine.deposit (collateral, again)", trader, eng.functions.deposit(weth.address, 10**17))
    trader.send(eng.functions.deposit(wbtc.address, 10**7))

    # Trades: the trader ends with 2 positions and 2 collaterals -----------------
    rec("MarginEngine.trade (open, 1 position + 2 collaterals)", trader, eng.functions.trade(0, 20 * WAD, UINT256_MAX))
    rec("MarginEngine.trade (open second market, 2 positions + 2 collaterals)", trader, eng.functions.trade(1, WAD // 10, UINT256_MAX))
    rec("MarginEngine.trade (increase, 2 positions + 2 collaterals)", trader, eng.functions.trade(1, WAD // 10, UINT256_MAX))
    rec("MarginEngine.trade (reduce, 2 positions + 2 collaterals)", trader, eng.functions.trade(0, -WAD, 0))
    trader.send(eng.functions.trade(0, WAD, UINT256_MAX))
    trader.send(eng.functions.trade(1, WAD // 10, UINT256_MAX))
    rec("MarginEngine.trade (close, 2 positions + 2 collaterals)", trader, eng.functions.trade(1, -WAD // 10, 0))

    # Withdrawals with 2 positions and 2 collaterals ------------------------------
    rec("MarginEngine.withdraw (quote, 2 positions + 2 collaterals)", trader, eng.functions.withdraw(usdc.address, 10**6))
    rec("MarginEngine.withdraw (collateral, 2 positions + 2 collaterals)", trader, eng.functions.withdraw(weth.address, 10**17))

    # Liquidations -------------------------------------------------------------
    # trader2: only WETH collateral and an ETH short; its cash goes negative with the fee.
    trader2.send(eng.functions.deposit(weth.address, 10 * 10**18))
    trader2.send(eng.functions.trade(0, -60 * WAD, 0))

    # ETH 1700, BTC 55000: trader's maint_health < 0 and `need` exceeds the position, so
    # max_size = 10 makes a partial liquidation.
    owner.send(eth_feed.functions.set_answer(1_700 * 10**8))
    owner.send(btc_feed.functions.set_answer(55_000 * 10**8))
    rec(
        "MarginEngine.liquidate (partial, 2 positions + 2 collaterals)",
        liquidator, eng.functions.liquidate(trader.address, 0, 10 * WAD),
    )
    owner.send(eth_feed.functions.set_answer(1_500 * 10**8))
    rec(
        "MarginEngine.liquidate (close whole, 2 positions + 2 collaterals)",
        liquidator, eng.functions.liquidate(trader.address, 0, UINT256_MAX),
    )

    # ETH 2600: trader2 is bankrupt (equity < 0); its position closes with no penalty, then its
    # collateral is bought at a discount, leaving bad debt to settle.
    owner.send(eth_feed.functions.set_answer(2_600 * 10**8))
    liquidator.send(eng.functions.liquidate(trader2.address, 0, UINT256_MAX))
    liquidator.send(usdc.functions.approve(eng.address, UINT256_MAX))
    rec(
        "MarginEngine.liquidate_collateral (1 collateral, negative cash)",
        liquidator, eng.functions.liquidate_collateral(trader2.address, weth.address, 1_000 * 10**6),
    )
    rec(
        "MarginEngine.liquidate_collateral (last collateral, settles the bad debt)",
        liquidator, eng.functions.liquidate_collateral(trader2.address, weth.address, UINT256_MAX),
    )

    # A batch: BATCH_ORDERS accounts like trader's (2 positions, 2 collaterals), each liquidated
    # partially (max_size 10) in one liquidate_many; and a batch whose every order is skipped.
    owner.send(eth_feed.functions.set_answer(2_000 * 10**8))
    owner.send(btc_feed.functions.set_answer(60_000 * 10**8))
    batch = [Sender.from_key(w3, Account.from_key(keccak(text=f"gas snapshot batch {i}"))) for i in range(BATCH_ORDERS)]
    for b in batch:
        w3.eth.send_transaction({"from": owner.address, "to": b.address, "value": 10**18})
        fund(b, usdc, 3_000 * 10**6)
        fund(b, weth, 10**18)
        fund(b, wbtc, 10**7)
        b.send(eng.functions.deposit(usdc.address, 3_000 * 10**6))
        b.send(eng.functions.deposit(weth.address, 10**18))
        b.send(eng.functions.deposit(wbtc.address, 10**7))
        b.send(eng.functions.trade(0, 20 * WAD, UINT256_MAX))
        b.send(eng.functions.trade(1, WAD // 5, UINT256_MAX))
    zero = "0x" + "00" * 20
    orders = [(b.address, 0, zero, 10 * WAD) for b in batch]
    rec(f"MarginEngine.liquidate_many ({BATCH_ORDERS} orders, all skipped: healthy)", liquidator,
        eng.functions.liquidate_many(orders))
    owner.send(eth_feed.functions.set_answer(1_700 * 10**8))
    owner.send(btc_feed.functions.set_answer(55_000 * 10**8))
    rec(BATCH_LABEL, liquidator, eng.functions.liquidate_many(orders))
    assert all(eng.functions.position(b.address, 0).call()[0] == 10 * WAD for b in batch), "every order executes"

    # Admin --------------------------------------------------------------------
    rec("MarginEngine.set_market_price_age", owner, eng.functions.set_market_price_age(0, 86_400))
    rec("MarginEngine.set_collateral_price_age", owner, eng.functions.set_collateral_price_age(weth.address, 86_400))
    feed3 = deploy_contract(w3, owner, "PriceFeed", 8, "SOL / USD", 150 * 10**8, 1, 2**100 // 10**10)
    token3 = deploy_contract(w3, owner, "Token", "Wrapped SOL", "WSOL", 9)
    rec("MarginEngine.list_market", owner, eng.functions.list_market(feed3.address, WAD // 10, WAD // 20, WAD // 50, 5 * 10**14, 0))
    rec("MarginEngine.set_market_params", owner, eng.functions.set_market_params(2, WAD // 8, WAD // 20, WAD // 50, 5 * 10**14, 10**30))
    rec("MarginEngine.list_collateral", owner, eng.functions.list_collateral(token3.address, feed3.address, 7 * 10**17, 75 * 10**16, 5 * 10**16, 0))
    rec("MarginEngine.set_collateral_params", owner, eng.functions.set_collateral_params(token3.address, 6 * 10**17, 75 * 10**16, 5 * 10**16, 10**15))
    rec("MarginEngine.set_params", owner, eng.functions.set_params(WAD // 2, 3600, 10 * WAD))
    owner.send(usdc.functions.mint(owner.address, 2 * 10**6))
    owner.send(usdc.functions.approve(eng.address, UINT256_MAX))
    rec("MarginEngine.seed_house", owner, eng.functions.seed_house(10**6))
    rec("MarginEngine.seed_insurance", owner, eng.functions.seed_insurance(10**6))
    rec("MarginEngine.pause", owner, eng.functions.pause())
    rec("MarginEngine.unpause", owner, eng.functions.unpause())
    rec("MarginEngine.transfer_ownership", owner, eng.functions.transfer_ownership(rival.address))
    rec("MarginEngine.accept_ownership", rival, eng.functions.accept_ownership())
    return gas


def render(gas: dict[str, int]) -> str:
    width = max(len(k) for k in gas)
    return "".join(f"{k.ljust(width)}  {v}\n" for k, v in sorted(gas.items()))


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--check", action="store_true", help="compare with the committed snapshot instead of writing it")
    args = ap.parse_args(argv)
    gas = measure()
    text = render(gas)
    if args.check:
        old = SNAPSHOT.read_text() if SNAPSHOT.exists() else ""
        if old != text:
            sys.stdout.write(text)
            print(f"gas snapshot differs from {SNAPSHOT.relative_to(ROOT)}: run 'python bench/gas_snapshot.py' and commit the diff", file=sys.stderr)
            return 1
        return 0
    sys.stdout.write(text)
    print()
    for label, ceiling in TARGETS.items():
        used = gas.get(label)
        status = "missing" if used is None else ("ok" if used <= ceiling else "OVER")
        print(f"target  {label}: {used} <= {ceiling}  {status}")
    per_order = gas[BATCH_LABEL] // BATCH_ORDERS
    print(f"liquidate_many: {per_order} gas per order in a batch of {BATCH_ORDERS} (target 90000)")
    SNAPSHOT.parent.mkdir(parents=True, exist_ok=True)
    SNAPSHOT.write_text(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
