"""The SQLite store: restart survival, chain binding, schema versioning, reorg rewind, no double sends."""

from __future__ import annotations

import sqlite3

import pytest
from web3 import Web3

from bot.errors import BotError, StoreError
from bot.store import SCHEMA_VERSION, LiquidationRecord, SentTx, Store

CHAIN = 31337
ENGINE = "0x" + "e1" * 20
DEPLOY_BLOCK = 100
TRADER = "0x" + "a1" * 20
TRADER2 = "0x" + "a2" * 20
BOT = "0x" + "b0" * 20
TOKEN = "0x" + "7c" * 20
C = Web3.to_checksum_address


def h(n: int) -> str:
    return "0x" + f"{n:064x}"


def tx(n: int, *, account: str = TRADER, target: str | int = 0, kind: str = "liquidate", nonce: int | None = None,
       block: int = 120, **kw) -> SentTx:
    fields = dict(hash=h(0x1000 + n), nonce=n if nonce is None else nonce, sender=BOT, kind=kind, account=account,
                  target=str(target), to_address=ENGINE, data="0xdeadbeef", gas_limit=400_000,
                  max_fee_wei=30 * 10**9, tip_wei=10**9, sent_block=block)
    return SentTx(**(fields | kw))


@pytest.fixture
def db_path(tmp_path):
    return tmp_path / "bot.sqlite3"


@pytest.fixture
def store(db_path):
    s = Store(db_path, CHAIN, ENGINE, DEPLOY_BLOCK)
    yield s
    s.close()


def test_new_database_starts_before_the_deployment_block_in_wal_mode(store, db_path):
    assert store.last_block == DEPLOY_BLOCK - 1
    assert store.next_block == DEPLOY_BLOCK
    assert store.last_block_hash is None
    assert store.schema_version == SCHEMA_VERSION
    raw = sqlite3.connect(db_path)
    try:
        assert raw.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        assert [r[0] for r in raw.execute("SELECT version FROM schema_migrations")] == list(range(1, SCHEMA_VERSION + 1))
    finally:
        raw.close()


def test_state_survives_a_restart(db_path):
    big = 2**70 + 12345  # beyond SQLite's 64-bit integers: stored as exact text
    with Store(db_path, CHAIN, ENGINE, DEPLOY_BLOCK) as s:
        s.add_accounts([(TRADER, 101), (TRADER2, 105)])
        s.mark_processed(130, h(130), keep_blocks=12)
        s.record_tx(tx(1, expected_profit_usd_wad=big))
        s.record_liquidation(LiquidationRecord(TRADER2, "1", "liquidate", "won", 125, tx_hash=h(9),
                                               reward_native=5_000_000, reward_usd_wad=big, gas_cost_wei=7))
        s.back_off(TRADER2, 140)
    with Store(db_path, CHAIN, ENGINE, DEPLOY_BLOCK) as s:
        assert s.last_block == 130 and s.next_block == 131 and s.last_block_hash == h(130)
        assert s.block_hashes() == {130: h(130)}
        assert s.accounts() == [C(TRADER), C(TRADER2)] and s.account_count() == 2
        assert s.first_seen(TRADER) == 101
        pending = s.pending_txs()
        assert [p.hash for p in pending] == [h(0x1001)]
        assert pending[0].expected_profit_usd_wad == big and pending[0].data == "0xdeadbeef"
        assert s.pending_for(TRADER, 0)                      # resumes without liquidating twice
        assert s.totals().reward_usd_wad == big and s.totals().won == 1
        assert s.is_backed_off(TRADER2, 140) and not s.is_backed_off(TRADER2, 141)


@pytest.mark.parametrize(("chain", "engine", "block", "needle"), [
    (1, ENGINE, DEPLOY_BLOCK, "on chain id 31337, not engine"),
    (CHAIN, "0x" + "e2" * 20, DEPLOY_BLOCK, "belongs to engine"),
    (CHAIN, ENGINE, DEPLOY_BLOCK + 1, "deployment at block 100, not 101"),
])
def test_refuses_a_database_of_another_chain_or_engine(db_path, chain, engine, block, needle):
    Store(db_path, CHAIN, ENGINE, DEPLOY_BLOCK).close()
    with pytest.raises(StoreError) as info:
        Store(db_path, chain, engine, block)
    assert needle in str(info.value) and "give another --db path" in str(info.value)
    assert "\n" not in str(info.value)
    assert isinstance(info.value, BotError)
    Store(db_path, CHAIN, ENGINE, DEPLOY_BLOCK).close()  # the refused open released its lock


def test_refuses_a_newer_schema_and_non_databases(db_path, tmp_path):
    Store(db_path, CHAIN, ENGINE, DEPLOY_BLOCK).close()
    raw = sqlite3.connect(db_path)
    raw.execute("INSERT INTO schema_migrations (version, applied_at) VALUES (?, 0)", (SCHEMA_VERSION + 1,))
    raw.commit()
    raw.close()
    with pytest.raises(StoreError, match=f"schema v{SCHEMA_VERSION + 1}, newer than this bot's v{SCHEMA_VERSION}"):
        Store(db_path, CHAIN, ENGINE, DEPLOY_BLOCK)
    junk = tmp_path / "junk.sqlite3"
    junk.write_bytes(b"this is not a database, just text " * 100)
    with pytest.raises(StoreError, match="not a usable SQLite database"):
        Store(junk, CHAIN, ENGINE, DEPLOY_BLOCK)
    with pytest.raises(StoreError, match="does not exist"):
        Store(tmp_path / "no" / "dir.sqlite3", CHAIN, ENGINE, DEPLOY_BLOCK)


def test_a_second_bot_process_cannot_open_the_same_database(store, db_path):
    with pytest.raises(StoreError, match="in use by another bot process"):
        Store(db_path, CHAIN, ENGINE, DEPLOY_BLOCK)


def test_accounts_are_idempotent(store):
    assert store.add_accounts([(TRADER, 110), (TRADER2, 111), (TRADER.upper().replace("0X", "0x"), 112)]) == [
        C(TRADER), C(TRADER2)
    ]
    assert store.add_accounts([(TRADER, 108)]) == []   # known: only its first-seen block moves earlier
    assert store.first_seen(TRADER) == 108
    assert store.add_accounts([(TRADER, 200)]) == [] and store.first_seen(TRADER) == 108
    assert store.account_count() == 2


def test_pending_for_blocks_a_second_send_until_settled(store):
    store.record_tx(tx(1, target=0))
    store.record_tx(tx(2, account=TRADER2, target=TOKEN.upper().replace("0X", "0x"), kind="liquidate_collateral"))
    assert store.pending_for(TRADER, 0) and store.pending_for(TRADER, "0")
    assert not store.pending_for(TRADER, 1)
    assert store.pending_for(TRADER2, TOKEN) and store.pending_for(TRADER2)
    store.update_tx(h(0x1001), status="mined", mined_block=121, gas_used=100_000, gas_cost_wei=3 * 10**15)
    assert not store.pending_for(TRADER, 0)
    assert store.tx(h(0x1001)).gas_cost_wei == 3 * 10**15
    store.record_tx(tx(3, nonce=3, kind="cancel", account=TRADER2, target=TOKEN))
    assert [t.kind for t in store.pending_for(TRADER2)] == ["liquidate_collateral"]  # a cancel is no liquidation
    store.record_tx(tx(4, nonce=2, kind="cancel", account=TRADER2, target=TOKEN, replaces=h(0x1002)))
    assert store.pending_for(TRADER2) == []  # its nonce now carries a cancel: no longer in flight
    with pytest.raises(StoreError):
        store.update_tx(h(0x1002), status="exploded")
    with pytest.raises(StoreError):
        store.record_tx(tx(5, max_fee_wei=1.5))  # no floats on money


def test_rewind_undoes_everything_after_the_fork(store):
    store.add_accounts([(TRADER, 101), (TRADER2, 125)])
    for n in range(118, 131):
        store.mark_processed(n, h(n), keep_blocks=12)
    assert min(store.block_hashes()) == 119 and max(store.block_hashes()) == 130
    store.record_tx(tx(1))
    store.update_tx(h(0x1001), status="mined", mined_block=126, gas_used=1, gas_cost_wei=1)
    store.record_tx(tx(5, nonce=2))
    store.record_tx(tx(6, nonce=2, replaces=h(0x1005)))
    store.update_tx(h(0x1006), status="mined", mined_block=121, gas_used=1, gas_cost_wei=1)
    store.update_tx(h(0x1005), status="replaced", replaced_by=h(0x1006))
    store.record_liquidation(LiquidationRecord(TRADER, "0", "liquidate", "won", 126, tx_hash=h(0x1001)))
    store.record_liquidation(LiquidationRecord(TRADER, "0", "liquidate", "lost", 119, reason="healthy"))

    store.rewind_to(122)

    assert store.last_block == 122 and store.last_block_hash == h(122)
    assert max(store.block_hashes()) == 122
    assert store.accounts() == [C(TRADER)] and store.first_seen(TRADER2) is None
    assert store.tx(h(0x1001)).status == "pending" and store.tx(h(0x1001)).mined_block is None
    assert store.tx(h(0x1006)).status == "mined"   # mined at 121, before the fork: untouched
    assert store.tx(h(0x1005)).status == "replaced"
    assert [r.outcome for r in store.liquidations()] == ["lost"]
    store.rewind_to(200)  # never forward
    assert store.last_block == 122
    with pytest.raises(StoreError):
        store.mark_processed(110, h(110))  # never backwards without a rewind


def test_liquidation_history_is_idempotent_and_totals_are_exact(store):
    rec = LiquidationRecord(TRADER, 0, "liquidate", "won", 120, tx_hash=h(1), reward_usd_wad=10**18 + 1,
                            gas_cost_wei=2**64)
    assert store.record_liquidation(rec) is True
    assert store.record_liquidation(rec) is False          # a re-read of the same block
    assert store.record_liquidation(LiquidationRecord(TRADER, 0, "liquidate", "lost", 121, reason="healthy"))
    assert store.record_liquidation(LiquidationRecord(TRADER2, 1, "liquidate", "won", 122, tx_hash=h(2),
                                                      reward_usd_wad=10**18 - 1, gas_cost_wei=1))
    totals = store.totals()
    assert (totals.won, totals.lost) == (2, 1)
    assert totals.reward_usd_wad == 2 * 10**18 and totals.gas_cost_wei == 2**64 + 1
    assert [r.target for r in store.liquidations(TRADER)] == ["0", "0"]
    with pytest.raises(StoreError):
        store.record_liquidation(LiquidationRecord(TRADER, 0, "liquidate", "draw", 1))


def test_a_batch_records_one_outcome_per_target_of_its_transaction(store):
    """A liquidate_many liquidates many targets in one transaction: one outcome for each, and a
    re-read of the block adds none."""
    won = [LiquidationRecord(TRADER, 0, "liquidate", "won", 130, tx_hash=h(7), reward_native=5),
           LiquidationRecord(TRADER, 1, "liquidate", "won", 130, tx_hash=h(7), reward_native=6),
           LiquidationRecord(TRADER2, 0, "liquidate", "won", 130, tx_hash=h(7), reward_native=7)]
    assert [store.record_liquidation(r) for r in won] == [True, True, True]
    assert [store.record_liquidation(r) for r in won] == [False, False, False]
    assert store.totals().won == 3
    assert sorted(r.reward_native for r in store.liquidations()) == [5, 6, 7]


def test_a_schema_v1_database_is_migrated_and_keeps_its_history(db_path):
    with Store(db_path, CHAIN, ENGINE, DEPLOY_BLOCK) as s:
        s.record_liquidation(LiquidationRecord(TRADER, 0, "liquidate", "won", 120, tx_hash=h(1)))
    raw = sqlite3.connect(db_path)
    try:   # back to v1: the one-outcome-per-transaction index, no v2 row
        raw.execute("DROP INDEX liquidations_tx_target")
        raw.execute("CREATE UNIQUE INDEX liquidations_tx ON liquidations (tx_hash) WHERE tx_hash IS NOT NULL")
        raw.execute("DELETE FROM schema_migrations WHERE version > 1")
        raw.commit()
    finally:
        raw.close()
    with Store(db_path, CHAIN, ENGINE, DEPLOY_BLOCK) as s:
        assert s.schema_version == SCHEMA_VERSION
        assert s.record_liquidation(LiquidationRecord(TRADER, 1, "liquidate", "won", 120, tx_hash=h(1)))
        assert [r.target for r in s.liquidations()] == ["0", "1"]


def test_backoffs(store):
    store.back_off(TRADER, 150, "lost race")
    store.back_off(TRADER, 140)                             # an earlier deadline does not shorten it
    assert store.backed_off_until(TRADER) == 150
    assert store.is_backed_off(TRADER, 150) and not store.is_backed_off(TRADER, 151)
    store.back_off(TRADER2, 130)
    assert set(store.backoffs(130).values()) == {150, 130}
    assert store.backoffs(131) == {C(TRADER): 150}
    assert store.backed_off_until(TRADER2) is None           # expired ones are pruned
    store.clear_backoff(TRADER)
    assert not store.is_backed_off(TRADER, 131)


def test_transaction_groups_writes_atomically(store):
    with pytest.raises(RuntimeError):
        with store.transaction():
            store.add_accounts([(TRADER, 120)])
            store.mark_processed(120, h(120))
            raise RuntimeError("crash between writes")
    assert store.account_count() == 0 and store.last_block == DEPLOY_BLOCK - 1
    with store.transaction():
        store.add_accounts([(TRADER, 120)])
        store.mark_processed(120, h(120))
    assert store.account_count() == 1 and store.last_block == 120


def test_a_new_chain_with_the_same_chain_id_and_addresses_is_refused_not_rewound(db_path):
    """A restarted dev node or a new anvil: same chain id, same deterministic engine address and
    deployment block, but another block there. One line that says how to start fresh."""
    with Store(db_path, CHAIN, ENGINE, DEPLOY_BLOCK, deployment_block_hash=h(1)) as s:
        s.mark_processed(130, h(130))
    with Store(db_path, CHAIN, ENGINE, DEPLOY_BLOCK, deployment_block_hash=h(1)) as s:
        assert s.last_block == 130          # the same chain: resumed
    with pytest.raises(StoreError) as info:
        Store(db_path, CHAIN, ENGINE, DEPLOY_BLOCK, deployment_block_hash=h(2))
    text = str(info.value)
    assert "another chain" in text and "--fresh-db" in text and "\n" not in text
    with Store(db_path, CHAIN, ENGINE, DEPLOY_BLOCK) as s:   # bot status: no hash to compare, reads
        assert s.last_block == 130


def test_a_database_written_before_the_binding_takes_the_hash_on_first_open(db_path):
    with Store(db_path, CHAIN, ENGINE, DEPLOY_BLOCK) as s:
        s.mark_processed(110, h(110))
    with Store(db_path, CHAIN, ENGINE, DEPLOY_BLOCK, deployment_block_hash=h(1)):
        pass
    with pytest.raises(StoreError, match="another chain"):
        Store(db_path, CHAIN, ENGINE, DEPLOY_BLOCK, deployment_block_hash=h(3))


def test_archive_moves_the_database_aside_and_the_next_open_starts_fresh(db_path):
    from bot.store import archive_database

    assert archive_database(db_path) is None     # nothing there yet
    with Store(db_path, CHAIN, ENGINE, DEPLOY_BLOCK, deployment_block_hash=h(1)) as s:
        s.mark_processed(130, h(130))
    moved = archive_database(db_path)
    assert moved is not None and moved.exists() and not db_path.exists()
    with Store(moved, CHAIN, ENGINE, DEPLOY_BLOCK, lock=False) as old:
        assert old.last_block == 130             # the old history is kept
    with Store(db_path, CHAIN, ENGINE, DEPLOY_BLOCK, deployment_block_hash=h(2)) as s:
        assert s.last_block == DEPLOY_BLOCK - 1
