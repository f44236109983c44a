"""The on-chain mode: K real liquidation bots racing on an in-process dev node.

Setup (:meth:`OnchainSimulation.setup`): a :class:`~devnode.DevNode` with a one-hour block time
(blocks are mined only when the simulator says so, so rounds are deterministic), the protocol
deployed by the node's first dev account, ``N`` traders seeded by :func:`protocol_model.seeding.seed_accounts`,
one key per agent (:func:`simulator.competition.agents.agent_account`) funded with gas money, empty blocks until
the base fee rests at EIP-1559's floor (7 wei), and every agent's :class:`~bot.liquidator.Liquidator`
started (its mirror loaded at the block before the shock).

Run (:meth:`OnchainSimulation.run`): the owner (the feeds' updater) sends every feed's
``set_answer`` (the shocked ones moved) with the scenario's oracle tip; they wait in the node's
pool while the update round runs, then block ``S`` is mined by the node's fee-ordered block builder;
then ``B`` rounds of the schedule in :mod:`simulator.competition.agents`: the agents that tick at
the head call :meth:`Liquidator.tick` in agent order, the re-bidders answer rivals they see in
``txpool_content``, and one block is mined. A ``backrun`` agent is the bot's own backrunner
(:mod:`bot.backrun`): its pending-transaction filter is set up before the updates are sent, and in
the update round :meth:`Liquidator.poll_pending` reads them and sends the liquidations they cause
with the update's fees. ``backrun:TIP`` (a backrun at its own tip) is refused here in one line:
the bot's backrunner always pays the update's fees.

Each agent *is* a :class:`~bot.liquidator.Liquidator` configured with its strategy
(:meth:`AgentSpec.bot_config`), wrapped by :class:`OnchainAgent`, which adds what the bot lacks:

* latency: the wrapper calls :meth:`Liquidator.tick` only at the heads :func:`ticks_at` allows
  (a tick processes everything up to the head, as a bot that polls every ``L + 1`` blocks would);
* re-bidding: the bot's :class:`~bot.txs.TxSender` replaces a transaction on its own only when it is
  stuck, with its own strategy's fees. The wrapper outbids rivals with :meth:`TxSender.replace`, so
  that the bot follows the replacement (receipts, lost races, backoff) like any of its transactions.

The report is read from the chain, not from the bots: every transaction of every agent in blocks
``S .. S + B`` with its receipt (gas used, effective gas price, the block's base fee, the
``Liquidation`` logs it emitted), the pool after the last block, and the traders' health at the end
through the Lens. The blocks are also replayed on the model (the state at ``S`` loaded through the
Lens at ``S - 1``, the price updates and each liquidation applied with the model): every receipt's
status must match the model's (``report.model_mismatches`` lists those that do not), and each
transaction's ``gas used - intrinsic gas`` (as with prices published in an earlier block:
:data:`~simulator.competition.offchain.FRESH_READ_GAS`) is recorded under its path key in ``report.gas_table``,
the table that lets the off-chain mode reproduce this run's gas exactly (every transaction's key and
gas are in ``sim.gas_samples``).
"""

from __future__ import annotations

import dataclasses
import logging
import time
from collections.abc import Callable, Iterator
from typing import Any

from web3 import HTTPProvider, Web3

from protocol_model.chain import Sender
from protocol_model.deploy import Deployment, compile_contracts, contract_at, deploy_protocol
from protocol_model.errors import ChainError, ConfigError
from protocol_model.health import price
from protocol_model.loader import load_protocol, load_state
from protocol_model.logs import ENGINE, decode_log

from devnode import DevNode, mining_in_background
from bot.liquidator import Liquidator
from bot.pending import DecoderRegistry, normalize_tx
from protocol_model.seeding import seed_accounts
from bot.txs import Fees
from .agents import (
    AGENT_FUNDS_WEI,
    BASE_FEE_FLOOR_WEI,
    COLLATERAL_LIQUIDATION,
    MAX_REBID_ROUNDS,
    AgentSpec,
    PoolEntry,
    Scenario,
    SimSettings,
    by_target,
    decode_liquidate,
    intrinsic_gas,
    next_base_fee,
    oracle_fees,
    rebid_fees,
    resolve_asset,
    ticks_at,
)
from .offchain import (FRESH_READ_GAS, GasSample, GasTable, ModelChain, ModelTx, OracleTx, final_health,
                       shocked_answers)
from .report import BotResult, CompetitionReport, Liquidated, fmt_pct

log = logging.getLogger(__name__)

MAX_DRAIN_BLOCKS = 10_000
Progress = Callable[[str], Any]


def _mining(node: DevNode, every_s: float = 0.01) -> Any:
    """Mine whatever waits in the pool every ``every_s`` seconds (setup transactions wait for receipts)."""
    return mining_in_background(node, every_s)


def pool_view(w3: Web3, engine: str) -> list[PoolEntry]:
    """Every pending ``liquidate`` call in the node's pool (``txpool_content``: pending and queued)."""
    response = w3.provider.make_request("txpool_content", [])   # type: ignore[arg-type]
    if "error" in response:
        raise ChainError(f"txpool_content failed: {response['error']}")
    out: list[PoolEntry] = []
    engine = Web3.to_checksum_address(engine)
    for section in ("pending", "queued"):
        for sender, by_nonce in (response["result"].get(section) or {}).items():
            for nonce, tx in by_nonce.items():
                if not tx.get("to") or Web3.to_checksum_address(tx["to"]) != engine:
                    continue
                call = decode_liquidate(bytes.fromhex(str(tx["input"])[2:]))
                if call is None:
                    continue
                out.append(PoolEntry(Web3.to_checksum_address(sender), int(nonce), call[0], call[1],
                                     int(tx["maxPriorityFeePerGas"], 16), int(tx["maxFeePerGas"], 16)))
    return out


class OnchainAgent:
    """A :class:`~bot.liquidator.Liquidator` with a latency and, for ``rebid``, reactive re-bidding."""

    def __init__(self, spec: AgentSpec, settings: SimSettings, url: str, dep: Deployment) -> None:
        self.spec = spec
        self.settings = settings
        w3 = Web3(HTTPProvider(url))
        self.bot = Liquidator(w3, dep, spec.account(), spec.bot_config(settings),
                              collateral_liquidation=COLLATERAL_LIQUIDATION)
        self.address = self.bot.address
        self.rebids = 0
        self.backrun_hashes: set[str] = set()     # hashes of the transactions sent in the update round

    def tick(self) -> None:
        self.bot.tick()

    def watch_pending(self) -> None:
        """Set up the bot's backrunner (its pending-transaction filter on the node) before the
        price updates are sent, so that it sees them arrive."""
        self.bot.poll_pending()
        if self.bot.backrun is None:
            raise ChainError(f"{self.spec.name}: the node offers no pending-transaction filter to backrun from")

    def backrun(self) -> None:
        """The update round: the bot's backrunner reads the pending updates and sends the
        liquidations they cause (:meth:`bot.liquidator.Liquidator.poll_pending`)."""
        report = self.bot.poll_pending()
        if report is not None:
            self.backrun_hashes.update(r.tx.hash.lower() for r in report.sent if r.tx is not None)

    def rebid(self, view: list[PoolEntry], *, head_base_fee: int, next_base: int) -> bool:
        """Outbid rivals on this agent's pending liquidations; True when it sent a replacement."""
        sender = self.bot.sender
        if sender is None:  # dev: started by tick()
            raise ChainError("the agent's bot is not started")
        changed = False
        rivals = by_target(view, self.address)
        for old in self.bot.pending():
            if old.kind != "liquidate":
                continue
            own = PoolEntry(self.address, old.nonce, old.account, int(old.target), old.tip_wei, old.max_fee_wei)
            fees = rebid_fees(own, rivals.get((own.account, own.market), []), next_base_fee_wei=next_base,
                              head_base_fee_wei=head_base_fee,
                              expected_profit_wei=old.expected_profit_wei, settings=self.settings)
            if fees is None:
                continue
            self._replace(old, fees)
            changed = True
        return changed

    def _replace(self, old: Any, fees: Fees) -> None:
        sender = self.bot.sender
        assert sender is not None
        sender.replace(old, fees)
        self.rebids += 1
        log.info("%s re-bids on %s market %s: tip %d -> %d wei", self.spec.name, old.account, old.target,
                 old.tip_wei, fees.max_priority_fee_per_gas)

    def close(self) -> None:
        self.bot.close()


class OnchainSimulation:
    """One on-chain competition (see the module docstring). Use as a context manager::

        with OnchainSimulation(scenario, agents) as sim:
            report = sim.run()
            sim.w3, sim.dep       # the chain stays up until the block ends
    """

    def __init__(self, scenario: Scenario, agents: list[AgentSpec], settings: SimSettings | None = None,
                 *, progress: Progress | None = None) -> None:
        self.settings = settings or SimSettings()
        self.scenario = dataclasses.replace(
            scenario, shocks=tuple((resolve_asset(self.settings.deploy, a), f) for a, f in scenario.shocks))
        self.specs = list(agents)
        if not self.specs:
            raise ConfigError("at least one bot is needed")
        own_tip = [s.strategy for s in self.specs if s.backruns and not s.match_oracle]
        if own_tip:
            raise ConfigError(f"{own_tip[0]} runs off-chain only: on chain the bot's backrunner pays exactly the "
                              "price update's fees; use backrun, or --mode offchain")
        self._progress = progress
        self.node: DevNode | None = None
        self.w3: Web3 | None = None
        self.dep: Deployment | None = None
        self.traders: list[str] = []
        self.agents: list[OnchainAgent] = []
        self.shock_block: int | None = None
        self.end_block: int | None = None
        self.gas_samples: list[GasSample] = []      # every mined liquidation's key and gas (after run())

    def _say(self, text: str) -> None:
        log.info("%s", text)
        if self._progress is not None:
            self._progress(text)

    # ------------------------------------------------------------------ setup

    def __enter__(self) -> "OnchainSimulation":
        try:
            self.setup()
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def setup(self) -> None:
        compile_contracts()
        node = DevNode(block_time=3600, port=0)
        node.start()
        self.node = node
        w3 = Web3(HTTPProvider(node.url))
        self.w3 = w3
        self._say(f"dev node at {node.url}: deploying and seeding {self.scenario.accounts} traders")
        with _mining(node):
            owner = Sender.unlocked(w3, 0)
            dep = deploy_protocol(w3, owner, self.settings.deploy)
            plans = seed_accounts(w3, dep, owner, self.scenario.accounts, self.scenario.seed)
            nonce = w3.eth.get_transaction_count(owner.address, "pending")
            hashes = [owner.submit(None, 21_000, nonce + i, to=s.address, value=AGENT_FUNDS_WEI)
                      for i, s in enumerate(self.specs)]
            for h in hashes:
                w3.eth.wait_for_transaction_receipt(h, timeout=60)
        self.dep = dep
        self.owner = owner
        self.traders = [p.address for p in plans]
        drained = 0
        while True:
            b = w3.eth.get_block("latest")
            base = int(b["baseFeePerGas"])
            if base == BASE_FEE_FLOOR_WEI and next_base_fee(base, int(b["gasUsed"]), int(b["gasLimit"])) == base:
                break
            if base < BASE_FEE_FLOOR_WEI or drained >= MAX_DRAIN_BLOCKS:
                raise ChainError(f"the base fee does not settle at {BASE_FEE_FLOOR_WEI} wei (it is {base})")
            node.mine_block()
            drained += 1
        self._say(f"base fee at {BASE_FEE_FLOOR_WEI} wei after {drained} empty blocks; starting {len(self.specs)} bots")
        self.agents = [OnchainAgent(s, self.settings, node.url, dep) for s in self.specs]
        for a in self.agents:
            a.bot.start()

    # ------------------------------------------------------------------ the race

    def run(self) -> CompetitionReport:
        t0 = time.monotonic()
        w3, dep, node = self.w3, self.dep, self.node
        if w3 is None or dep is None or node is None:
            raise ChainError("the simulation is not set up")  # dev
        state = load_protocol(w3, dep)
        answers = shocked_answers(state, dep.feeds, self.scenario)
        base = int(w3.eth.get_block("latest")["baseFeePerGas"])
        fees = oracle_fees(self.scenario.oracle_tip_wei, base)
        backrunners = [a for a in self.agents if a.spec.backruns]
        for a in backrunners:
            a.watch_pending()
        hashes = []
        for address, answer in answers.items():
            feed = contract_at(w3, "PriceFeed", address)
            hashes.append(feed.functions.set_answer(answer).transact({
                "from": self.owner.address, "gas": 200_000, "maxFeePerGas": fees.max_fee_per_gas,
                "maxPriorityFeePerGas": fees.max_priority_fee_per_gas,
            }))
        # The update round: the updates are pending; the backrunners answer in agent order.
        for a in backrunners:
            a.backrun()
        node.mine_block()
        for h in hashes:
            if int(w3.eth.get_transaction_receipt(h)["status"]) != 1:
                raise ChainError("publishing the shocked prices failed (is the owner the feeds' updater?)")
        S = int(w3.eth.block_number)
        self.shock_block = S
        self._say(f"shock in block {S}: " + ", ".join(f"{a} {fmt_pct(f)}" for a, f in self.scenario.shocks))
        for r in range(self.scenario.blocks):
            h = S + r
            ticked = [a for a in self.agents if ticks_at(a.spec.latency, h, S)]
            for a in ticked:
                a.tick()
            rebidders = [a for a in ticked if a.spec.rebids]
            if rebidders:
                self._rebid_rounds(rebidders)
            node.mine_block()
        self.end_block = int(w3.eth.block_number)
        report = self._report()
        report.elapsed_s = time.monotonic() - t0
        return report

    def _rebid_rounds(self, rebidders: list[OnchainAgent]) -> None:
        w3, dep = self.w3, self.dep
        assert w3 is not None and dep is not None
        for _ in range(MAX_REBID_ROUNDS):
            latest = w3.eth.get_block("latest")
            head_base = int(latest["baseFeePerGas"])
            nxt = next_base_fee(head_base, int(latest["gasUsed"]), int(latest["gasLimit"]))
            changed = False
            for a in rebidders:
                if a.rebid(pool_view(w3, dep.engine), head_base_fee=head_base, next_base=nxt):
                    changed = True
            if not changed:
                return

    # ------------------------------------------------------------------ the report

    def _report(self) -> CompetitionReport:
        w3, dep = self.w3, self.dep
        S, end = self.shock_block, self.end_block
        assert w3 is not None and dep is not None and S is not None and end is not None
        by_address = {a.address: a for a in self.agents}
        results = {a.address: BotResult(a.spec.name, a.spec.strategy, a.spec.kind, a.spec.latency, a.address,
                                        rebids=a.rebids) for a in self.agents}
        start_state = load_state(w3, dep, self.traders, block_identifier=S - 1)
        replay = ModelChain(start_state, GasTable(), head=S - 1, timestamp=start_state.timestamp)
        decoders = DecoderRegistry.for_feeds(dict.fromkeys(dep.feeds.values(), self.owner.address))
        updates: list[tuple[int, int]] = []
        backruns: list[tuple[BotResult, int, int, bool, int]] = []   # result, block, index, ok, cost
        measured: dict[str, int] = {}
        samples: list[GasSample] = []
        mismatches: list[str] = []
        liquidations: list[Liquidated] = []
        settled = socialised = 0
        shock_base_fee = int(w3.eth.get_block(S)["baseFeePerGas"])
        for number in range(S, end + 1):
            block = w3.eth.get_block(number, full_transactions=True)
            base = int(block["baseFeePerGas"])
            replay.state.timestamp = int(block["timestamp"])
            for index, tx in enumerate(block["transactions"]):
                sender = Web3.to_checksum_address(tx["from"])
                receipt = w3.eth.get_transaction_receipt(tx["hash"])
                update = decoders.decode(normalize_tx(tx) or {})
                if update is not None:
                    if int(receipt["status"]) != 1:
                        raise ChainError("publishing the shocked prices failed (is the owner the feeds' updater?)")
                    replay.execute(OracleTx(tx["hash"].hex(), sender, int(tx["nonce"]), update.feed,
                                            update.answer, int(tx["gas"]), int(tx["maxFeePerGas"]),
                                            int(tx["maxPriorityFeePerGas"]), 0), number, index, base, 0)
                    updates.append((number, index))
                    continue
                res = results.get(sender)
                if res is None:
                    mismatches.append(f"block {number}: a transaction from {sender}, not an agent")
                    continue
                gas_used = int(receipt["gasUsed"])
                paid = int(receipt["effectiveGasPrice"])
                ok = int(receipt["status"]) == 1
                if "0x" + bytes(tx["hash"]).hex() in by_address[sender].backrun_hashes:
                    backruns.append((res, number, index, ok, gas_used * paid))
                res.mined += 1
                res.gas_used += gas_used
                res.tips_wei += gas_used * (paid - base)
                if ok:
                    res.gas_success_wei += gas_used * paid
                else:
                    res.reverted += 1
                    res.gas_reverted_wei += gas_used * paid
                for entry in receipt["logs"]:
                    if Web3.to_checksum_address(entry["address"]) != dep.engine:
                        continue
                    ev = decode_log(entry, ENGINE)
                    if ev is not None and ev.name == "BadDebtSettled":
                        settled += int(ev.args["deficit"])
                        socialised += int(ev.args["socialised"])
                    if ev is None or ev.name != "Liquidation":
                        continue
                    winner = ev.args["liquidator"]
                    if winner in results:
                        results[winner].won += 1
                        results[winner].rewards_native += int(ev.args["keeper_reward"])
                    liquidations.append(Liquidated(number - S, ev.args["account"], int(ev.args["market"]),
                                                   by_address[winner].spec.name if winner in by_address else winner,
                                                   int(ev.args["size_delta"]), int(ev.args["keeper_reward"])))
                data = bytes(tx["input"])
                call = decode_liquidate(data)
                if call is None:
                    mismatches.append(f"block {number} tx {index}: not a liquidate call")
                    continue
                ptx = ModelTx(tx["hash"].hex(), sender, int(tx["nonce"]), call[0], call[1], call[2], data,
                             int(tx["gas"]), int(tx["maxFeePerGas"]), int(tx["maxPriorityFeePerGas"]), 0)
                model = replay.execute(ptx, number, index, base, paid - base)
                if model.ok != ok:
                    mismatches.append(f"block {number} tx {index}: chain {'ok' if ok else 'reverted'}, "
                                      f"model {'ok' if model.ok else 'reverted: ' + str(model.reason)}")
                # The first measurement of a key stands; later ones may differ by tens of gas (the
                # engine's rounding helpers branch on their operands). Recorded as with older prices:
                # the gas a read of a price published in this block saves is added back.
                intrinsic = intrinsic_gas(data)
                exec_gas = gas_used - intrinsic + FRESH_READ_GAS * model.fresh_reads
                measured.setdefault(model.key, exec_gas)
                samples.append(GasSample(model.key, exec_gas, intrinsic, f"block {number} tx {index}"))
        self.gas_samples = samples
        update_at = max(updates, default=None)
        for res, number, index, ok, cost in backruns:
            res.count_backrun(update_at is None or (number, index) < update_at, ok, cost)
        eth_price = price(replay.state, dep.feeds["ETH"], False)
        for entry in pool_view(w3, dep.engine):
            if entry.sender in results:
                results[entry.sender].pending_at_end += 1
        end_state = load_state(w3, dep, self.traders, block_identifier=end)
        bad_debt, bankrupt, liquidatable = final_health(end_state, self.traders)
        report = CompetitionReport(
            mode="onchain", seed=self.scenario.seed, accounts=self.scenario.accounts,
            shocks=self.scenario.shock_map(), blocks=self.scenario.blocks, quote_symbol=dep.quote_symbol,
            quote_decimals=dep.quote_decimals, eth_price_wad=eth_price, base_fee_wei=shock_base_fee,
            bots=list(results.values()), liquidations=liquidations, bad_debt_usd_wad=bad_debt,
            bad_debt_settled_usd_wad=settled, socialised_usd_wad=socialised,
            bankrupt_accounts=bankrupt, liquidatable_at_end=liquidatable, gas_table=measured,
            model_mismatches=mismatches,
        )
        return report.finish()

    # ------------------------------------------------------------------ teardown

    def close(self) -> None:
        for a in self.agents:
            try:
                a.close()
            except Exception:  # noqa: BLE001 - teardown goes on
                log.debug("closing %s failed", a.spec.name, exc_info=True)
        self.agents = []
        if self.node is not None:
            self.node.stop()
            self.node = None


def run_onchain(scenario: Scenario, agents: list[AgentSpec], settings: SimSettings | None = None,
                *, progress: Progress | None = None) -> CompetitionReport:
    """Set up a dev node, run the competition, tear everything down; returns the report."""
    with OnchainSimulation(scenario, agents, settings, progress=progress) as sim:
        return sim.run()


__all__ = ["OnchainAgent", "OnchainSimulation", "pool_view", "run_onchain"]
