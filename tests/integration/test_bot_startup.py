"""Start in seconds (issue 12): the bot's mirror built from logs alone, resumed from the database's
snapshot, checked against the Lens.

The chain is ``test_model_logs.run_crash``'s: deposits (quote and collateral), trades, a closed
position, a withdrawal, parameter changes, a pause, a crash, liquidations (whole, partial,
bankrupt), a collateral liquidation and bad-debt settlement (covered by the fund, and socialised).
The oracle is the Lens (``load_state``: the engine's own storage through one contract), read at
the same block as the mirror.
"""

from __future__ import annotations

import json
import os
import random
import signal
import sqlite3
import subprocess
import sys
import textwrap
import time
from pathlib import Path
from typing import Any

import pytest
from conftest import WAD
from test_model_logs import diff_states, run_crash

from bot.config import BotConfig
from bot.mirror import ChainMirror, decode_snapshot
from bot.scanner import Head
from bot.store import SCHEMA_VERSION, Store
from protocol_model.loader import discover_accounts, load_accounts, load_protocol, load_state
from protocol_model.logs import engine_topic
from protocol_model.state import Position, ProtocolState


def config(tmp_path: Path, **overrides: Any) -> BotConfig:
    settings: dict[str, Any] = {"db_path": str(tmp_path / "bot.sqlite3"), "lookback_blocks": 4}
    settings.update(overrides)
    return BotConfig.from_env(environ={}, rpc_url="memory", **settings)


def head_of(w3: Any) -> Head:
    return Head.from_block(w3.eth.get_block("latest"), time.monotonic())


def open_store(w3: Any, p: Any, cfg: BotConfig) -> Store:
    anchor = w3.eth.get_block(p.dep.block)["hash"]
    return Store(cfg.db_path, w3.eth.chain_id, p.dep.engine, p.dep.block, deployment_block_hash=anchor)


def start_mirror(w3: Any, p: Any, cfg: BotConfig) -> ChainMirror:
    mirror = ChainMirror(w3, p.dep, cfg, open_store(w3, p, cfg))
    mirror.start(head_of(w3))
    return mirror


def lens_state(w3: Any, p: Any, block: int) -> ProtocolState:
    return load_state(w3, p.dep, discover_accounts(w3, p.dep, to_block=block), block_identifier=block)


def assert_equals_lens(w3: Any, p: Any, mirror: ChainMirror) -> ProtocolState:
    """The mirror equals the Lens at its block, field by field, and its health book the engine's."""
    state = mirror.state
    assert state is not None and mirror.book is not None
    loaded = lens_state(w3, p, state.block)
    assert diff_states(state, loaded) == []
    assert state == loaded
    healths = load_accounts(w3, p.dep, load_protocol(w3, p.dep, state.block), list(loaded.accounts),
                            block_identifier=state.block)
    for account, health in healths.items():
        assert tuple(mirror.book.health(account)) == tuple(health), account
    return loaded


def more_activity(p: Any, actors: Any, w3: Any) -> None:
    """Blocks after a first start: a trade, a price, a liquidation, a collateral deposit."""
    trader = actors.trader2
    p.deposit(trader, "WBTC", p.units("WBTC", "0.5"))
    p.trade(trader, "BTC-PERP", WAD // 10)
    p.set_price("BTC", 63_000)
    p.set_price("ETH", 1_650)
    p.deposit(actors.rival, "USDC", p.units("USDC", 500))


# ---------------------------------------------------------------------- from logs


def test_start_from_logs_equals_a_lens_load(protocol, actors, w3, tmp_path):
    p = protocol
    crash = run_crash(p, actors, w3)
    p.owner.send(p.engine.functions.pause())                     # the mirror starts on a paused engine
    mirror = start_mirror(w3, p, config(tmp_path, start_check="off"))
    try:
        assert mirror.start_stats is not None and mirror.start_stats.source == "logs"
        assert mirror.start_stats.from_block == p.dep.block
        loaded = assert_equals_lens(w3, p, mirror)
        # Every part of the chain's history is really there.
        assert loaded.params.paused and loaded.params.keeper_share == 4 * 10**17
        assert set(loaded.accounts) == {crash.bankrupt, crash.collateralised, crash.partial, crash.whale, crash.closer}
        assert loaded.house is not None and loaded.house.positions and loaded.house.cash != 0
        assert loaded.accounts[crash.partial].positions[1].size < 0
        assert loaded.total_collateral and any(loaded.total_collateral.values())
        # The store found every depositor, as the Lens start did.
        assert set(mirror.store.accounts()) == set(loaded.accounts)
        assert mirror.store.last_block == loaded.block
    finally:
        mirror.store.close()


def test_restart_from_the_snapshot_replays_only_the_logs_after_it(protocol, actors, w3, tmp_path):
    p = protocol
    run_crash(p, actors, w3)
    cfg = config(tmp_path, start_check="off")
    first = start_mirror(w3, p, cfg)
    first_block = first.state.block
    first.store.close()

    more_activity(p, actors, w3)
    second = start_mirror(w3, p, cfg)
    try:
        stats = second.start_stats
        assert stats is not None and stats.source == "snapshot"
        assert stats.from_block == first_block + 1 and stats.events > 0
        assert min(lo for lo, _ in second.scans) == first_block + 1       # never from the deployment again
        assert_equals_lens(w3, p, second)
    finally:
        second.store.close()

    # ... and equals a start from logs alone on a fresh database.
    (tmp_path / "fresh").mkdir()
    fresh = start_mirror(w3, p, config(tmp_path / "fresh", start_check="off"))
    try:
        assert fresh.start_stats.source == "logs"
        assert fresh.state == second.state
    finally:
        fresh.store.close()


def test_the_snapshot_follows_the_mirror_incrementally(protocol, actors, w3, tmp_path):
    """Synced blocks are written every ``snapshot_every_blocks`` and on demand: only the changed
    accounts, and what the database holds decodes to the mirror's state."""
    p = protocol
    run_crash(p, actors, w3)
    cfg = config(tmp_path, start_check="off", snapshot_every_blocks=10)
    mirror = start_mirror(w3, p, cfg)
    try:
        saved = mirror.store.snapshot_block()
        assert saved == mirror.state.block
        p.deposit(actors.rival, "USDC", p.units("USDC", 500))       # one account changes (3 blocks)
        head = head_of(w3)
        mirror.sync(head)
        mirror.after_tick(head)
        assert mirror.store.snapshot_block() == saved                # not yet: fewer than 10 blocks
        assert mirror._dirty == {actors.rival.address}
        while head.number < saved + 10:
            p.set_price("ETH", 1_700)
            head = head_of(w3)
            mirror.sync(head)
            mirror.after_tick(head)
        assert mirror.store.snapshot_block() == head.number == saved + 10
        assert mirror._dirty == set()
        snap = mirror.store.load_snapshot()
        assert snap is not None and decode_snapshot(snap, p.dep.engine) == mirror.state
        assert_equals_lens(w3, p, mirror)
    finally:
        mirror.store.close()


# ---------------------------------------------------------------------- reorgs


def test_a_reorg_below_the_snapshot_rebuilds_from_logs(protocol, actors, w3, tester, tmp_path):
    p = protocol
    run_crash(p, actors, w3)
    fork = tester.take_snapshot()
    more_activity(p, actors, w3)
    cfg = config(tmp_path, start_check="off")
    first = start_mirror(w3, p, cfg)
    snap_block = first.store.snapshot_block()
    assert snap_block == first.state.block
    first.store.close()

    # Another history from before the snapshot's block, longer than the old one.
    tester.revert_to_snapshot(fork)
    p.deposit(actors.liquidator, "USDC", p.units("USDC", 2_000))
    p.trade(actors.liquidator, "ETH-PERP", -WAD)
    while w3.eth.block_number <= snap_block + 1:
        p.set_price("ETH", 1_720)

    second = start_mirror(w3, p, cfg)
    try:
        assert second.start_reorg is not None
        assert second.start_stats.source == "logs" and second.start_stats.from_block == p.dep.block
        loaded = assert_equals_lens(w3, p, second)
        assert actors.liquidator.address in loaded.accounts
        assert second.store.snapshot_block() == second.state.block     # a new snapshot, of this chain
    finally:
        second.store.close()


def test_a_snapshot_older_than_the_reorg_is_kept(protocol, actors, w3, tester, tmp_path):
    """A reorg of blocks after the snapshot (within the stored hashes): the snapshot is still on
    the chain, start-up resumes from it and replays the new branch's logs."""
    p = protocol
    run_crash(p, actors, w3)
    cfg = config(tmp_path, start_check="off", snapshot_every_blocks=1_000)
    mirror = start_mirror(w3, p, cfg)
    snap_block = mirror.store.snapshot_block()
    fork = tester.take_snapshot()
    p.set_price("ETH", 1_690)
    p.deposit(actors.rival, "USDC", p.units("USDC", 100))
    head = head_of(w3)
    mirror.sync(head)
    mirror.after_tick(head)
    assert mirror.store.snapshot_block() == snap_block               # no new snapshot since the start
    mirror.store.close()                                             # a kill: no snapshot at shutdown

    tester.revert_to_snapshot(fork)
    p.set_price("ETH", 1_710)
    p.deposit(actors.liquidator, "USDC", p.units("USDC", 100))
    p.set_price("BTC", 61_000)

    second = start_mirror(w3, p, cfg)
    try:
        assert second.start_reorg is not None and second.start_reorg[0] == snap_block
        assert second.start_stats.source == "snapshot" and second.start_stats.from_block == snap_block + 1
        loaded = assert_equals_lens(w3, p, second)
        assert actors.liquidator.address in loaded.accounts
    finally:
        second.store.close()


# ---------------------------------------------------------------------- the Lens check


@pytest.mark.parametrize("mode", ["sample", "full"])
def test_the_start_check_finds_and_repairs_what_differs(protocol, actors, w3, tmp_path, caplog, monkeypatch, mode):
    p = protocol
    crash = run_crash(p, actors, w3)
    cfg = config(tmp_path, start_check="off")
    first = start_mirror(w3, p, cfg)
    first.store.close()
    # Corrupt the snapshot behind the bot's back: one account's position and the insurance fund.
    db = sqlite3.connect(cfg.db_path)
    try:
        db.execute("UPDATE snapshot_accounts SET state = ? WHERE address = ?", ("[5,[[0,7,9]],[]]", crash.partial))
        protocol_text = json.loads(db.execute("SELECT protocol FROM snapshot").fetchone()[0])
        protocol_text["insurance_fund"] += 1
        db.execute("UPDATE snapshot SET protocol = ?", (json.dumps(protocol_text),))
        db.commit()
    finally:
        db.close()
    # The sample holds the corrupted account (and one other): a difference there checks every account.
    monkeypatch.setattr("bot.mirror.random.sample", lambda pop, k: [crash.partial, crash.whale][:k])

    mirror = start_mirror(w3, p, cfg.replace(start_check=mode, start_check_accounts=2, lens_batch_size=2))
    try:
        assert mirror.start_stats.source == "snapshot"
        assert mirror.state.accounts[crash.partial].positions == {0: Position(7, 9)}
        head = head_of(w3)
        steps = 0
        with caplog.at_level("ERROR", logger="bot.mirror"):
            while not mirror.check.done:
                mirror.after_tick(head)
                steps += 1
        assert steps == 3                                # 2 + 2 + 1 accounts
        assert mirror.check.differences == 2 and mirror.check.checked == len(mirror.state.accounts) == 5
        assert f"account {crash.partial} differs from the Lens" in caplog.text
        assert "insurance_fund" in caplog.text
        if mode == "sample":
            assert "difference(s) in a sample" in caplog.text
        assert_equals_lens(w3, p, mirror)                # repaired
        snap = mirror.store.load_snapshot()              # and the repair is in the database
        assert snap is not None and decode_snapshot(snap, p.dep.engine) == mirror.state
    finally:
        mirror.store.close()


def test_a_clean_start_check_costs_one_protocol_read_and_the_sampled_accounts(protocol, actors, w3, tmp_path, caplog):
    p = protocol
    run_crash(p, actors, w3)
    mirror = start_mirror(w3, p, config(tmp_path, start_check="sample", start_check_accounts=3))
    try:
        head = head_of(w3)
        with caplog.at_level("INFO", logger="bot.mirror"):
            assert mirror.check_step(head) == 0
        assert mirror.check.done and mirror.check.checked == 3 and mirror.check.differences == 0
        assert "start check done" in caplog.text and "0 difference(s)" in caplog.text
    finally:
        mirror.store.close()


# ---------------------------------------------------------------------- the database


def test_a_v2_database_migrates_and_starts_from_logs(protocol, actors, w3, tmp_path):
    p = protocol
    run_crash(p, actors, w3)
    cfg = config(tmp_path, start_check="off")
    with open_store(w3, p, cfg) as store:      # a v2 database with history, as the last release left it
        store.add_accounts([(actors.trader.address, p.dep.block + 1)])
        store.mark_processed(w3.eth.block_number, w3.eth.get_block("latest")["hash"].hex())
    db = sqlite3.connect(cfg.db_path)
    try:
        db.execute("DROP TABLE snapshot")
        db.execute("DROP TABLE snapshot_accounts")
        db.execute("DELETE FROM schema_migrations WHERE version > 2")
        db.commit()
    finally:
        db.close()
    p.set_price("ETH", 1_700)

    mirror = start_mirror(w3, p, cfg)
    try:
        assert mirror.store.schema_version == SCHEMA_VERSION == 3
        assert mirror.start_stats.source == "logs"
        assert_equals_lens(w3, p, mirror)
        assert mirror.store.snapshot_block() == mirror.state.block
    finally:
        mirror.store.close()


KILLER = textwrap.dedent("""
    import sys, time
    from bot.store import Store
    store = Store(sys.argv[1], 1, "0x" + "e1" * 20, 5)
    rows = {"0x%040x" % i: "[%d,[],[]]" % i for i in range(20_000)}
    n = 0
    while True:
        n += 1
        store.save_snapshot(1_000 + n, "0x%064x" % n, '{"n":%d}' % n,
                            {a: "[%d,[],[]]" % n for a in rows}, full=(n % 2 == 0))
        print(n, flush=True)
""")


def test_a_kill_during_a_snapshot_leaves_a_usable_database(tmp_path):
    """``kill -9`` of a process in the middle of snapshot writes (20,000 rows each): the database
    opens, and the snapshot it holds is one whole write, never a mix of two."""
    db_path = tmp_path / "bot.sqlite3"
    env = dict(os.environ, PYTHONPATH=str(Path(__file__).resolve().parents[2]))
    proc = subprocess.Popen([sys.executable, "-c", KILLER, str(db_path)], stdout=subprocess.PIPE, text=True, env=env)
    try:
        assert proc.stdout is not None
        for _ in range(3):
            assert proc.stdout.readline()                             # three whole writes done
        time.sleep(0.05)                                              # the fourth under way
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    with Store(db_path, 1, "0x" + "e1" * 20, 5) as store:
        snap = store.load_snapshot()
        assert snap is not None
        n = snap.block - 1_000
        assert n >= 3 and snap.protocol == '{"n":%d}' % n
        assert len(snap.accounts) == 20_000
        assert set(snap.accounts.values()) == {"[%d,[],[]]" % n}


def test_the_decoders_checksum_is_eip55():
    """The log decoder's own EIP-55 checksum (it skips eth_utils' validation) equals eth_utils'."""
    from eth_utils import to_checksum_address

    from protocol_model.logs import _word_address

    rng = random.Random(12)
    words = [rng.randbytes(32) for _ in range(5_000)] + [bytes(32), b"\xff" * 32]
    for word in words:
        assert _word_address(word) == to_checksum_address(word[-20:])


def test_a_deployment_block_after_the_engines_is_one_clear_error(protocol, w3, tmp_path):
    """A deployment file whose block is after the engine's deployment: its constructor's events are
    missed, the start says so in one line instead of mirroring an engine without a quote token."""
    from dataclasses import replace as dc_replace

    from protocol_model.errors import ChainError

    p = protocol
    cfg = config(tmp_path, start_check="off")
    quote_set = w3.eth.get_logs({"fromBlock": p.dep.block, "toBlock": "latest", "address": p.dep.engine,
                                 "topics": [engine_topic("QuoteTokenSet")]})
    dep = dc_replace(p.dep, block=int(quote_set[0]["blockNumber"]) + 1)
    dep.w3 = w3
    store = Store(cfg.db_path, w3.eth.chain_id, dep.engine, dep.block)
    try:
        with pytest.raises(ChainError, match="no QuoteTokenSet event") as err:
            ChainMirror(w3, dep, cfg, store).start(head_of(w3))
        assert "\n" not in str(err.value)
    finally:
        store.close()
