"""Liquidation bot benchmark: price update to submission, and RPC calls per block, against a naive bot.

    python bench/bot_bench.py                          # 1,000 and 10,000 accounts, seed 1
    python bench/bot_bench.py --accounts 2000 --seed 7 --idle-blocks 5
    python bench/bot_bench.py --node http://127.0.0.1:8545   # against another node (see below)

For each number of accounts N, on a fresh in-process dev node (``devnode.DevNode``, eth-tester on
py-evm), or with ``--node URL`` on any node that has an unlocked funded account and the usual
dev-node methods ``evm_setAutomine``, ``evm_mine``, ``evm_snapshot`` and ``evm_revert`` (anvil,
``npx hardhat node``, ``xmargin node``), every block mined by hand with ``evm_mine``:

1. **Setup** (timed, not part of the measurement): deploy the protocol (default listing), then
   create N engine accounts fast with ``bench/contracts/TraderFactory.vy``: each trader is a
   minimal proxy of ``BenchTrader.vy`` that the factory funds with quote tokens and that deposits
   and opens one position in the same call, about 75 traders per transaction, one transaction per
   block (about 15M gas: under the 2**24 per-transaction gas cap of EIP-7825, and near the EIP-1559
   gas target, so the base fee stays flat). The engine sees
   ordinary accounts and emits ordinary Deposit/Trade events, so both bots discover the traders
   from logs exactly as they would real ones.
2. **Scenario.** Every position is opened at ETH 2,000 / BTC 60,000 with 500-10,000 USDC of
   margin; 70 % of accounts trade ETH-PERP (three longs for each short), 30 % BTC-PERP (half long);
   96 % of accounts are opened at 1x-7x, 4 % at 8x-9.9x (the engine allows about 9.95x at an initial
   margin fraction of 10 %). The market then drifts to ETH 1,940 (-3 %): no account is
   liquidatable yet. The measured price update is a single -4 % ETH print, 1,940 -> 1,862.40
   (-6.9 % from the open): it makes the ETH longs opened above about 8.6x liquidatable, about 1.5 %
   of all accounts (13 of 1,000 and 168 of 10,000 with seed 1), and each bot then has that many
   liquidations to send, one per account.
3. **Idle blocks.** The bots run on the same empty blocks; RPC calls per block are counted for each
   with a :class:`bot.rpc.CountingRpc` on its own ``Web3``.
4. **Crash block.** An ``evm_snapshot`` is taken; the crash is published and mined; our bot ticks
   and sends; its transactions are mined and the Liquidation (and LiquidationSkipped) events of
   its transactions are counted. The chain is reverted to the snapshot and the same crash is
   replayed for the next bot (ours with the node preflight, then the naive bot), so they never
   race for the same accounts.

"Seconds to first / last submission" run from the moment the crash block is mined (the new head
is visible to a bot that asks; the bot starts handling it at once) to the node's answer to the
bot's first / last ``eth_sendRawTransaction``, timed for all bots by the same bench-side
middleware (:class:`RequestClock`), which also splits our bot's crash tick into time spent waiting
for the node, per method, and the bot's own work. The bot's polling interval (how long it takes
to notice a new head) is excluded: it is a setting, not work.

Our bot runs twice, side by side from the same chain state (its own key and ``Web3`` each):
``ours`` with its default preflight (``auto``: the mirror is exactly at the head, so the exact
model of ``bot/preflight.py`` simulates the whole tick's ``liquidate_many`` batches in order,
without a node call, and every batch is signed and sent in one JSON-RPC batch), and ``ours, node
preflight`` (``--preflight node``: each wave of doubling size, 1, 2, 4, ... batches, most
profitable first, is one JSON-RPC batch of ``eth_call`` preflights and one of
``eth_sendRawTransaction``). The in-process py-evm node is much slower than a production node (it
executes a liquidation's ``eth_call`` in about 10 ms), and the node and the bots share one Python
process, so absolute times on it are pessimistic; ``--node`` measures the same against a faster
node. RPC call counts are exact on any node. ``--profile`` prints a cProfile of ``ours``' crash
tick.

The naive bot (:class:`NaiveBot`) discovers accounts from the engine's Deposit logs once at startup
(not counted per block) and then, per block, calls the engine's ``health`` view once per account;
for each liquidatable account it reads its positions, preflights ``liquidate`` with ``eth_call`` and
sends it signed locally with tracked nonces.

A benchmark prints a table; it asserts nothing and its exit status is 0 unless something failed
(a setup transaction reverted, or a bot raised).
"""

from __future__ import annotations

import argparse
import cProfile
import importlib
import importlib.util
import io
import logging
import pstats
import random
import sys
import time
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from eth_account import Account  # noqa: E402
from eth_account.signers.local import LocalAccount  # noqa: E402
from web3 import Web3  # noqa: E402
from web3.contract import Contract  # noqa: E402
from web3.exceptions import ContractLogicError  # noqa: E402
from web3.middleware import Web3Middleware  # noqa: E402

from devnode import DevNode  # noqa: E402
from bot.rpc import CountingRpc  # noqa: E402
from protocol_model.chain import Sender  # noqa: E402
from protocol_model.deploy import DeployConfig, Deployment, FeedSpec, deploy_protocol  # noqa: E402
from protocol_model.wad import WAD  # noqa: E402

log = logging.getLogger("bench.bot_bench")

BENCH_CONTRACTS = Path(__file__).resolve().parent / "contracts"

# Targets of the issues (10,000 accounts): price update -> last submission on the embedded dev
# node and on another node (anvil), and the RPC calls per idle block against the naive bot.
TARGET_SECONDS = 0.5
TARGET_SECONDS_NODE = 0.2
TARGET_RPC_RATIO = 50.0

# Our bot, measured twice: (row name, its preflight setting).
OUR_BOTS = (("ours", "auto"), ("ours, node preflight", "node"))
PROFILE_LINES = 30

# Scenario (see the module docstring). Feed answers have 8 decimals.
OPEN_PRICES = {"ETH": 2_000 * 10**8, "BTC": 60_000 * 10**8}
DRIFT_ETH = 1_940 * 10**8                    # -3 %: the market when the bots start
CRASH_ETH = DRIFT_ETH * 96 // 100            # -4 %: the measured update (1,862.40)
MARGINS_USD = (500, 1_000, 2_000, 5_000, 10_000)
ETH_SHARE = 0.70                             # accounts trading ETH-PERP; the rest BTC-PERP
ETH_LONG_SHARE = 0.75
BTC_LONG_SHARE = 0.50
HIGH_LEVERAGE_SHARE = 0.04                   # accounts opened at 8x-9.9x
LOW_LEVERAGE_BP = (10_000, 70_000)           # leverage in basis points: 10,000 = 1x
HIGH_LEVERAGE_BP = (80_000, 99_000)

# Account creation.
TRADERS_PER_TX = 75                          # about 194k gas each: ~14.6M gas, the gas target
CREATE_TX_GAS = 16_000_000                   # declared limit, under the 2**24 per-transaction cap (EIP-7825)
OWNER_TX_GAS = 300_000
LIQUIDATION_GAS = 500_000                    # naive bot's fixed gas limit per liquidation
TIP_WEI = 10**9


# ---------------------------------------------------------------------------- contracts


@dataclass(frozen=True)
class Compiled:
    abi: list[dict[str, Any]]
    bytecode: str
    blueprint: str | None = None


@cache
def compile_bench_contracts() -> dict[str, Compiled]:
    """Compile the bench-only contracts (BenchTrader as a blueprint, TraderFactory)."""
    from vyper.compiler import compile_code

    out: dict[str, Compiled] = {}
    src = (BENCH_CONTRACTS / "BenchTrader.vy").read_text()
    c = compile_code(src, contract_path="BenchTrader.vy", output_formats=["abi", "bytecode", "blueprint_bytecode"])
    out["BenchTrader"] = Compiled(c["abi"], c["bytecode"], c["blueprint_bytecode"])
    src = (BENCH_CONTRACTS / "TraderFactory.vy").read_text()
    c = compile_code(src, contract_path="TraderFactory.vy", output_formats=["abi", "bytecode"])
    out["TraderFactory"] = Compiled(c["abi"], c["bytecode"])
    return out


# ---------------------------------------------------------------------------- traders


@dataclass(frozen=True)
class Order:
    """One trader for TraderFactory.create_traders: the struct ``Order``."""

    margin: int          # quote native units
    market_id: int
    size: int            # base units WAD, signed
    leverage_bp: int     # notional / margin at the open price, basis points

    def as_struct(self) -> tuple[int, int, int]:
        return (self.margin, self.market_id, self.size)


def plan_orders(n: int, seed: int, dep: Deployment) -> list[Order]:
    """``n`` reproducible traders per the scenario in the module docstring."""
    rng = random.Random(seed)
    eth, btc = dep.market_id("ETH-PERP"), dep.market_id("BTC-PERP")
    prices = {eth: OPEN_PRICES["ETH"] * 10**10, btc: OPEN_PRICES["BTC"] * 10**10}  # market id -> WAD
    orders: list[Order] = []
    for _ in range(n):
        margin_usd = rng.choice(MARGINS_USD)
        market = eth if rng.random() < ETH_SHARE else btc
        is_long = rng.random() < (ETH_LONG_SHARE if market == eth else BTC_LONG_SHARE)
        band = HIGH_LEVERAGE_BP if rng.random() < HIGH_LEVERAGE_SHARE else LOW_LEVERAGE_BP
        lev_bp = rng.randint(*band)
        notional = margin_usd * WAD * lev_bp // 10_000
        size = notional * WAD // prices[market]
        orders.append(Order(margin_usd * 10**dep.quote_decimals, market, size if is_long else -size, lev_bp))
    return orders


# ---------------------------------------------------------------------------- the chain


@dataclass
class SetupTimes:
    deploy_s: float = 0.0
    create_s: float = 0.0
    create_blocks: int = 0
    prices_s: float = 0.0

    @property
    def total_s(self) -> float:
        return self.deploy_s + self.create_s + self.prices_s


class BenchChain:
    """A node with the protocol deployed, driven by hand over standard dev-node JSON-RPC
    (``evm_setAutomine``, ``evm_mine``, ``evm_snapshot``/``evm_revert``): the owner's transactions
    are mined at once; the bots' wait in the mempool until :meth:`mine` is called. Without ``url``
    the node is a fresh in-process dev node (eth-tester on py-evm); with it, any node that speaks
    those methods and has an unlocked funded account (anvil, hardhat, ``xmargin node``)."""

    def __init__(self, url: str | None = None) -> None:
        self.node: DevNode | None = None
        if url is None:
            self.node = DevNode(block_time=3600, port=0)
            self.node.start()
            url = self.node.url
        self.url = url
        self.w3 = Web3(Web3.HTTPProvider(url, request_kwargs={"timeout": 300}))
        self.client = self.w3.client_version
        if self.client.startswith("HardhatNetwork"):
            # Hardhat prints every request to its console by default; that printing is not node work.
            self.rpc("hardhat_setLoggingEnabled", [False])
        self.owner = Sender.unlocked(self.w3, 0)
        self.rpc("evm_setAutomine", [False])
        self.dep: Deployment | None = None
        self.factory: Contract | None = None
        self._price_txs: list[bytes] = []

    # ------------------------------------------------------------------ node control
    def rpc(self, method: str, params: list[Any] | None = None) -> Any:
        response = self.w3.provider.make_request(method, params or [])  # type: ignore[arg-type]
        if "error" in response:
            raise RuntimeError(f"{method} failed: {response['error']}")
        return response["result"]

    def mine(self) -> int:
        self.rpc("evm_mine")
        return self.w3.eth.block_number

    def pending_count(self) -> int:
        try:
            status = self.rpc("txpool_status")
        except RuntimeError:  # a node without the txpool namespace: count the pending block
            return len(self.w3.eth.get_block("pending")["transactions"])
        return int(status["pending"], 16) + int(status["queued"], 16)

    def funded_account(self, eth: int = 100) -> LocalAccount:
        """A fresh key funded by the owner (the bots' keys; never printed)."""
        account: LocalAccount = Account.create()
        self.rpc("evm_setAutomine", [True])
        try:
            self.w3.eth.wait_for_transaction_receipt(self.w3.eth.send_transaction(
                {"from": self.owner.address, "to": account.address, "value": eth * WAD}))
        finally:
            self.rpc("evm_setAutomine", [False])
        return account

    def owner_tx(self, call: Any, gas: int = OWNER_TX_GAS) -> dict[str, Any]:
        """Send one owner transaction, mine it in a block of its own, and check it succeeded."""
        nonce = self.w3.eth.get_transaction_count(self.owner.address, "pending")
        max_fee = 2 * self.w3.eth.get_block("latest")["baseFeePerGas"] + TIP_WEI
        tx_hash = self.owner.submit(call, gas, nonce, max_fee=max_fee)
        self.mine()
        receipt = self.w3.eth.get_transaction_receipt(tx_hash)
        if receipt["status"] != 1:
            raise RuntimeError(f"setup transaction {tx_hash.hex()} reverted")
        return dict(receipt)

    def stop(self) -> None:
        if self.node is not None:
            self.node.stop()

    # ------------------------------------------------------------------ setup
    def deploy(self) -> Deployment:
        config = DeployConfig(feeds=tuple(FeedSpec(asset, answer) for asset, answer in OPEN_PRICES.items()))
        # deploy_protocol waits for each receipt: mine each transaction as it arrives meanwhile.
        self.rpc("evm_setAutomine", [True])
        try:
            dep = deploy_protocol(self.w3, self.owner, config)
            art = compile_bench_contracts()
            tx_hash = self.w3.eth.send_transaction({
                "from": self.owner.address, "data": art["BenchTrader"].blueprint, "gas": 3_000_000,
            })
            blueprint = self.w3.eth.wait_for_transaction_receipt(tx_hash)["contractAddress"]
            factory_cls = self.w3.eth.contract(abi=art["TraderFactory"].abi, bytecode=art["TraderFactory"].bytecode)
            receipt = self.owner.send(factory_cls.constructor(blueprint, dep.engine, dep.quote))
        finally:
            self.rpc("evm_setAutomine", [False])
        self.factory = self.w3.eth.contract(address=receipt["contractAddress"], abi=art["TraderFactory"].abi)
        self.dep = dep
        return dep

    def create_traders(self, orders: list[Order], progress: bool = True) -> int:
        """Fund the factory, then create the traders, one batch per block. Returns blocks mined."""
        assert self.dep is not None and self.factory is not None  # dev: deploy() first
        total_margin = sum(o.margin for o in orders)
        self.owner_tx(self.dep.quote_contract.functions.mint(self.factory.address, total_margin))
        blocks = 0
        nonce = self.w3.eth.get_transaction_count(self.owner.address, "pending")
        started = time.perf_counter()
        for i in range(0, len(orders), TRADERS_PER_TX):
            batch = [o.as_struct() for o in orders[i:i + TRADERS_PER_TX]]
            max_fee = 2 * self.w3.eth.get_block("latest")["baseFeePerGas"] + TIP_WEI
            tx_hash = self.owner.submit(self.factory.functions.create_traders(batch), CREATE_TX_GAS, nonce, max_fee=max_fee)
            nonce += 1
            self.mine()
            blocks += 1
            receipt = self.w3.eth.get_transaction_receipt(tx_hash)
            if receipt["status"] != 1:
                raise RuntimeError(f"create_traders reverted for traders {i}..{i + len(batch) - 1}")
            done = i + len(batch)
            if progress and (blocks % 20 == 0 or done == len(orders)):
                rate = done / (time.perf_counter() - started)
                print(f"    created {done:>6,}/{len(orders):,} accounts ({rate:,.0f}/s)", flush=True)
        created = self.factory.functions.trader_count().call()
        if created != len(orders):
            raise RuntimeError(f"the factory created {created} traders, expected {len(orders)}")
        return blocks

    def set_prices(self, answers: dict[str, int]) -> float:
        """Publish feed answers, all in one block, and mine it. Returns ``time.perf_counter()`` right
        after the block is mined (the new head visible); the receipts are checked after that."""
        assert self.dep is not None  # dev: deploy() first
        nonce = self.w3.eth.get_transaction_count(self.owner.address, "pending")
        max_fee = 2 * self.w3.eth.get_block("latest")["baseFeePerGas"] + TIP_WEI
        self._price_txs = []
        for asset, answer in answers.items():
            call = self.dep.feed_contract(asset).functions.set_answer(answer)
            self._price_txs.append(self.owner.submit(call, OWNER_TX_GAS, nonce, max_fee=max_fee))
            nonce += 1
        self.rpc("evm_mine")
        return time.perf_counter()

    def check_prices(self) -> None:
        """Check the receipts of the last :meth:`set_prices`."""
        for h in self._price_txs:
            if self.w3.eth.get_transaction_receipt(h)["status"] != 1:
                raise RuntimeError("set_answer reverted")

    def liquidations_by(self, liquidator: str, from_block: int) -> int:
        """Liquidation events with ``liquidator`` from ``from_block`` to the head."""
        assert self.dep is not None  # dev: deploy() first
        engine = self.dep.engine_contract
        events = engine.events.Liquidation.get_logs(
            from_block=from_block, to_block="latest", argument_filters={"liquidator": liquidator},
        )
        return len(events)

    def skipped_by(self, liquidator: str, from_block: int) -> int:
        """LiquidationSkipped events with ``liquidator`` from ``from_block`` to the head."""
        assert self.dep is not None  # dev: deploy() first
        events = self.dep.engine_contract.events.LiquidationSkipped.get_logs(
            from_block=from_block, to_block="latest", argument_filters={"liquidator": liquidator},
        )
        return len(events)

    def mine_until_empty(self, max_blocks: int = 10) -> int:
        """Mine until the mempool is empty (the bots' transactions are in); returns blocks mined."""
        mined = 0
        while self.pending_count() and mined < max_blocks:
            self.mine()
            mined += 1
        return mined


class RequestClock:
    """Bench-side timing of a Web3's requests, so that both bots are timed the same way: when each
    ``eth_sendRawTransaction`` got the node's answer (``time.perf_counter``), and the seconds spent
    waiting for the node, per method (the rest of a tick is the bot's own work)."""

    def __init__(self, w3: Web3) -> None:
        self.sends: list[float] = []
        self.waited: dict[str, float] = {}
        clock = self

        class _Clock(Web3Middleware):
            def wrap_make_request(self, make_request: Any) -> Any:
                def middleware(method: Any, params: Any) -> Any:
                    started = time.perf_counter()
                    response = make_request(method, params)
                    done = time.perf_counter()
                    clock.waited[method] = clock.waited.get(method, 0.0) + done - started
                    if method == "eth_sendRawTransaction" and "error" not in response:
                        clock.sends.append(done)
                    return response
                return middleware

            def wrap_make_batch_request(self, make_batch_request: Any) -> Any:
                def middleware(requests_info: Any) -> Any:
                    started = time.perf_counter()
                    responses = make_batch_request(requests_info)
                    done = time.perf_counter()
                    # One wait for the whole batch, shared by its members per method.
                    methods = [m for m, _ in requests_info]
                    for m in set(methods):
                        share = (done - started) * methods.count(m) / len(methods)
                        clock.waited[m] = clock.waited.get(m, 0.0) + share
                    if isinstance(responses, list):
                        for (m, _), resp in zip(requests_info, responses):
                            if m == "eth_sendRawTransaction" and isinstance(resp, dict) and "error" not in resp:
                                clock.sends.append(done)
                    return responses
                return middleware

        # Innermost, next to the provider: the time measured is the node's and the transport's only.
        w3.middleware_onion.inject(_Clock, name="bench_request_clock", layer=0)

    def since(self, t0: float) -> tuple[float | None, float | None]:
        """Seconds from ``t0`` to the first and to the last submission after it."""
        after = [t - t0 for t in self.sends if t >= t0]
        return (min(after), max(after)) if after else (None, None)

    def waited_since(self, before: dict[str, float]) -> dict[str, float]:
        return {m: v - before.get(m, 0.0) for m, v in self.waited.items() if v - before.get(m, 0.0) > 0}


def bot_web3(url: str) -> Web3:
    return Web3(Web3.HTTPProvider(url, request_kwargs={"timeout": 300}))


def bind_copy(dep: Deployment, w3: Web3) -> Deployment:
    """The same deployment bound to another Web3 (each bot has its own, with its own counter)."""
    copy = Deployment.from_json(dep.to_json())
    copy.w3 = w3
    return copy


# ---------------------------------------------------------------------------- the naive bot


@dataclass
class NaiveReport:
    head: int
    liquidatable: int
    sent: int
    rpc_calls: int
    seconds: float                       # from the start of the tick to its last submission
    by_method: dict[str, int] = field(default_factory=dict)


class NaiveBot:
    """Per block: the engine's ``health`` view once per known account; liquidate those below zero."""

    def __init__(self, w3: Web3, dep: Deployment, account: LocalAccount, rpc: CountingRpc) -> None:
        self.w3 = w3
        self.dep = dep
        self.account = account
        self.rpc = rpc
        self.engine = dep.engine_contract
        self.accounts: list[str] = []
        self.market_count = 0
        self.chain_id = 0

    def start(self) -> None:
        """Discover every account from the engine's Deposit logs, once."""
        self.chain_id = self.w3.eth.chain_id
        self.market_count = self.engine.functions.market_count().call()
        topic = self.engine.events.Deposit().topic
        logs = self.w3.eth.get_logs({
            "address": self.dep.engine, "fromBlock": self.dep.block, "toBlock": "latest", "topics": [topic],
        })
        seen: dict[str, None] = {}
        for entry in logs:
            seen[Web3.to_checksum_address(entry["topics"][1][-20:])] = None
        self.accounts = list(seen)

    def tick(self) -> NaiveReport:
        started = time.perf_counter()
        before = self.rpc.stats()
        head = self.w3.eth.block_number
        health = self.engine.functions.health
        liquidatable = [a for a in self.accounts if health(a).call(block_identifier=head)[2] < 0]
        sent = 0
        if liquidatable:
            base_fee = self.w3.eth.get_block(head)["baseFeePerGas"]
            nonce = self.w3.eth.get_transaction_count(self.account.address, "pending")
            for account in liquidatable:
                for market in range(self.market_count):
                    size = self.engine.functions.position(account, market).call(block_identifier=head)[0]
                    if size != 0:
                        break
                else:
                    continue  # only collateral left: not a perp liquidation
                call = self.engine.functions.liquidate(account, market, abs(size))
                try:
                    call.call({"from": self.account.address})
                except ContractLogicError:
                    continue
                tx = call.build_transaction({
                    "from": self.account.address, "nonce": nonce, "gas": LIQUIDATION_GAS,
                    "maxFeePerGas": 2 * base_fee + TIP_WEI, "maxPriorityFeePerGas": TIP_WEI,
                    "chainId": self.chain_id,
                })
                self.w3.eth.send_raw_transaction(self.account.sign_transaction(tx).raw_transaction)
                nonce += 1
                sent += 1
        seconds = time.perf_counter() - started
        delta = self.rpc.stats() - before
        return NaiveReport(head, len(liquidatable), sent, delta.total, seconds, delta.by_method)


# ---------------------------------------------------------------------------- our bot


def load_liquidator() -> Any | None:
    """The module bot.liquidator, or None while it does not exist (its import errors propagate)."""
    if importlib.util.find_spec("bot.liquidator") is None:
        return None
    return importlib.import_module("bot.liquidator")


@dataclass
class OurReport:
    head: int
    liquidatable: int
    sent: int
    rpc_calls: int
    seconds: float                       # wall clock of the tick, from the new head
    detection_latency_s: float | None    # the bot's own: from its seeing the head to its last send
    by_method: dict[str, int] = field(default_factory=dict)
    preflight: str | None = None         # what checked the tick's transactions: "model" or "node"


def ours_tick(bot: Any, rpc: CountingRpc) -> OurReport:
    """One ``Liquidator.tick()``, timed by the wall clock and counted on the bot's own counter."""
    before = rpc.stats()
    started = time.perf_counter()
    report = bot.tick()
    seconds = time.perf_counter() - started
    delta = rpc.stats() - before
    return OurReport(report.head, len(report.liquidatable), len(report.sent), delta.total, seconds,
                     report.detection_latency_s, delta.by_method, getattr(report, "preflight", None))


# ---------------------------------------------------------------------------- one run


@dataclass
class Row:
    accounts: int
    bot: str
    idle_calls: float | None             # mean RPC calls per idle block
    idle_blocks: int
    crash_calls: int | None              # RPC calls handling the crash block
    liquidatable: int | None
    sent: int | None
    landed: int | None                   # Liquidation events of the bot once its transactions were mined
    first_s: float | None                # seconds from the crash block to the first submission
    last_s: float | None                 # ... to the last submission
    skipped: int | None = None           # LiquidationSkipped events of the bot's mined transactions


@dataclass
class RunResult:
    n: int
    rows: list[Row]
    setup: SetupTimes
    extra: list[str]
    node_url: str | None = None          # None: the embedded dev node


def run(n: int, seed: int, idle_blocks: int, naive_idle_blocks: int, node_url: str | None = None,
        profile: bool = False) -> RunResult:
    chain = BenchChain(node_url)
    print(f"\n== {n:,} accounts (seed {seed}) on {chain.client}", flush=True)
    setup = SetupTimes()
    extra: list[str] = [f"node: {chain.client}" + ("" if node_url is None else f" at {node_url}")]
    try:
        t = time.perf_counter()
        dep = chain.deploy()
        setup.deploy_s = time.perf_counter() - t

        orders = plan_orders(n, seed, dep)
        t = time.perf_counter()
        setup.create_blocks = chain.create_traders(orders)
        setup.create_s = time.perf_counter() - t

        # The market drifts (nothing liquidatable yet) and every feed is re-published, fresh.
        t = time.perf_counter()
        chain.set_prices({"ETH": DRIFT_ETH, "BTC": OPEN_PRICES["BTC"]})
        chain.check_prices()
        setup.prices_s = time.perf_counter() - t
        print(f"  setup: deploy {setup.deploy_s:.1f} s, {n:,} accounts in {setup.create_s:.1f} s "
              f"({n / setup.create_s:,.0f} accounts/s, {setup.create_blocks} blocks), "
              f"total {setup.total_s:.1f} s", flush=True)

        ours_accounts = [chain.funded_account() for _ in OUR_BOTS]
        naive_account = chain.funded_account()

        # --- the bots, each on its own Web3 and counter
        naive_w3 = bot_web3(chain.url)
        naive_rpc = CountingRpc(naive_w3)
        naive_clock = RequestClock(naive_w3)
        naive = NaiveBot(naive_w3, bind_copy(dep, naive_w3), naive_account, naive_rpc)
        t = time.perf_counter()
        naive.start()
        naive_start_s = time.perf_counter() - t
        extra.append(f"naive bot start: {len(naive.accounts):,} accounts from logs in {naive_start_s:.1f} s, "
                     f"{naive_rpc.total} RPC calls (once, not per block)")

        liquidator_mod = load_liquidator()
        # Our bot twice, each on its own Web3 and key: with its default preflight (the exact model,
        # the mirror being at the head) and with the node's eth_call preflight (--preflight node).
        ours_bots: list[tuple[str, Any, CountingRpc, RequestClock, LocalAccount]] = []
        if liquidator_mod is None:
            print("  bot/liquidator.py not available: measuring the naive bot alone", flush=True)
        else:
            for (name, preflight), account in zip(OUR_BOTS, ours_accounts):
                bot, rpc, clock = start_ours(liquidator_mod, chain, dep, account, extra, preflight, name)
                ours_bots.append((name, bot, rpc, clock, account))

        # --- idle blocks: all bots on the same empty blocks
        ours_idle: dict[str, list[int]] = {name: [] for name, *_ in ours_bots}
        naive_idle: list[int] = []
        for k in range(max(idle_blocks, naive_idle_blocks)):
            chain.mine()
            for name, bot, rpc, _clock, _account in ours_bots:
                if k >= idle_blocks:
                    continue
                r = ours_tick(bot, rpc)
                ours_idle[name].append(r.rpc_calls)
                if r.sent:
                    raise RuntimeError(f"{name} sent {r.sent} liquidations on an idle block")
            if k < naive_idle_blocks:
                nr = naive.tick()
                naive_idle.append(nr.rpc_calls)
                if nr.sent:
                    raise RuntimeError(f"the naive bot sent {nr.sent} liquidations on an idle block")
                print(f"  naive idle block {nr.head}: {nr.rpc_calls:,} RPC calls in {nr.seconds:.1f} s", flush=True)
        for name, idle in ours_idle.items():
            print(f"  {name} idle blocks: RPC calls {idle}", flush=True)

        # --- the crash, once per bot from the same snapshot (taken again after each revert)
        rows: list[Row] = []
        for name, bot, rpc, clock, account in ours_bots:
            snapshot = chain.rpc("evm_snapshot")
            t_mined = chain.set_prices({"ETH": CRASH_ETH})
            waited_before = dict(clock.waited)
            profiler = cProfile.Profile() if profile and name == OUR_BOTS[0][0] else None
            if profiler is not None:
                profiler.enable()
            r = ours_tick(bot, rpc)
            if profiler is not None:
                profiler.disable()
            first, last = clock.since(t_mined)
            waited = clock.waited_since(waited_before)
            chain.check_prices()
            crash_block = chain.w3.eth.block_number
            chain.mine_until_empty()
            landed = chain.liquidations_by(account.address, crash_block)
            skipped = chain.skipped_by(account.address, crash_block)
            print(f"  {name} crash block {r.head}: {r.liquidatable} liquidatable, {r.sent} sent, {landed} landed, "
                  f"{skipped} skipped, {r.rpc_calls} RPC calls {r.by_method}; preflight {r.preflight}; tick "
                  f"{r.seconds:.3f} s, last submission {_fmt(last, '.3f')} s after the block"
                  + (f" (the bot's detection latency {r.detection_latency_s:.3f} s)" if r.detection_latency_s is not None else ""),
                  flush=True)
            waited = {m: v for m, v in waited.items() if r.by_method.get(m)}
            node_s = sum(waited.values())
            extra.append(
                f"{name} crash tick (preflight: {r.preflight}), {r.seconds:.3f} s: waiting for the node {node_s:.3f} s ("
                + ", ".join(f"{m} {r.by_method[m]} x {1000 * v / r.by_method[m]:.1f} ms"
                            for m, v in sorted(waited.items(), key=lambda kv: -kv[1]))
                + f"), the bot's own work {r.seconds - node_s:.3f} s"
            )
            if profiler is not None:
                out = io.StringIO()
                pstats.Stats(profiler, stream=out).sort_stats("cumulative").print_stats(PROFILE_LINES)
                pstats.Stats(profiler, stream=out).sort_stats("tottime").print_stats(PROFILE_LINES)
                print(f"  cProfile of the {name} crash tick (cumulative, then own time; top {PROFILE_LINES}):")
                print(out.getvalue(), flush=True)
            rows.append(Row(n, name, _mean(ours_idle[name]), len(ours_idle[name]), r.rpc_calls, r.liquidatable,
                            r.sent, landed, first, last, skipped))
            bot.close()
            if not chain.rpc("evm_revert", [snapshot]):
                raise RuntimeError("evm_revert failed")
        if not ours_bots:
            rows.append(Row(n, "ours", None, 0, None, None, None, None, None, None))

        t_mined = chain.set_prices({"ETH": CRASH_ETH})
        nr = naive.tick()
        first, last = naive_clock.since(t_mined)
        chain.check_prices()
        crash_block = chain.w3.eth.block_number
        chain.mine_until_empty()
        landed = chain.liquidations_by(naive_account.address, crash_block)
        print(f"  naive crash block {nr.head}: {nr.liquidatable} liquidatable, {nr.sent} sent, {landed} landed, "
              f"{nr.rpc_calls:,} RPC calls, {nr.seconds:.1f} s", flush=True)
        rows.append(Row(n, "naive", _mean(naive_idle), len(naive_idle), nr.rpc_calls, nr.liquidatable, nr.sent,
                        landed, first, last, chain.skipped_by(naive_account.address, crash_block)))
        return RunResult(n, rows, setup, extra, node_url)
    finally:
        chain.stop()


def start_ours(liquidator_mod: Any, chain: BenchChain, dep: Deployment, account: LocalAccount,
               extra: list[str], preflight: str = "auto", name: str = "ours") -> tuple[Any, CountingRpc, RequestClock]:
    from bot.config import BotConfig
    from bot.store import IN_MEMORY_DB, Store

    w3 = bot_web3(chain.url)
    config = BotConfig.from_env(environ={}, rpc_url=chain.url, db_path=IN_MEMORY_DB, preflight=preflight)
    rpc = CountingRpc.from_config(w3, config)
    clock = RequestClock(w3)
    bound = bind_copy(dep, w3)
    store = Store.open(IN_MEMORY_DB, bound.chain_id, bound.engine, bound.block)
    bot = liquidator_mod.Liquidator(w3, bound, account, config, store=store, rpc=rpc)
    t = time.perf_counter()
    bot.start()
    start_s = time.perf_counter() - t
    extra.append(f"{name} start (loads every account from the deployment block): {start_s:.1f} s, "
                 f"{rpc.total} RPC calls (once, not per block)")
    # start() may send a one-time quote approval (for collateral liquidations): mine it and let one
    # tick, not counted, settle it, so that the idle blocks measure the steady state.
    chain.mine()
    ours_tick(bot, rpc)
    return bot, rpc, clock


def _mean(values: list[int]) -> float | None:
    return sum(values) / len(values) if values else None


# ---------------------------------------------------------------------------- output


def _fmt(value: Any, spec: str = ",") -> str:
    if value is None:
        return "-"
    return format(value, spec)


def _ratio(res: "RunResult") -> float | None:
    ours = next(r for r in res.rows if r.bot == "ours")
    naive = next(r for r in res.rows if r.bot == "naive")
    if not naive.idle_calls or not ours.idle_calls:
        return None
    return naive.idle_calls / ours.idle_calls


def print_table(results: list[RunResult]) -> None:
    headers = ("accounts", "bot", "RPC calls / idle block", "RPC calls, crash block", "liquidatable",
               "txs sent", "landed", "skipped", "s to 1st submission", "s to last submission",
               "naive/ours RPC per block")
    lines: list[tuple[str, ...]] = []
    for res in results:
        ratio = _ratio(res)
        for r in res.rows:
            idle = "-" if r.idle_calls is None else f"{r.idle_calls:,.1f} ({r.idle_blocks} blk)"
            lines.append((
                f"{r.accounts:,}", r.bot, idle, _fmt(r.crash_calls), _fmt(r.liquidatable), _fmt(r.sent),
                _fmt(r.landed), _fmt(r.skipped), _fmt(r.first_s, ".3f"), _fmt(r.last_s, ".3f"),
                (_fmt(ratio, ",.0f") + "x" if ratio is not None else "-") if r.bot == "ours" else "",
            ))
    widths = [max(len(h), *(len(line[i]) for line in lines)) for i, h in enumerate(headers)]
    print()
    print("| " + " | ".join(h.ljust(w) for h, w in zip(headers, widths)) + " |")
    print("|-" + "-|-".join("-" * w for w in widths) + "-|")
    for line in lines:
        cells = (c.ljust(w) if i == 1 else c.rjust(w) for i, (c, w) in enumerate(zip(line, widths)))
        print("| " + " | ".join(cells) + " |")
    print()
    print("s to 1st / last submission: from the crash block being mined to the node's answer to the bot's")
    print("first / last eth_sendRawTransaction (the bots' polling interval excluded). txs sent: transactions")
    print("(ours: liquidate_many batches; naive: one liquidate each); landed: Liquidation events once mined;")
    print("skipped: LiquidationSkipped events (gas spent on orders that did not execute).")
    print()
    for res in results:
        s = res.setup
        print(f"setup, {res.n:,} accounts (not measured): deploy {s.deploy_s:.1f} s; accounts {s.create_s:.1f} s "
              f"({res.n / s.create_s:,.0f} accounts/s, {s.create_blocks} blocks of up to {TRADERS_PER_TX}); "
              f"prices {s.prices_s:.1f} s; total {s.total_s:.1f} s")
        for line in res.extra:
            print(f"  {line}")
    print()
    for res in results:
        ours = next(r for r in res.rows if r.bot == "ours")
        naive = next(r for r in res.rows if r.bot == "naive")
        if ours.idle_calls is None:
            print(f"{res.n:,} accounts: bot/liquidator.py not available, targets not evaluated")
            continue
        ratio = _ratio(res)
        agree = "agree" if ours.liquidatable == naive.liquidatable else "DISAGREE"
        latency = "no submission" if ours.last_s is None else f"{ours.last_s:.3f} s"
        target = TARGET_SECONDS if res.node_url is None else TARGET_SECONDS_NODE
        meets_latency = ours.last_s is not None and ours.last_s < target
        meets_ratio = ratio is not None and ratio >= TARGET_RPC_RATIO
        print(f"{res.n:,} accounts: price update -> last submission {latency} "
              f"({'meets' if meets_latency else 'misses'} the < {target:.1f} s target "
              f"{'of the embedded dev node' if res.node_url is None else 'of a native node (anvil)'}); "
              f"{_fmt(ratio, ',.0f')}x fewer RPC calls per block than naive "
              f"({'meets' if meets_ratio else 'misses'} the >= {TARGET_RPC_RATIO:.0f}x target); "
              f"liquidatable: ours {ours.liquidatable}, naive {naive.liquidatable} ({agree})")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--accounts", default="1000,10000", help="comma-separated account counts (default 1000,10000)")
    parser.add_argument("--seed", type=int, default=1, help="seed of the trader plans (default 1)")
    parser.add_argument("--idle-blocks", type=int, default=3, help="idle blocks measured for our bot (default 3)")
    parser.add_argument("--naive-idle-blocks", type=int, default=None,
                        help="idle blocks measured for the naive bot (default 3, or 1 above 2,000 accounts: "
                             "it takes minutes per block there)")
    parser.add_argument("--node", default=None, metavar="URL",
                        help="run against this JSON-RPC node instead of a fresh in-process dev node; it needs "
                             "evm_setAutomine, evm_mine, evm_snapshot/evm_revert and an unlocked funded account "
                             "(e.g. anvil, or 'npx hardhat node'; see bench/README.md)")
    parser.add_argument("--profile", action="store_true",
                        help="print a cProfile of our bot's crash tick (cumulative time, top functions)")
    parser.add_argument("-v", "--verbose", action="store_true", help="log the bots' INFO messages")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    try:
        counts = [int(x.replace("_", "")) for x in args.accounts.split(",") if x.strip()]
    except ValueError:
        parser.error(f"--accounts {args.accounts!r}: give comma-separated integers such as 1000,10000")
    if not counts or min(counts) < 1:
        parser.error("--accounts: every count must be at least 1")
    if args.idle_blocks < 1:
        parser.error("--idle-blocks must be at least 1")

    started = time.perf_counter()
    print("compiling contracts ...", flush=True)
    compile_bench_contracts()
    results = []
    for n in counts:
        naive_idle = args.naive_idle_blocks if args.naive_idle_blocks is not None else (3 if n <= 2_000 else 1)
        results.append(run(n, args.seed, args.idle_blocks, max(naive_idle, 1), args.node, args.profile))
    print_table(results)
    print(f"\nwhole run: {time.perf_counter() - started:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
