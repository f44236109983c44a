"""Local nodes for tests behind one interface: the dev node (eth-tester on py-evm, in process) and
anvil (Foundry's node, a subprocess), both spoken to over JSON-RPC on 127.0.0.1.

    with start_node("anvil") as node:          # or "devnode"
        w3 = Web3(HTTPProvider(node.url))
        node.mine()                             # evm_mine: one block from the mempool
        snap = node.snapshot(); ...; node.revert(snap)
        node.reorg(3)                           # the last 3 blocks replaced by 3 empty ones

Both start with manual mining (transactions wait in the mempool until :meth:`LocalNode.mine`),
so a test decides what lands in which block; :meth:`LocalNode.automine` turns automining on for
setup that waits for receipts, and :meth:`LocalNode.ticking` mines empty blocks in the background
(a chain that moves on by itself).

anvil is found, in order, at ``$XMARGIN_ANVIL``, in ``.anvil/`` at the repository root (where
``.ci/run`` installs it: ``npm install --prefix .anvil @foundry-rs/anvil``, a package that
carries a prebuilt binary) or on ``PATH``. When it is nowhere, :func:`anvil_path` installs it into
``.anvil/`` with npm; only without npm is the anvil half of a test skipped, and with ``CI=true``
a missing anvil is a failure, never a skip (:func:`require_anvil`).

The pytest fixture ``node_kind`` (``tests/conftest.py``) parametrises a module over both kinds.
"""

from __future__ import annotations

import fcntl
import glob
import itertools
import logging
import os
import re
import shutil
import subprocess
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import requests

log = logging.getLogger(__name__)

REPO_ROOT = Path(__file__).resolve().parents[1]
ANVIL_DIR = REPO_ROOT / ".anvil"                 # ignored by git; .ci/run installs anvil here
ANVIL_PACKAGE = "@foundry-rs/anvil@1.7.1"
ANVIL_ENV = "XMARGIN_ANVIL"
ANVIL_MNEMONIC = "test test test test test test test test test test test junk"   # anvil's default
NODE_KINDS = ("devnode", "anvil")
ACCOUNTS = 10
START_TIMEOUT_S = 30.0


class NodeUnavailable(RuntimeError):
    """The node cannot be started here (anvil missing and not installable)."""


class NodeRpcError(RuntimeError):
    """A JSON-RPC error answer of a test node."""


# ---------------------------------------------------------------------- finding anvil


def _installed_anvil() -> str | None:
    override = os.environ.get(ANVIL_ENV)
    if override:
        return override if os.access(override, os.X_OK) else None
    # The platform package's binary (e.g. @foundry-rs/anvil-linux-amd64/bin/anvil), not the npm
    # wrapper script: the wrapper is a node process in front of anvil, so signals and kills would
    # reach the wrapper, not the node.
    for candidate in sorted(glob.glob(str(ANVIL_DIR / "node_modules" / "@foundry-rs" / "anvil-*" / "bin" / "anvil"))):
        if os.access(candidate, os.X_OK):
            return candidate
    return shutil.which("anvil")


def anvil_path(install: bool = True) -> str:
    """The anvil binary; installs it into ``.anvil/`` with npm when missing (once, under a lock,
    so that parallel test workers share one install). Raises :class:`NodeUnavailable` when there
    is no anvil and no npm to install it with."""
    found = _installed_anvil()
    if found or not install:
        if found:
            return found
        raise NodeUnavailable("anvil is not installed")
    npm = shutil.which("npm")
    if npm is None:
        raise NodeUnavailable(f"npm is not installed, so anvil ({ANVIL_PACKAGE}) cannot be installed")
    ANVIL_DIR.mkdir(exist_ok=True)
    with open(ANVIL_DIR / ".install.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        found = _installed_anvil()
        if found:
            return found
        log.warning("installing anvil (%s) into %s", ANVIL_PACKAGE, ANVIL_DIR)
        done = subprocess.run([npm, "install", "--prefix", str(ANVIL_DIR), "--no-save", "--no-audit", "--no-fund",
                               ANVIL_PACKAGE], capture_output=True, text=True, timeout=600)
        found = _installed_anvil()
        if found is None:
            raise NodeUnavailable(f"npm install {ANVIL_PACKAGE} failed (exit {done.returncode}): "
                                  f"{(done.stderr or done.stdout).strip()[-300:]}")
        return found


def require_anvil() -> str:
    """anvil for a test: skipped with a clear message only where npm is missing, and never in CI
    (``CI=true``), where a missing anvil fails the test."""
    import pytest

    try:
        return anvil_path()
    except NodeUnavailable as exc:
        if os.environ.get("CI", "").lower() in ("1", "true", "yes"):
            pytest.fail(f"anvil is required in CI: {exc}; .ci/run installs it with npm")
        pytest.skip(f"anvil half skipped: {exc}")
    raise AssertionError("unreachable")  # pytest.skip raises


# ---------------------------------------------------------------------- nodes


class LocalNode:
    """A node for tests, driven over JSON-RPC (see the module docstring)."""

    kind: str = ""

    def __init__(self, url: str, accounts: list[tuple[str, str]], chain_id: int) -> None:
        self.url = url
        self.accounts = accounts            # (checksum address, 0x private key), funded and unlocked
        self.chain_id = chain_id
        self._ids = itertools.count(1)
        self._session = requests.Session()

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.url})"

    # JSON-RPC ------------------------------------------------------------------
    def request(self, method: str, *params: Any) -> Any:
        """One JSON-RPC request straight to the node (no web3 layers); its result."""
        body = {"jsonrpc": "2.0", "id": next(self._ids), "method": method, "params": list(params)}
        answer = self._session.post(self.url, json=body, timeout=60).json()
        if "error" in answer:
            raise NodeRpcError(f"{method}: {answer['error']}")
        return answer.get("result")

    def block_number(self) -> int:
        return int(self.request("eth_blockNumber"), 16)

    # blocks ------------------------------------------------------------------------
    def mine(self, blocks: int = 1) -> int:
        """Mine ``blocks`` blocks (the first takes the mempool, by priority fee); the new head."""
        for _ in range(blocks):
            self.request("evm_mine")
        return self.block_number()

    def set_automine(self, enabled: bool) -> None:
        self.request("evm_setAutomine", enabled)

    @contextmanager
    def automine(self) -> Iterator[None]:
        """Mine every transaction as it arrives while the block runs (setup waiting for receipts)."""
        self.set_automine(True)
        try:
            yield
        finally:
            self.set_automine(False)

    @contextmanager
    def ticking(self, every_s: float) -> Iterator[None]:
        """A block every ``every_s`` seconds, empty or not, while the block runs."""
        stop = threading.Event()

        def loop() -> None:
            while not stop.wait(every_s):
                try:
                    self.request("evm_mine")
                except (requests.RequestException, NodeRpcError) as exc:
                    log.warning("background block on %s failed: %s", self, exc)

        thread = threading.Thread(target=loop, name=f"{self.kind}-ticker", daemon=True)
        thread.start()
        try:
            yield
        finally:
            stop.set()
            thread.join()

    # history -----------------------------------------------------------------------
    def snapshot(self) -> Any:
        """``evm_snapshot``: an id to :meth:`revert` to (each id is good for one revert)."""
        return self.request("evm_snapshot")

    def revert(self, snapshot: Any) -> None:
        """``evm_revert``: the chain goes back to the snapshot; blocks after it are gone."""
        if self.request("evm_revert", snapshot) is False:
            raise NodeRpcError(f"evm_revert: no snapshot {snapshot}")

    @contextmanager
    def restored(self) -> Iterator[None]:
        """The chain and the mempool as they were, after the block: a test on a module's chain
        leaves nothing behind (the mempool emptied before and after, the chain reverted)."""
        self.clear_mempool()
        snap = self.snapshot()
        try:
            yield
        finally:
            self.revert(snap)
            self.clear_mempool()

    def reorg(self, depth: int) -> None:
        """``anvil_reorg(depth, [])``: the last ``depth`` blocks are replaced by as many new empty
        ones; their transactions are gone (not back in the mempool)."""
        self.request("anvil_reorg", depth, [])

    def clear_mempool(self) -> None:
        raise NotImplementedError

    def pending_count(self) -> int:
        status = self.request("txpool_status")
        return int(status["pending"], 16) + int(status["queued"], 16)

    # lifecycle ------------------------------------------------------------------------
    def stop(self) -> None:
        self._session.close()

    def __enter__(self) -> "LocalNode":
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


class DevNodeNode(LocalNode):
    """The dev node in this process (one-hour block time: blocks come from :meth:`mine`)."""

    kind = "devnode"

    def __init__(self) -> None:
        from devnode import DevNode

        self.node = DevNode(block_time=3600, port=0, accounts=ACCOUNTS)
        self.node.start()
        super().__init__(self.node.url, list(self.node.accounts), self.node.chain.chain_id)

    def clear_mempool(self) -> None:
        chain = self.node.chain

        def clear() -> None:
            for ptx in list(chain.pool):
                chain.pool.remove(ptx.hash)

        chain.run_locked(clear)

    def pending_count(self) -> int:
        return len(self.node.chain.pool)

    def stop(self) -> None:
        self.node.stop()
        super().stop()


class AnvilNode(LocalNode):
    """anvil in a subprocess: manual mining (``--no-mining``), fee-ordered blocks, a random port.

    The process is bound to 127.0.0.1 and ends with :meth:`stop` (or :meth:`kill`); a watchdog
    thread kills it after ``max_lifetime_s`` whatever happens to the test.
    """

    kind = "anvil"

    def __init__(self, *, block_time: float | None = None, extra_args: tuple[str, ...] = (),
                 max_lifetime_s: float = 3600.0) -> None:
        binary = anvil_path()
        args = [binary, "--host", "127.0.0.1", "--port", "0", "--accounts", str(ACCOUNTS), "--order", "fees"]
        args += ["--block-time", str(block_time)] if block_time else ["--no-mining"]
        args += list(extra_args)
        self.proc = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                                     start_new_session=True)
        url = self._wait_listening()
        self._done = threading.Event()
        self._watchdog = threading.Thread(target=self._expire, args=(max_lifetime_s,), name="anvil-watchdog",
                                          daemon=True)
        self._watchdog.start()
        from eth_account import Account

        Account.enable_unaudited_hdwallet_features()
        keys = [Account.from_mnemonic(ANVIL_MNEMONIC, account_path=f"m/44'/60'/0'/0/{i}") for i in range(ACCOUNTS)]
        accounts = [(k.address, "0x" + bytes(k.key).hex()) for k in keys]
        super().__init__(url, accounts, 0)
        self.chain_id = int(self.request("eth_chainId"), 16)
        if [a.lower() for a in self.request("eth_accounts")] != [a.lower() for a, _ in accounts]:
            self.stop()
            raise NodeUnavailable("anvil's dev accounts are not the default mnemonic's")

    def _wait_listening(self) -> str:
        deadline = time.monotonic() + START_TIMEOUT_S
        seen: list[str] = []
        stdout = self.proc.stdout
        while time.monotonic() < deadline and stdout is not None:
            line = stdout.readline()
            if not line:
                break
            seen.append(line)
            match = re.search(r"Listening on (127\.0\.0\.1:\d+)", line)
            if match:
                # Keep draining its output so that a full pipe never blocks it.
                threading.Thread(target=self._drain, name="anvil-stdout", daemon=True).start()
                return f"http://{match.group(1)}"
        self.kill()
        raise NodeUnavailable(f"anvil did not start: {''.join(seen)[-500:]}")

    def _drain(self) -> None:
        stdout = self.proc.stdout
        if stdout is None:
            return
        for _ in stdout:
            pass

    def _expire(self, lifetime_s: float) -> None:
        if not self._done.wait(lifetime_s):
            log.error("anvil at %s outlived %.0fs: killing it", self.url, lifetime_s)
            self.kill()

    def clear_mempool(self) -> None:
        self.request("anvil_dropAllTransactions")

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait(timeout=10)

    def stop(self) -> None:
        if getattr(self, "_done", None) is not None:
            self._done.set()
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.kill()
        super().stop()


def start_node(kind: str, **kwargs: Any) -> LocalNode:
    """A started node of ``kind`` (``"devnode"`` or ``"anvil"``)."""
    if kind == "devnode":
        return DevNodeNode(**kwargs)
    if kind == "anvil":
        return AnvilNode(**kwargs)
    raise ValueError(f"unknown node kind {kind!r}: expected one of {NODE_KINDS}")


class Seeded:
    """A started node with the protocol deployed and traders seeded (:func:`seeded_node`)."""

    def __init__(self, node: LocalNode, w3: Any, dep: Any, owner: str, traders: list[str], keeper_key: str) -> None:
        self.node, self.w3, self.dep = node, w3, dep
        self.owner, self.traders, self.keeper_key = owner, traders, keeper_key


@contextmanager
def seeded_node(kind: str, traders: int, seed: int, keeper_usdc: int = 0) -> Iterator[Seeded]:
    """A node of ``kind`` with the default deployment (by dev account 0), ``traders`` traders seeded
    with ``seed``, and dev account 5 as the keeper, minted ``keeper_usdc`` quote tokens; stopped
    after the block. The module fixtures of the bot's e2e tests start from it."""
    from eth_account import Account
    from web3 import HTTPProvider, Web3

    from protocol_model.chain import Sender
    from protocol_model.deploy import DeployConfig, compile_contracts, deploy_protocol
    from protocol_model.seeding import seed_accounts

    compile_contracts()
    node = start_node(kind)
    try:
        w3 = Web3(HTTPProvider(node.url))
        keeper_key = node.accounts[5][1]
        with node.automine():
            owner = Sender.unlocked(w3, 0)
            dep = deploy_protocol(w3, owner, DeployConfig())
            if keeper_usdc:
                owner.send(dep.quote_contract.functions.mint(Account.from_key(keeper_key).address, keeper_usdc * 10**6))
            seeded = [p.address for p in seed_accounts(w3, dep, owner, traders, seed)]
        yield Seeded(node, w3, dep, owner.address, seeded, keeper_key)
    finally:
        node.stop()
