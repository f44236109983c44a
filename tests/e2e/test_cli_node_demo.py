"""`xmargin node` and `xmargin demo` through click's test runner.

The node runs inside the test process (the runner blocks in it as a user's terminal would) while a
second thread talks to it over real HTTP, then presses Ctrl-C. The demo runs end to end with a
small number of traders and its JSON summary is checked for what the command promises.
"""

from __future__ import annotations

import _thread
import json
import os
import signal
import socket
import stat
import sys
import threading
import time
from pathlib import Path

import pytest
from click.testing import CliRunner
from web3 import Web3

from cli import cli


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _main_thread_in(function: str) -> bool:
    frame = sys._current_frames().get(threading.main_thread().ident or 0)
    while frame is not None:
        if frame.f_code.co_name == function:
            return True
        frame = frame.f_back
    return False


def test_node_serves_json_rpc_until_ctrl_c_and_never_prints_keys(tmp_path: Path) -> None:
    assert threading.current_thread() is threading.main_thread(), "Ctrl-C is delivered to the main thread"
    port = _free_port()
    url = f"http://127.0.0.1:{port}"
    keys = tmp_path / "dev-keys"
    seen: dict[str, object] = {}

    def client() -> None:
        try:
            w3 = Web3(Web3.HTTPProvider(url, request_kwargs={"timeout": 10}))
            deadline = time.monotonic() + 60
            while True:
                try:
                    seen["chain_id"] = w3.eth.chain_id
                    break
                except Exception:  # noqa: BLE001 - not listening yet
                    if time.monotonic() > deadline:
                        raise
                    time.sleep(0.1)
            accounts = w3.eth.accounts
            seen["accounts"] = accounts
            tx = w3.eth.send_transaction({"from": accounts[0], "to": accounts[1], "value": 12345})
            seen["status"] = w3.eth.wait_for_transaction_receipt(tx, timeout=30).status
            seen["balance"] = w3.eth.get_balance(accounts[1])
            seen["mined"] = w3.provider.make_request("evm_mine", [])["result"]
            seen["block"] = w3.eth.block_number
            # Ctrl-C only once the command is waiting in its serve loop, as a user would.
            while not _main_thread_in("serve_forever") and time.monotonic() < deadline:
                time.sleep(0.05)
        except BaseException as exc:  # noqa: BLE001 - reported by the test below
            seen["error"] = exc
        finally:
            _thread.interrupt_main()
            # Should the Ctrl-C be lost, SIGTERM (which the node also stops on) ends the wait: the
            # test then fails on `seen["lost_ctrl_c"]` instead of hanging the run.
            stop_at = time.monotonic() + 20
            while _main_thread_in("serve_forever") and time.monotonic() < stop_at:
                time.sleep(0.1)
            if _main_thread_in("serve_forever"):
                seen["lost_ctrl_c"] = True
                os.kill(os.getpid(), signal.SIGTERM)

    # Ctrl-C as in a terminal: whatever handler an earlier test in this process left behind.
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        thread = threading.Thread(target=client, daemon=True)
        thread.start()
        result = CliRunner().invoke(cli, ["node", "--port", str(port), "--accounts", "2", "--export-keys", str(keys)])
        thread.join(timeout=30)
    finally:
        signal.signal(signal.SIGINT, previous)

    assert "error" not in seen, seen.get("error")
    assert "lost_ctrl_c" not in seen, "the node did not stop on Ctrl-C"
    assert result.exit_code == 0, result.output
    assert f"listening on {url}" in result.output
    assert f"chain id {seen['chain_id']}" in result.output
    accounts = seen["accounts"]
    assert isinstance(accounts, list) and len(accounts) == 2
    for i, address in enumerate(accounts):
        assert f"({i}) {address}" in result.output
    assert seen["status"] == 1 and seen["block"] == 2  # the transfer's block, then evm_mine's
    assert seen["balance"] == 10**24 + 12345
    # Keys go to encrypted keystores that the bot reads (owner-only files), never to the terminal.
    from bot.keys import load_account

    password = keys / "password"
    assert stat.S_IMODE(os.stat(password).st_mode) == 0o600
    assert password.read_text().strip()[:8] not in result.output
    for i, address in enumerate(accounts):
        keystore = keys / f"account-{i}.json"
        assert stat.S_IMODE(os.stat(keystore).st_mode) == 0o600
        account = load_account(keystore, password)
        assert account.address == address
        assert account.key.hex().removeprefix("0x")[:16] not in result.output
    # Nothing listens on the port any more: the node stopped cleanly. (SO_REUSEADDR lets the bind
    # pass over connections in TIME_WAIT; it still fails while a socket listens there.)
    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        s.bind(("127.0.0.1", port))
        s.listen()


def test_node_on_a_busy_port_is_one_line_exit_2() -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        r = CliRunner().invoke(cli, ["node", "--port", str(port)])
    assert r.exit_code == 2
    assert r.stderr.startswith(f"error: cannot listen on 127.0.0.1:{port}") and r.stderr.count("\n") == 1
    assert "Traceback" not in r.output


@pytest.mark.parametrize("shock, needle", [("DOGE=-10%", "unknown asset"), ("ETH", "invalid shock"), ("ETH=x", "invalid")])
def test_demo_bad_shock_is_one_line_exit_2(shock: str, needle: str) -> None:
    r = CliRunner().invoke(cli, ["demo", "--accounts", "10", "--shock", shock])
    assert r.exit_code == 2, r.output
    assert r.stderr.startswith("error: ") and needle in r.stderr and r.stderr.count("\n") == 1


def test_demo_liquidates_exactly_the_predicted_accounts_and_settles_all_bad_debt() -> None:
    r = CliRunner().invoke(cli, ["demo", "--accounts", "40", "--seed", "3", "--json"])
    assert r.exit_code == 0, r.output
    s = json.loads(r.stdout)
    assert s["accounts"] == 40 and s["healthy_accounts_touched"] == 0
    liquidated = {e["account"] for e in s["liquidations"]}
    predicted = {a["address"] for a in s["prediction"]["accounts"] if a["liquidations"] or a["collateral_liquidations"]}
    assert liquidated and liquidated <= predicted
    # Who liquidated: both keepers are named, and the per-keeper counts add up to the events.
    by = [e["liquidator"] for e in s["liquidations"]]
    assert set(by) <= {"keeper-A", "keeper-B"}
    assert sum(k["liquidations"] for k in s["keepers"]) == len(s["liquidations"])
    assert sum(k["collateral_liquidations"] for k in s["keepers"]) == s["collateral_liquidations"]
    # Bad debt: every bankrupt account settled by the backstop keeper, none left.
    bad = s["bad_debt"]
    assert int(bad["before"]) == 0 and int(bad["left_after"]) == 0
    assert int(bad["settled"]) == sum(int(x["deficit"]) for x in s["settlements"]) > 0
    assert len(s["settlements"]) == s["prediction"]["totals"]["settlements"]
    covered = sum(int(x["covered"]) for x in s["settlements"])
    assert int(s["socialised"]) == int(bad["settled"]) - covered
    assert int(s["insurance_fund"]["after"]) < int(s["insurance_fund"]["before"])
    # Keepers were paid for bankrupt accounts: the fund paid what the accounts could not.
    pay = s["keeper_pay_for_bankrupt"]
    bankrupt_closes = [e for e in s["liquidations"] if int(e["keeper_reward"]) * 10**12 > int(e["charged"])]
    assert pay["liquidations"] == len(bankrupt_closes) > 0
    assert int(pay["rewards_usd_wad"]) == sum(int(e["keeper_reward"]) for e in bankrupt_closes) * 10**12
    assert 0 < int(pay["paid_by_fund_usd_wad"]) <= int(pay["rewards_usd_wad"])
    b = s["blocks"]
    assert b["crash"] < b["first_liquidation"] <= b["crash"] + 2  # liquidated within two blocks of the crash


def test_demo_tells_the_story_to_people() -> None:
    r = CliRunner().invoke(cli, ["demo", "--accounts", "12", "--seed", "5", "--shock", "ETH=-30%"])
    assert r.exit_code == 0, r.output
    out = r.stdout
    for heading in ("1. an in-process chain", "2. 12 traders", "3. two keepers start", "4. the oracle publishes the crash",
                    "5. what happened"):
        assert heading in out
    assert "the model predicts for ETH=-30%" in out and "keeper-A" in out and "keeper-B" in out
    assert "insurance fund (USD)" in out and "bad debt left (negative equity)" in out
    assert "keepers paid by the insurance fund for bankrupt accounts:" in out
    assert "Traceback" not in r.output
