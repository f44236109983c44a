"""The bot's persistent state in one embedded SQLite database.

Everything a restart needs to go on where it stopped, without rescanning from the deployment
block and without liquidating anything twice:

* ``meta``: chain id, engine address, deployment block and the hash of that block the database
  belongs to (a database of another chain or engine is refused: a new chain with the same chain id
  and addresses, such as a restarted dev node, has another deployment block hash), the last
  processed block and its hash;
* ``blocks``: the hashes of the processed blocks of the lookback window, so that a reorg can be
  detected (:func:`bot.scanner.find_fork_point`) and undone (:meth:`Store.rewind_to`);
* ``accounts``: every account discovered from the engine's events, with the block it was first
  seen in;
* ``sent_txs``: every transaction sent, recorded (and committed) before it is broadcast, with its
  nonce, fees, target, status (``pending``/``mined``/``reverted``/``replaced``/``dropped``; dropped
  also when the node never got it or a reorg took it away) and the call data needed to replace it
  after a restart; :meth:`Store.pending_for` says a liquidation of a target is in
  flight already;
* ``liquidations``: the history, won and lost, with reward and gas cost;
* ``backoffs``: accounts left alone until a block after a lost race;
* ``snapshot`` / ``snapshot_accounts`` (v3): the mirror's state at one block (with its hash), so
  that start-up replays only the logs after it. The mirror writes it incrementally (the protocol
  row and the accounts changed since the last write) in one transaction, on start-up, every
  ``snapshot_every_blocks`` and on shutdown (:meth:`bot.mirror.ChainMirror.save_snapshot`); a
  rewind below it drops it.

Money is stored as decimal TEXT (wei, quote native units, USD WAD): SQLite integers stop at
2**63. Connections use WAL mode; the schema is versioned in ``schema_migrations`` and migrated
forward on open. A lock file next to the database keeps a second bot process off it.
"""

from __future__ import annotations

import functools
import logging
import os
import sqlite3
import threading
import time
from collections.abc import Iterable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any

from web3 import Web3

from .errors import StoreError

log = logging.getLogger(__name__)

IN_MEMORY_DB = ":memory:"
TX_STATUSES = ("pending", "mined", "reverted", "replaced", "dropped")
OUTCOMES = ("won", "lost")

# Each migration takes the schema from version N-1 to N. Append, never edit.
MIGRATIONS: tuple[tuple[int, tuple[str, ...]], ...] = (
    (1, (
        """CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL)""",
        """CREATE TABLE blocks (number INTEGER PRIMARY KEY, hash TEXT NOT NULL)""",
        """CREATE TABLE accounts (
            address TEXT PRIMARY KEY,
            first_seen_block INTEGER NOT NULL
        )""",
        """CREATE INDEX accounts_first_seen ON accounts (first_seen_block)""",
        """CREATE TABLE sent_txs (
            hash TEXT PRIMARY KEY,
            nonce INTEGER NOT NULL,
            sender TEXT NOT NULL,
            kind TEXT NOT NULL,
            account TEXT NOT NULL,
            target TEXT NOT NULL,
            to_address TEXT NOT NULL,
            data TEXT NOT NULL,
            value_wei TEXT NOT NULL DEFAULT '0',
            gas_limit INTEGER NOT NULL,
            max_fee_wei TEXT NOT NULL,
            tip_wei TEXT NOT NULL,
            status TEXT NOT NULL CHECK (status IN ('pending','mined','reverted','replaced','dropped')),
            sent_block INTEGER NOT NULL,
            sent_at REAL NOT NULL,
            updated_at REAL NOT NULL,
            mined_block INTEGER,
            replaces TEXT,
            replaced_by TEXT,
            expected_profit_usd_wad TEXT NOT NULL DEFAULT '0',
            expected_profit_wei TEXT NOT NULL DEFAULT '0',
            gas_used INTEGER,
            gas_cost_wei TEXT,
            revert_reason TEXT
        )""",
        """CREATE INDEX sent_txs_status ON sent_txs (status)""",
        """CREATE INDEX sent_txs_target ON sent_txs (account, target)""",
        """CREATE INDEX sent_txs_nonce ON sent_txs (sender, nonce)""",
        """CREATE TABLE liquidations (
            id INTEGER PRIMARY KEY AUTOINCREMENT,
            account TEXT NOT NULL,
            target TEXT NOT NULL,
            kind TEXT NOT NULL,
            outcome TEXT NOT NULL CHECK (outcome IN ('won','lost')),
            tx_hash TEXT,
            block INTEGER NOT NULL,
            reward_native TEXT NOT NULL DEFAULT '0',
            reward_usd_wad TEXT NOT NULL DEFAULT '0',
            gas_cost_wei TEXT NOT NULL DEFAULT '0',
            reason TEXT,
            recorded_at REAL NOT NULL
        )""",
        """CREATE UNIQUE INDEX liquidations_tx ON liquidations (tx_hash) WHERE tx_hash IS NOT NULL""",
        """CREATE INDEX liquidations_account ON liquidations (account)""",
        """CREATE TABLE backoffs (
            account TEXT PRIMARY KEY,
            until_block INTEGER NOT NULL,
            reason TEXT NOT NULL
        )""",
    )),
    # A liquidate_many transaction liquidates many targets: one outcome per transaction and target.
    (2, (
        """DROP INDEX liquidations_tx""",
        """CREATE UNIQUE INDEX liquidations_tx_target ON liquidations (tx_hash, account, target, kind)
           WHERE tx_hash IS NOT NULL""",
    )),
    # The mirror's snapshot: start-up loads it and replays only the logs after its block.
    (3, (
        """CREATE TABLE IF NOT EXISTS snapshot (
            id INTEGER PRIMARY KEY CHECK (id = 1),
            block INTEGER NOT NULL,
            hash TEXT NOT NULL,
            protocol TEXT NOT NULL,
            accounts INTEGER NOT NULL,
            written_at REAL NOT NULL
        )""",
        """CREATE TABLE IF NOT EXISTS snapshot_accounts (address TEXT PRIMARY KEY, state TEXT NOT NULL) WITHOUT ROWID""",
    )),
)
SCHEMA_VERSION = MIGRATIONS[-1][0]


# ---------------------------------------------------------------------- records


@dataclass(frozen=True)
class SentTx:
    """A transaction the bot sent. ``target`` is the market id (decimal) or the token address."""

    hash: str
    nonce: int
    sender: str
    kind: str                   # "liquidate", "liquidate_collateral", "settle_bad_debt", "cancel"
    account: str                # the liquidated account ("" for a cancel)
    target: str
    to_address: str
    data: str                   # 0x call data, to rebuild a replacement after a restart
    gas_limit: int
    max_fee_wei: int
    tip_wei: int
    sent_block: int
    status: str = "pending"
    value_wei: int = 0
    sent_at: float = 0.0
    updated_at: float = 0.0
    mined_block: int | None = None
    replaces: str | None = None
    replaced_by: str | None = None
    expected_profit_usd_wad: int = 0
    expected_profit_wei: int = 0
    gas_used: int | None = None
    gas_cost_wei: int | None = None
    revert_reason: str | None = None


@dataclass(frozen=True)
class LiquidationRecord:
    """One liquidation attempt's outcome: ``won`` (ours mined) or ``lost`` (a rival was first)."""

    account: str
    target: str
    kind: str
    outcome: str
    block: int
    tx_hash: str | None = None
    reward_native: int = 0       # quote token native units paid to the bot
    reward_usd_wad: int = 0
    gas_cost_wei: int = 0
    reason: str | None = None
    recorded_at: float = 0.0


@dataclass(frozen=True)
class Rewind:
    """What :meth:`Store.rewind_to` dropped."""

    block: int
    accounts: int = 0
    liquidations: list[LiquidationRecord] = field(default_factory=list)
    tx_nonces: int = 0


@dataclass(frozen=True)
class Snapshot:
    """The mirror's state at one block, as :meth:`Store.save_snapshot` wrote it: the protocol
    (configuration, feeds, house, fund) and each account as compact JSON text (the codec is the
    mirror's, :mod:`bot.mirror`)."""

    block: int
    hash: str
    protocol: str
    accounts: dict[str, str]       # address -> the account's text
    written_at: float = 0.0


@dataclass(frozen=True)
class KeeperTotals:
    won: int
    lost: int
    reward_usd_wad: int
    gas_cost_wei: int


_MONEY_TX = {"value_wei", "max_fee_wei", "tip_wei", "expected_profit_usd_wad", "expected_profit_wei", "gas_cost_wei"}
_MONEY_LIQ = {"reward_native", "reward_usd_wad", "gas_cost_wei"}
_TX_COLUMNS = [f.name for f in fields(SentTx)]
_LIQ_COLUMNS = [f.name for f in fields(LiquidationRecord)]


def _to_db(name: str, value: Any, money: set[str]) -> Any:
    if name in money and value is not None:
        if not isinstance(value, int) or isinstance(value, bool):
            raise StoreError(f"{name} must be an integer amount, got {type(value).__name__}")  # dev: no floats on money
        return str(value)
    return value


def _from_db(name: str, value: Any, money: set[str]) -> Any:
    if name in money and value is not None:
        return int(value)
    return value


@functools.lru_cache(maxsize=65_536)
def _addr(address: str) -> str:
    """The checksummed address (memoised: the same few addresses recur on every write)."""
    return Web3.to_checksum_address(address)


def _hash(value: Any) -> str:
    if isinstance(value, str):
        return value.lower() if value.startswith("0x") else "0x" + value.lower()
    return "0x" + bytes(value).hex()


# ---------------------------------------------------------------------- the store


class Store:
    """The bot's SQLite state, bound to one chain id and one engine.

    Thread-safe (one connection behind a lock). Writes are atomic per method; group several in
    ``with store.transaction():`` to make them atomic together (e.g. the accounts of a chunk of
    logs and the new last processed block).
    """

    def __init__(self, path: str | os.PathLike[str], chain_id: int, engine: str, deployment_block: int,
                 *, lock: bool = True, deployment_block_hash: str | bytes | None = None) -> None:
        self.path = str(path)
        self.chain_id = int(chain_id)
        self.engine = _addr(engine)
        self.deployment_block = int(deployment_block)
        self.deployment_block_hash = _hash(deployment_block_hash) if deployment_block_hash is not None else None
        self._lock = threading.RLock()
        self._depth = 0
        self._lock_fd: int | None = None
        if self.path != IN_MEMORY_DB and not Path(self.path).parent.is_dir():
            raise StoreError(f"cannot create the database {self.path}: directory {Path(self.path).parent} does not exist")
        if lock and self.path != IN_MEMORY_DB:
            self._acquire_file_lock()
        try:
            self._db = self._connect()
            self._migrate()
            self._bind()
        except BaseException:
            self._release_file_lock()
            raise

    @classmethod
    def open(cls, path: str | os.PathLike[str], chain_id: int, engine: str, deployment_block: int,
             **kwargs: Any) -> "Store":
        return cls(path, chain_id, engine, deployment_block, **kwargs)

    # connection --------------------------------------------------------------
    def _connect(self) -> sqlite3.Connection:
        try:
            db = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False, timeout=10.0)
            db.execute("PRAGMA busy_timeout = 10000")
            mode = db.execute("PRAGMA journal_mode = WAL").fetchone()[0]
            db.execute("PRAGMA synchronous = NORMAL")
        except sqlite3.DatabaseError as exc:
            raise StoreError(f"{self.path} is not a usable SQLite database ({exc}): use another --db path") from exc
        if self.path != IN_MEMORY_DB and str(mode).lower() != "wal":
            log.warning("SQLite refused WAL mode for %s (got %s)", self.path, mode)
        db.row_factory = sqlite3.Row
        return db

    def _acquire_file_lock(self) -> None:
        try:
            import fcntl
        except ImportError:  # not POSIX: no advisory lock
            return
        lock_path = self.path + ".lock"
        try:
            fd = os.open(lock_path, os.O_RDWR | os.O_CREAT, 0o600)
        except OSError as exc:
            raise StoreError(f"cannot create the lock file {lock_path} ({exc.strerror}): check the directory") from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            os.close(fd)
            raise StoreError(
                f"database {self.path} is in use by another bot process: stop it first, or give another --db"
            ) from None
        self._lock_fd = fd

    def _release_file_lock(self) -> None:
        if self._lock_fd is not None:
            os.close(self._lock_fd)  # closing the descriptor drops the flock
            self._lock_fd = None

    def close(self) -> None:
        with self._lock:
            db = getattr(self, "_db", None)
            if db is not None:
                db.close()
                self._db = None  # type: ignore[assignment]
            self._release_file_lock()

    def __enter__(self) -> "Store":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @contextmanager
    def transaction(self) -> Iterator[None]:
        """Make every write inside the block one atomic transaction (nesting joins the outer one)."""
        with self._lock:
            if self._db is None:
                raise StoreError("the store is closed")
            outer = self._depth == 0
            if outer:
                self._db.execute("BEGIN IMMEDIATE")
            self._depth += 1
            try:
                yield
            except BaseException:
                self._depth -= 1
                if outer:
                    self._db.execute("ROLLBACK")
                raise
            self._depth -= 1
            if outer:
                self._db.execute("COMMIT")

    def _query(self, sql: str, args: Iterable[Any] = ()) -> list[sqlite3.Row]:
        with self._lock:
            if self._db is None:
                raise StoreError("the store is closed")
            return self._db.execute(sql, tuple(args)).fetchall()

    # schema ------------------------------------------------------------------
    def _migrate(self) -> None:
        with self.transaction():
            self._db.execute(
                "CREATE TABLE IF NOT EXISTS schema_migrations (version INTEGER PRIMARY KEY, applied_at REAL NOT NULL)"
            )
            row = self._db.execute("SELECT MAX(version) FROM schema_migrations").fetchone()
            current = row[0] or 0
            if current > SCHEMA_VERSION:
                raise StoreError(
                    f"database {self.path} has schema v{current}, newer than this bot's v{SCHEMA_VERSION}: "
                    "upgrade xmargin or use another --db path"
                )
            for version, statements in MIGRATIONS:
                if version <= current:
                    continue
                for sql in statements:
                    self._db.execute(sql)
                self._db.execute("INSERT INTO schema_migrations (version, applied_at) VALUES (?, ?)", (version, time.time()))
                log.info("database %s migrated to schema v%d", self.path, version)

    @property
    def schema_version(self) -> int:
        return int(self._query("SELECT MAX(version) FROM schema_migrations")[0][0])

    def _bind(self) -> None:
        meta = self._meta()
        if "chain_id" not in meta:
            with self.transaction():
                self._set_meta(chain_id=self.chain_id, engine=self.engine, deployment_block=self.deployment_block,
                               last_block=self.deployment_block - 1, created_at=time.time())
                if self.deployment_block_hash is not None:
                    self._set_meta(deployment_block_hash=self.deployment_block_hash)
            log.info("new bot database %s for engine %s on chain %d", self.path, self.engine, self.chain_id)
            return
        if int(meta["chain_id"]) != self.chain_id or meta["engine"].lower() != self.engine.lower():
            raise StoreError(
                f"database {self.path} belongs to engine {meta['engine']} on chain id {meta['chain_id']}, "
                f"not engine {self.engine} on chain id {self.chain_id}: give another --db path"
            )
        if int(meta["deployment_block"]) != self.deployment_block:
            raise StoreError(
                f"database {self.path} was created for a deployment at block {meta['deployment_block']}, "
                f"not {self.deployment_block}: give another --db path"
            )
        stored = meta.get("deployment_block_hash") or None
        if self.deployment_block_hash is not None:
            if stored is None:
                self._set_meta(deployment_block_hash=self.deployment_block_hash)
            elif stored != self.deployment_block_hash:
                # Same chain id, engine address and deployment block, another block there: a new
                # chain (a restarted dev node, a new anvil), not a reorg of the old one.
                raise StoreError(
                    f"database {self.path} was written on another chain: its deployment block "
                    f"{self.deployment_block} had hash {stored[:10]}…, the node's has {self.deployment_block_hash[:10]}… "
                    "(a restarted node?): start fresh with --fresh-db, or give another --db path"
                )

    def _meta(self) -> dict[str, str]:
        return {row["key"]: row["value"] for row in self._query("SELECT key, value FROM meta")}

    def _set_meta(self, **values: Any) -> None:
        with self.transaction():
            for key, value in values.items():
                self._db.execute(
                    "INSERT INTO meta (key, value) VALUES (?, ?) ON CONFLICT(key) DO UPDATE SET value = excluded.value",
                    (key, "" if value is None else str(value)),
                )

    # progress and reorgs -------------------------------------------------------
    @property
    def last_block(self) -> int:
        """The last block whose logs were fully processed (``deployment_block - 1`` when new)."""
        return int(self._meta()["last_block"])

    @property
    def last_block_hash(self) -> str | None:
        return self._meta().get("last_block_hash") or None

    @property
    def next_block(self) -> int:
        """Where a scan resumes after a restart: the block after :attr:`last_block`."""
        return self.last_block + 1

    def mark_processed(self, number: int, block_hash: str | None, keep_blocks: int | None = None) -> None:
        """Record that every log up to block ``number`` (hash ``block_hash``) was processed.

        Stores the hash for reorg detection and, with ``keep_blocks``, forgets hashes older than
        that window. Never moves backwards: use :meth:`rewind_to` for that.
        """
        with self.transaction():
            if number < self.last_block:
                raise StoreError(f"processed block {number} is behind the last processed block {self.last_block}")  # dev
            h = _hash(block_hash) if block_hash is not None else None
            if h is not None:
                self._db.execute(
                    "INSERT INTO blocks (number, hash) VALUES (?, ?) ON CONFLICT(number) DO UPDATE SET hash = excluded.hash",
                    (number, h),
                )
            self._set_meta(last_block=number, last_block_hash=h)
            if keep_blocks is not None:
                self._db.execute("DELETE FROM blocks WHERE number <= ?", (number - keep_blocks,))

    def record_block(self, number: int, block_hash: str) -> None:
        """Remember the hash of a processed block (part of the lookback window)."""
        with self.transaction():
            self._db.execute(
                "INSERT INTO blocks (number, hash) VALUES (?, ?) ON CONFLICT(number) DO UPDATE SET hash = excluded.hash",
                (number, _hash(block_hash)),
            )

    def block_hashes(self) -> dict[int, str]:
        """Stored hashes of the processed blocks of the lookback window, by number."""
        return {int(r["number"]): r["hash"] for r in self._query("SELECT number, hash FROM blocks ORDER BY number")}

    def prune_blocks(self, below: int) -> None:
        with self.transaction():
            self._db.execute("DELETE FROM blocks WHERE number < ?", (below,))

    def rewind_to(self, block: int) -> "Rewind":
        """Undo everything after ``block`` (a reorg): the last processed block goes back to it,
        accounts first seen later and liquidations recorded later are forgotten (the rescan finds
        them again), transactions mined later are pending again (the sender asks the node what
        became of them), and lost-race backoffs are cleared (they were counted on the old branch).
        Returns what was dropped."""
        with self.transaction():
            block = max(block, self.deployment_block - 1)
            if block >= self.last_block:
                return Rewind(block)
            row = self._db.execute("SELECT hash FROM blocks WHERE number = ?", (block,)).fetchone()
            self._db.execute("DELETE FROM blocks WHERE number > ?", (block,))
            dropped_accounts = self._db.execute("DELETE FROM accounts WHERE first_seen_block > ?", (block,)).rowcount
            dropped = [self._liq_from_row(r) for r in
                       self._db.execute("SELECT * FROM liquidations WHERE block > ? ORDER BY id", (block,)).fetchall()]
            self._db.execute("DELETE FROM liquidations WHERE block > ?", (block,))
            unmined = self._db.execute(
                "SELECT sender, nonce FROM sent_txs WHERE mined_block > ?", (block,)
            ).fetchall()
            now = time.time()
            for r in unmined:
                self._db.execute(
                    "UPDATE sent_txs SET status = 'pending', mined_block = NULL, gas_used = NULL, gas_cost_wei = NULL, "
                    "revert_reason = NULL, replaced_by = NULL, updated_at = ? WHERE sender = ? AND nonce = ? "
                    "AND status IN ('mined', 'reverted', 'replaced', 'dropped')",
                    (now, r["sender"], r["nonce"]),
                )
            self._db.execute("DELETE FROM backoffs")
            snap = self._db.execute("SELECT block FROM snapshot WHERE id = 1").fetchone()
            if snap is not None and int(snap[0]) > block:
                self.drop_snapshot()      # it holds state of dropped blocks: start-up rebuilds from logs
            self._set_meta(last_block=block, last_block_hash=row["hash"] if row else None)
            log.warning("rewound state to block %d: %d account(s), %d liquidation record(s) dropped, "
                        "%d transaction nonce(s) to re-check", block, dropped_accounts, len(dropped), len(unmined))
            return Rewind(block, dropped_accounts, dropped, len(unmined))

    # the mirror's snapshot ----------------------------------------------------------
    def save_snapshot(self, block: int, block_hash: str, protocol: str, accounts: Mapping[str, str],
                      *, full: bool = False) -> None:
        """Write the mirror's state at ``block`` in one transaction: the protocol text, and the
        text of ``accounts`` (those changed since the last snapshot; with ``full``, every account,
        replacing the stored ones). A kill during the write leaves the previous snapshot whole."""
        with self.transaction():
            if full:
                self._db.execute("DELETE FROM snapshot_accounts")
            self._db.executemany(
                "INSERT INTO snapshot_accounts (address, state) VALUES (?, ?) "
                "ON CONFLICT(address) DO UPDATE SET state = excluded.state",
                accounts.items(),
            )
            count = self._db.execute("SELECT COUNT(*) FROM snapshot_accounts").fetchone()[0]
            self._db.execute(
                "INSERT INTO snapshot (id, block, hash, protocol, accounts, written_at) VALUES (1, ?, ?, ?, ?, ?) "
                "ON CONFLICT(id) DO UPDATE SET block = excluded.block, hash = excluded.hash, "
                "protocol = excluded.protocol, accounts = excluded.accounts, written_at = excluded.written_at",
                (int(block), _hash(block_hash), protocol, int(count), time.time()),
            )

    def snapshot_block(self) -> int | None:
        """The block of the stored snapshot, or None."""
        rows = self._query("SELECT block FROM snapshot WHERE id = 1")
        return int(rows[0][0]) if rows else None

    def load_snapshot(self) -> Snapshot | None:
        """The stored snapshot, or None (none written yet, or dropped by a reorg). A snapshot whose
        account count does not match its rows (never written so by this store) is dropped."""
        with self.transaction():
            row = self._db.execute("SELECT block, hash, protocol, accounts, written_at FROM snapshot WHERE id = 1").fetchone()
            if row is None:
                return None
            accounts = {r[0]: r[1] for r in self._db.execute("SELECT address, state FROM snapshot_accounts")}
        if len(accounts) != int(row["accounts"]):
            log.warning("the stored snapshot of block %d has %d account rows, not %d: dropped",
                        row["block"], len(accounts), row["accounts"])
            self.drop_snapshot()
            return None
        return Snapshot(int(row["block"]), row["hash"], row["protocol"], accounts, float(row["written_at"]))

    def drop_snapshot(self) -> None:
        """Forget the snapshot (a reorg below it, or a format this bot cannot read)."""
        with self.transaction():
            self._db.execute("DELETE FROM snapshot")
            self._db.execute("DELETE FROM snapshot_accounts")

    def mined_txs_newest_first(self) -> Iterator[SentTx]:
        """Mined or reverted transactions, newest block first (a deep reorg checks them by hash)."""
        for r in self._query("SELECT * FROM sent_txs WHERE status IN ('mined', 'reverted') "
                             "ORDER BY mined_block DESC, nonce DESC"):
            yield self._tx_from_row(r)

    def unmine(self, tx_hash: str, status: str = "pending") -> list[LiquidationRecord]:
        """A transaction recorded as mined is not on the canonical chain: back to ``status``
        (``pending`` when the node still has it, ``dropped`` when it is gone), with the
        liquidation outcome recorded for it deleted; returns the deleted outcomes."""
        h = _hash(tx_hash)
        with self.transaction():
            rows = self._db.execute("SELECT * FROM liquidations WHERE tx_hash = ?", (h,)).fetchall()
            self._db.execute("DELETE FROM liquidations WHERE tx_hash = ?", (h,))
            self._db.execute(
                "UPDATE sent_txs SET status = ?, mined_block = NULL, gas_used = NULL, gas_cost_wei = NULL, "
                "revert_reason = NULL, updated_at = ? WHERE hash = ?", (status, time.time(), h))
        return [self._liq_from_row(r) for r in rows]

    def delete_tx(self, tx_hash: str) -> None:
        """Forget a transaction the node refused outright (recorded before it was broadcast)."""
        with self.transaction():
            self._db.execute("DELETE FROM sent_txs WHERE hash = ?", (_hash(tx_hash),))

    # accounts ----------------------------------------------------------------
    def add_accounts(self, seen: Iterable[tuple[str, int]], *, checksummed: bool = False) -> list[str]:
        """Record ``(address, block)`` sightings; returns the addresses that were new, in order.
        ``checksummed``: the addresses are checksummed already (decoded logs), not checked again.

        Idempotent: a sighting of a known account only lowers its first-seen block if earlier.
        """
        new: list[str] = []
        with self.transaction():
            for address, block in seen:
                a = address if checksummed else _addr(address)
                row = self._db.execute("SELECT first_seen_block FROM accounts WHERE address = ?", (a,)).fetchone()
                if row is None:
                    self._db.execute("INSERT INTO accounts (address, first_seen_block) VALUES (?, ?)", (a, int(block)))
                    new.append(a)
                elif int(block) < int(row[0]):
                    self._db.execute("UPDATE accounts SET first_seen_block = ? WHERE address = ?", (int(block), a))
        return new

    def accounts(self) -> list[str]:
        return [r["address"] for r in self._query("SELECT address FROM accounts ORDER BY first_seen_block, address")]

    def account_count(self) -> int:
        return int(self._query("SELECT COUNT(*) FROM accounts")[0][0])

    def first_seen(self, address: str) -> int | None:
        rows = self._query("SELECT first_seen_block FROM accounts WHERE address = ?", (_addr(address),))
        return int(rows[0][0]) if rows else None

    # transactions --------------------------------------------------------------
    def record_tx(self, tx: SentTx) -> SentTx:
        """Insert a sent transaction (``sent_at``/``updated_at`` default to now). The same signed
        transaction sent again (same hash: same nonce, fees and call, e.g. after a reorg dropped
        the first) replaces its old record."""
        if tx.status not in TX_STATUSES:
            raise StoreError(f"unknown transaction status {tx.status!r}")  # dev
        now = time.time()
        tx = replace(
            tx,
            hash=_hash(tx.hash),
            sender=_addr(tx.sender),
            account=_addr(tx.account) if tx.account else "",
            target=normalize_target(tx.target),
            to_address=_addr(tx.to_address),
            sent_at=tx.sent_at or now,
            updated_at=tx.updated_at or now,
        )
        cols = ", ".join(_TX_COLUMNS)
        marks = ", ".join("?" for _ in _TX_COLUMNS)
        with self.transaction():
            self._db.execute(
                f"INSERT OR REPLACE INTO sent_txs ({cols}) VALUES ({marks})",
                [_to_db(c, getattr(tx, c), _MONEY_TX) for c in _TX_COLUMNS],
            )
        return tx

    def update_tx(self, tx_hash: str, **changes: Any) -> None:
        """Update fields of a sent transaction (e.g. ``status="mined", mined_block=..., gas_used=...``)."""
        unknown = set(changes) - set(_TX_COLUMNS)
        if unknown:
            raise StoreError(f"unknown transaction field(s) {sorted(unknown)}")  # dev
        if "status" in changes and changes["status"] not in TX_STATUSES:
            raise StoreError(f"unknown transaction status {changes['status']!r}")  # dev
        changes.setdefault("updated_at", time.time())
        sets = ", ".join(f"{k} = ?" for k in changes)
        with self.transaction():
            cur = self._db.execute(
                f"UPDATE sent_txs SET {sets} WHERE hash = ?",
                [_to_db(k, v, _MONEY_TX) for k, v in changes.items()] + [_hash(tx_hash)],
            )
            if cur.rowcount == 0:
                raise StoreError(f"no sent transaction {tx_hash}")  # dev

    def tx(self, tx_hash: str) -> SentTx | None:
        rows = self._query("SELECT * FROM sent_txs WHERE hash = ?", (_hash(tx_hash),))
        return self._tx_from_row(rows[0]) if rows else None

    def txs(self, status: str | None = None) -> list[SentTx]:
        if status is None:
            rows = self._query("SELECT * FROM sent_txs ORDER BY sent_at, nonce")
        else:
            rows = self._query("SELECT * FROM sent_txs WHERE status = ? ORDER BY sent_at, nonce", (status,))
        return [self._tx_from_row(r) for r in rows]

    def pending_txs(self) -> list[SentTx]:
        """Transactions still in flight, oldest first: what a restarted sender must keep tracking."""
        return self.txs("pending")

    def pending_for(self, account: str, target: str | int | None = None) -> list[SentTx]:
        """In-flight liquidations of ``account`` (and ``target``): non-empty means do not send again.

        A nonce whose stuck liquidation was swapped for a ``cancel`` (a self-transfer) no longer
        counts, like the cancel itself.
        """
        sql = (
            "SELECT * FROM sent_txs AS t WHERE t.status = 'pending' AND t.kind != 'cancel' AND t.account = ? "
            "AND NOT EXISTS (SELECT 1 FROM sent_txs AS c WHERE c.sender = t.sender AND c.nonce = t.nonce "
            "AND c.kind = 'cancel' AND c.status = 'pending')"
        )
        args: list[Any] = [_addr(account)]
        if target is not None:
            sql += " AND t.target = ?"
            args.append(normalize_target(target))
        return [self._tx_from_row(r) for r in self._query(sql + " ORDER BY t.nonce, t.sent_at", args)]

    @staticmethod
    def _tx_from_row(row: sqlite3.Row) -> SentTx:
        return SentTx(**{c: _from_db(c, row[c], _MONEY_TX) for c in _TX_COLUMNS})

    # liquidation history ---------------------------------------------------------
    def record_liquidation(self, rec: LiquidationRecord) -> bool:
        """Add an outcome; False if one was already recorded for the same transaction and target
        (idempotent across a lookback re-read or a restart; a ``liquidate_many`` has one per
        target)."""
        if rec.outcome not in OUTCOMES:
            raise StoreError(f"unknown liquidation outcome {rec.outcome!r}")  # dev
        rec = replace(
            rec,
            account=_addr(rec.account),
            target=normalize_target(rec.target),
            tx_hash=_hash(rec.tx_hash) if rec.tx_hash else None,
            recorded_at=rec.recorded_at or time.time(),
        )
        cols = ", ".join(_LIQ_COLUMNS)
        marks = ", ".join("?" for _ in _LIQ_COLUMNS)
        with self.transaction():
            cur = self._db.execute(
                f"INSERT OR IGNORE INTO liquidations ({cols}) VALUES ({marks})",
                [_to_db(c, getattr(rec, c), _MONEY_LIQ) for c in _LIQ_COLUMNS],
            )
            return cur.rowcount == 1

    def liquidations(self, account: str | None = None) -> list[LiquidationRecord]:
        if account is None:
            rows = self._query("SELECT * FROM liquidations ORDER BY id")
        else:
            rows = self._query("SELECT * FROM liquidations WHERE account = ? ORDER BY id", (_addr(account),))
        return [self._liq_from_row(r) for r in rows]

    @staticmethod
    def _liq_from_row(row: sqlite3.Row) -> LiquidationRecord:
        return LiquidationRecord(**{c: _from_db(c, row[c], _MONEY_LIQ) for c in _LIQ_COLUMNS})

    def totals(self) -> KeeperTotals:
        """Won and lost counts, total reward (USD WAD) and gas spent (wei), summed exactly."""
        won = lost = reward = gas = 0
        for r in self._query("SELECT outcome, reward_usd_wad, gas_cost_wei FROM liquidations"):
            if r["outcome"] == "won":
                won += 1
            else:
                lost += 1
            reward += int(r["reward_usd_wad"])
            gas += int(r["gas_cost_wei"])
        return KeeperTotals(won, lost, reward, gas)

    # lost-race backoffs ------------------------------------------------------------
    def back_off(self, account: str, until_block: int, reason: str = "lost race") -> None:
        """Leave ``account`` alone until ``until_block`` (inclusive); a later deadline wins."""
        with self.transaction():
            self._db.execute(
                "INSERT INTO backoffs (account, until_block, reason) VALUES (?, ?, ?) "
                "ON CONFLICT(account) DO UPDATE SET until_block = MAX(until_block, excluded.until_block), "
                "reason = excluded.reason",
                (_addr(account), int(until_block), reason),
            )

    def backed_off_until(self, account: str) -> int | None:
        rows = self._query("SELECT until_block FROM backoffs WHERE account = ?", (_addr(account),))
        return int(rows[0][0]) if rows else None

    def is_backed_off(self, account: str, block: int) -> bool:
        until = self.backed_off_until(account)
        return until is not None and block <= until

    def backoffs(self, block: int) -> dict[str, int]:
        """Accounts backed off at ``block`` -> until which block. Expired ones are deleted."""
        with self.transaction():
            self._db.execute("DELETE FROM backoffs WHERE until_block < ?", (int(block),))
        return {r["account"]: int(r["until_block"]) for r in self._query("SELECT account, until_block FROM backoffs")}

    def clear_backoff(self, account: str) -> None:
        with self.transaction():
            self._db.execute("DELETE FROM backoffs WHERE account = ?", (_addr(account),))


def archive_database(path: str | os.PathLike[str]) -> Path | None:
    """Move the database at ``path`` (with its WAL and shared-memory files) aside, to
    ``PATH.TIMESTAMP.old``, so that the next open starts fresh; returns where it went (None when
    there was nothing). Nothing is deleted: the old history can still be read with ``bot status``."""
    src = Path(path)
    if not src.exists():
        return None
    dest = src.with_name(f"{src.name}.{time.strftime('%Y%m%dT%H%M%S')}.old")
    for suffix in ("", "-wal", "-shm"):
        part = Path(str(src) + suffix)
        if part.exists():
            part.rename(Path(str(dest) + suffix))
    log.warning("moved the old bot database %s to %s: starting fresh", src, dest)
    return dest


def normalize_target(target: str | int) -> str:
    """A liquidation target as stored: a market id as a decimal string, a token as a checksum address."""
    if isinstance(target, bool):
        raise StoreError("a target is a market id or a token address, not a bool")  # dev
    if isinstance(target, int):
        return str(target)
    text = str(target)
    if text.startswith(("0x", "0X")) and len(text) == 42:
        return _addr(text)
    return text
