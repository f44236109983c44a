"""Oracle backrun benchmark: liquidations in the same block as the price update that caused them.

    python bench/backrun_bench.py                              # 1,000 accounts, dev node and anvil
    python bench/backrun_bench.py --accounts 10000 --updates 4
    python bench/backrun_bench.py --nodes devnode --block-time 2

For each node, a chain that mines a block every ``--block-time`` seconds by itself: the embedded
dev node (``devnode.DevNode(block_time=...)``, eth-tester on py-evm, in this process) and anvil
(``anvil --block-time 2 --order fees``, started here on 127.0.0.1 and stopped after). The protocol
and N traders are set up as in ``bench/bot_bench.py`` (its :class:`BenchChain` and trader factory:
70 % ETH-PERP, 4 % of the accounts at 8x-9.9x), then the market drifts to ETH 1,940.

The same scenario runs twice from one ``evm_snapshot``: our bot with ``backrun`` on, then the same
bot with it off (the baseline, which reacts to mined blocks), each in its own thread through
:meth:`bot.liquidator.Liquidator.run` (the live loop: heads polled every 0.25 s, with backrun the
pending pool read every 0.05 s in between). An oracle (the feeds' updater) publishes ``--updates``
ETH price falls (-3 %, -2 %, -1.5 %, -1.5 %, ...), each sent at a random moment of a block interval
(seeded) with a 2 gwei priority fee and left to the node's own block production; the next update
waits until the liquidations of the last one have landed. Then ``--withdrawn`` further falls (-5 % each) are
sent and withdrawn by the oracle before the next block (replaced by a no-op with the same nonce and
higher fees): a backrun sent meanwhile lands without its update, and the engine skips its orders.

Measured from the chain alone, independently of the bot:

* **same block**: a liquidation (``Liquidation`` / ``CollateralLiquidation`` of the bot) is in the
  same block as the price update that caused it (the last ``AnswerUpdated`` before it in block
  order); the share of all the bot's liquidations;
* **wrongful**: a liquidation of an account that was not liquidatable right before it: the
  model's state at the parent block (the Lens), the block's engine and feed events applied in
  log order (:func:`protocol_model.logs.apply_event`), the account's health checked in the engine's
  liquidation mode before each of the bot's liquidations (must be 0);
* **skipped orders** (``LiquidationSkipped`` of the bot) and their gas: each transaction's gas
  (``gasUsed x effectiveGasPrice``) shared by its orders, the skipped ones' shares summed.

Benchmarks print a table; this one asserts nothing (exit 0 unless something failed to run).
"""

from __future__ import annotations

import argparse
import logging
import random
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from eth_account.signers.local import LocalAccount  # noqa: E402
from web3 import Web3  # noqa: E402

from bot_bench import DRIFT_ETH, OPEN_PRICES, BenchChain, bind_copy, bot_web3, plan_orders  # noqa: E402
from devnode import DevNode  # noqa: E402
from bot.pending import SET_ANSWER  # noqa: E402
from protocol_model.calls import encode_call  # noqa: E402
from protocol_model.deploy import Deployment  # noqa: E402
from protocol_model.health import LIQUIDATION, health  # noqa: E402
from protocol_model.loader import load_accounts, load_protocol  # noqa: E402
from protocol_model.logs import ENGINE, FEED, apply_event, decode_log  # noqa: E402
from protocol_model.wad import WAD  # noqa: E402

log = logging.getLogger("bench.backrun_bench")

GWEI = 10**9
ORACLE_TIP = 2 * GWEI
ORACLE_GAS = 300_000
STEPS_BP = (-300, -200, -150, -150, -150, -150)      # successive ETH moves, basis points
WITHDRAWN_BP = -500                                   # the withdrawn updates' move: a deep one
ANVIL_PORT = 8597
TARGET_SHARE = 0.90


# ---------------------------------------------------------------------------- nodes


class Node:
    """A node that mines a block every ``block_time`` seconds by itself, on 127.0.0.1."""

    def __init__(self, kind: str, block_time: float) -> None:
        self.kind = kind
        self.block_time = block_time
        self.devnode: DevNode | None = None
        self.proc: subprocess.Popen[bytes] | None = None
        if kind == "devnode":
            self.devnode = DevNode(block_time=block_time, port=0)
            self.devnode.start()
            self.url = self.devnode.url
        else:
            binary = anvil_binary()
            self.proc = subprocess.Popen(
                [binary, "--host", "127.0.0.1", "--port", str(ANVIL_PORT), "--block-time", f"{block_time:g}",
                 "--order", "fees", "--silent", "--gas-limit", "30000000"],
                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
            self.url = f"http://127.0.0.1:{ANVIL_PORT}"
            w3 = Web3(Web3.HTTPProvider(self.url))
            deadline = time.monotonic() + 30
            while True:
                try:
                    w3.eth.block_number  # noqa: B018 - the probe
                    break
                except Exception:   # noqa: BLE001 - not listening yet
                    if time.monotonic() > deadline or self.proc.poll() is not None:
                        self.stop()
                        raise RuntimeError(f"anvil did not start on port {ANVIL_PORT}") from None
                    time.sleep(0.1)

    def resume_interval_mining(self, w3: Web3) -> None:
        """BenchChain's setup switches automining on and off; give the node its block time back."""
        if self.kind == "anvil":
            w3.provider.make_request("evm_setIntervalMining", [int(self.block_time)])  # type: ignore[arg-type]

    def stop(self) -> None:
        if self.devnode is not None:
            self.devnode.stop()
            self.devnode = None
        if self.proc is not None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
            self.proc = None


def anvil_binary() -> str:
    for candidate in sorted((ROOT / ".anvil" / "node_modules" / "@foundry-rs").glob("anvil-*/bin/anvil")):
        return str(candidate)
    found = shutil.which("anvil")
    if found is None:
        raise RuntimeError("anvil not found: npm install --prefix .anvil @foundry-rs/anvil")
    return found


# ---------------------------------------------------------------------------- results


@dataclass
class ModeResult:
    node: str
    bot: str
    updates: int = 0
    withdrawn: int = 0
    update_blocks: list[int] = field(default_factory=list)
    liquidations: int = 0
    same_block: int = 0
    wrongful: int = 0
    transactions: int = 0
    skipped_orders: int = 0
    skipped_gas_wei: int = 0
    gas_wei: int = 0
    latencies: list[float] = field(default_factory=list)   # backrun: pending update seen -> last send

    @property
    def share(self) -> float | None:
        return self.same_block / self.liquidations if self.liquidations else None


# ---------------------------------------------------------------------------- the run


def run_node(kind: str, n: int, seed: int, updates: int, cancelled: int, block_time: float) -> list[ModeResult]:
    print(f"== {kind}: {n:,} accounts, a block every {block_time:g} s", flush=True)
    node = Node(kind, block_time)
    try:
        chain = BenchChain(node.url)
        t = time.perf_counter()
        dep = chain.deploy()
        orders = plan_orders(n, seed, dep)
        chain.create_traders(orders)
        keeper = chain.funded_account()
        chain.owner_tx(dep.quote_contract.functions.mint(keeper.address, 1_000_000 * 10**dep.quote_decimals))
        chain.set_prices({"ETH": DRIFT_ETH, "BTC": OPEN_PRICES["BTC"]})
        chain.check_prices()
        node.resume_interval_mining(chain.w3)
        print(f"   setup {time.perf_counter() - t:.0f} s", flush=True)
        snap = chain.rpc("evm_snapshot")
        results = []
        for backrun in (True, False):
            if not backrun:
                if chain.rpc("evm_revert", [snap]) is False:
                    raise RuntimeError("evm_revert failed")
                node.resume_interval_mining(chain.w3)
            results.append(run_mode(chain, node, dep, keeper, backrun, updates, cancelled, random.Random(seed)))
        return results
    finally:
        node.stop()


def run_mode(chain: BenchChain, node: Node, dep: Deployment, keeper: LocalAccount, backrun: bool, updates: int,
             cancelled: int, rng: random.Random) -> ModeResult:
    from bot.config import BotConfig
    from bot.liquidator import Liquidator

    name = "ours (backrun)" if backrun else "baseline (no backrun)"
    w3 = chain.w3
    with tempfile.TemporaryDirectory() as tmp:
        config = BotConfig.from_env(environ={}, rpc_url=node.url, db_path=str(Path(tmp) / "bot.sqlite3"),
                                    backrun=backrun, poll_interval_s=0.25, pending_poll_interval_s=0.05)
        bw3 = bot_web3(node.url)
        bot = Liquidator(bw3, bind_copy(dep, bw3), keeper, config)
        thread = threading.Thread(target=bot.run, kwargs={"install_signals": False}, name=f"bot-{name}", daemon=True)
        thread.start()
        try:
            deadline = time.monotonic() + 600
            while not (bot._processed_once and (bot.backrun is not None or not backrun)):
                if time.monotonic() > deadline or not thread.is_alive():
                    raise RuntimeError(f"{name}: the bot did not start")
                time.sleep(0.05)
            wait_blocks(w3, 2, node.block_time)     # the bot's approve mined, steady state
            start = w3.eth.block_number
            answer = DRIFT_ETH
            feed = dep.feed_contract("ETH")
            for k in range(updates):
                wait_blocks(w3, 1, node.block_time)
                time.sleep(rng.uniform(0.1, 0.6) * node.block_time)
                answer = answer * (10_000 + STEPS_BP[k % len(STEPS_BP)]) // 10_000
                nonce = w3.eth.get_transaction_count(chain.owner.address, "pending")
                base = w3.eth.get_block("latest")["baseFeePerGas"]
                tx = w3.eth.send_transaction({
                    "from": chain.owner.address, "to": feed.address, "nonce": nonce, "gas": ORACLE_GAS,
                    "data": "0x" + encode_call(SET_ANSWER, answer).hex(),
                    "maxFeePerGas": 2 * base + ORACLE_TIP, "maxPriorityFeePerGas": ORACLE_TIP,
                })
                receipt = w3.eth.wait_for_transaction_receipt(tx, timeout=120, poll_latency=0.1)
                if receipt["status"] != 1:
                    raise RuntimeError("set_answer reverted")
                print(f"   {name}: ETH {answer / 1e8:,.2f} in block {receipt['blockNumber']}", flush=True)
                settle(w3, bot, node.block_time)
            for _ in range(cancelled):
                # An update the oracle withdraws (a no-op with the same nonce and higher fees) before
                # the block: a backrun sent meanwhile lands without it, its orders skipped.
                wait_blocks(w3, 1, node.block_time)
                time.sleep(rng.uniform(0.05, 0.15) * node.block_time)
                withdrawn = answer * (10_000 + WITHDRAWN_BP) // 10_000
                nonce = w3.eth.get_transaction_count(chain.owner.address, "pending")
                base = w3.eth.get_block("latest")["baseFeePerGas"]
                w3.eth.send_transaction({
                    "from": chain.owner.address, "to": feed.address, "nonce": nonce, "gas": ORACLE_GAS,
                    "data": "0x" + encode_call(SET_ANSWER, withdrawn).hex(),
                    "maxFeePerGas": 2 * base + ORACLE_TIP, "maxPriorityFeePerGas": ORACLE_TIP,
                })
                time.sleep(0.3 * node.block_time)
                tx = w3.eth.send_transaction({
                    "from": chain.owner.address, "to": chain.owner.address, "value": 0, "nonce": nonce, "gas": 21_000,
                    "maxFeePerGas": 2 * (2 * base + ORACLE_TIP), "maxPriorityFeePerGas": 2 * ORACLE_TIP,
                })
                w3.eth.wait_for_transaction_receipt(tx, timeout=120, poll_latency=0.1)
                print(f"   {name}: ETH {withdrawn / 1e8:,.2f} sent, then withdrawn", flush=True)
                settle(w3, bot, node.block_time)
            end = w3.eth.block_number
        finally:
            bot.stop()
            thread.join(120)
        if thread.is_alive():
            raise RuntimeError(f"{name}: the bot did not stop")
        res = analyse(w3, dep, keeper.address, start, end, node.kind, name)
        res.withdrawn = cancelled
        if bot.backrun is not None:
            res.latencies = [r.latency_s for r in bot.backrun.reports if r.latency_s is not None]
        return res


def wait_blocks(w3: Web3, count: int, block_time: float) -> int:
    target = w3.eth.block_number + count
    deadline = time.monotonic() + 60 + 10 * count * block_time
    while (head := w3.eth.block_number) < target:
        if time.monotonic() > deadline:
            raise RuntimeError("the node stopped producing blocks")
        time.sleep(0.02)
    return head


def settle(w3: Web3, bot: Any, block_time: float) -> None:
    """Blocks go by until the bot has nothing in flight for two blocks in a row."""
    quiet = 0
    for _ in range(30):
        wait_blocks(w3, 1, block_time)
        quiet = quiet + 1 if not bot.pending() else 0
        if quiet >= 2:
            return


# ---------------------------------------------------------------------------- analysis (chain only)


def analyse(w3: Web3, dep: Deployment, keeper: str, start: int, end: int, kind: str, name: str) -> ModeResult:
    res = ModeResult(kind, name)
    feeds = list(dep.feeds.values())
    logs = w3.eth.get_logs({"fromBlock": start + 1, "toBlock": end, "address": [dep.engine, *feeds]})
    events = []
    for entry in logs:
        ev = decode_log(entry, ENGINE if Web3.to_checksum_address(entry["address"]) == dep.engine else FEED)
        if ev is not None:
            events.append(ev)
    events.sort(key=lambda e: e.order)
    last_update: Any = None
    ours_by_tx: dict[str, list[Any]] = {}
    blocks_with_ours: set[int] = set()
    for ev in events:
        if ev.contract == FEED and ev.name == "AnswerUpdated":
            last_update = ev
            res.updates += 1
            res.update_blocks.append(ev.block)
            continue
        if ev.args.get("liquidator") != keeper:
            continue
        if ev.name in ("Liquidation", "CollateralLiquidation", "LiquidationSkipped"):
            ours_by_tx.setdefault(ev.tx_hash, []).append(ev)
        if ev.name in ("Liquidation", "CollateralLiquidation"):
            res.liquidations += 1
            blocks_with_ours.add(ev.block)
            if last_update is not None and last_update.block == ev.block:
                res.same_block += 1
        elif ev.name == "LiquidationSkipped":
            res.skipped_orders += 1
    for tx_hash, evs in ours_by_tx.items():
        receipt = w3.eth.get_transaction_receipt(tx_hash)
        gas = int(receipt["gasUsed"]) * int(receipt["effectiveGasPrice"])
        res.transactions += 1
        res.gas_wei += gas
        skipped = sum(e.name == "LiquidationSkipped" for e in evs)
        res.skipped_gas_wei += gas * skipped // len(evs)
    res.wrongful = sum(wrongful_in_block(w3, dep, keeper, b) for b in sorted(blocks_with_ours))
    return res


def wrongful_in_block(w3: Web3, dep: Deployment, keeper: str, block: int) -> int:
    """The bot's liquidations in ``block`` of accounts not liquidatable right before them."""
    logs = w3.eth.get_logs({"fromBlock": block, "toBlock": block, "address": [dep.engine, *dep.feeds.values()]})
    events = sorted((ev for ev in (decode_log(e, ENGINE if Web3.to_checksum_address(e["address"]) == dep.engine
                                              else FEED) for e in logs) if ev is not None), key=lambda e: e.order)
    touched = {ev.args["account"] for ev in events if isinstance(ev.args.get("account"), str)}
    state = load_protocol(w3, dep, block - 1)
    load_accounts(w3, dep, state, sorted(touched), block_identifier=block - 1)
    state.timestamp = int(w3.eth.get_block(block)["timestamp"])
    bad = 0
    for ev in events:
        if ev.name in ("Liquidation", "CollateralLiquidation") and ev.args.get("liquidator") == keeper:
            acc = state.accounts.get(ev.args["account"])
            if acc is None or health(state, acc, LIQUIDATION).maint_health >= 0:
                bad += 1
                log.error("wrongful liquidation of %s in block %d", ev.args["account"], block)
        apply_event(state, ev)
    return bad


# ---------------------------------------------------------------------------- output


def print_table(results: list[ModeResult]) -> None:
    headers = ("node", "bot", "updates mined / withdrawn", "liquidations", "same block as update", "share",
               "wrongful", "txs", "skipped orders", "gas of skipped orders (ETH)", "gas, all txs (ETH)")
    rows = []
    for r in results:
        rows.append((r.node, r.bot, f"{r.updates} / {r.withdrawn}", f"{r.liquidations:,}", f"{r.same_block:,}",
                     f"{r.share:.0%}" if r.share is not None else "-", str(r.wrongful), str(r.transactions),
                     str(r.skipped_orders), f"{r.skipped_gas_wei / WAD:.6f}", f"{r.gas_wei / WAD:.6f}"))
    widths = [max(len(h), *(len(row[i]) for row in rows)) for i, h in enumerate(headers)]
    print()
    print("| " + " | ".join(h.ljust(w) for h, w in zip(headers, widths)) + " |")
    print("|" + "|".join("-" * (w + 2) for w in widths) + "|")
    for row in rows:
        print("| " + " | ".join(c.ljust(w) if i < 2 else c.rjust(w) for i, (c, w) in enumerate(zip(row, widths))) + " |")
    print()
    for r in results:
        if r.latencies:
            lat = sorted(r.latencies)
            print(f"{r.node}, {r.bot}: pending update seen -> last backrun sent: median {lat[len(lat) // 2] * 1000:.0f} ms, "
                  f"max {lat[-1] * 1000:.0f} ms over {len(lat)} update(s)")
    print(f"target: at least {TARGET_SHARE:.0%} of the liquidations in the block of their price update, 0 wrongful")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--accounts", type=int, default=1_000, help="traders (default 1,000)")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--updates", type=int, default=4, help="price updates the oracle publishes (default 4)")
    parser.add_argument("--withdrawn", type=int, default=1,
                        help="further updates the oracle sends and withdraws before the block (default 1)")
    parser.add_argument("--block-time", type=float, default=2.0, help="seconds between blocks (default 2)")
    parser.add_argument("--nodes", default="devnode,anvil", help="comma-separated: devnode, anvil")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    kinds = [k.strip() for k in args.nodes.split(",") if k.strip()]
    for k in kinds:
        if k not in ("devnode", "anvil"):
            parser.error(f"unknown node {k!r}: devnode or anvil")
    if args.accounts < 1 or args.updates < 1 or args.withdrawn < 0 or not 0 < args.block_time <= 60:
        parser.error("--accounts and --updates must be >= 1, --withdrawn >= 0, --block-time in (0, 60]")
    results: list[ModeResult] = []
    for kind in kinds:
        results.extend(run_node(kind, args.accounts, args.seed, args.updates, args.withdrawn, args.block_time))
    print_table(results)
    return 0


if __name__ == "__main__":
    sys.exit(main())
