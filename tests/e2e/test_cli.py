"""The xmargin CLI through click's test runner, against `xmargin node` running in a separate process,
over real HTTP: deploy, seed, price, health, accounts, and every bad input."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from click.testing import CliRunner

from cli import cli


@pytest.fixture(scope="module")
def node_url() -> Iterator[str]:
    proc = subprocess.Popen(
        [sys.executable, "-m", "cli", "node", "--port", "0", "--accounts", "3"],
        stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
    )
    try:
        assert proc.stdout is not None
        banner = []
        for line in proc.stdout:  # the banner: chain id, accounts, block time, then the URL
            banner.append(line.strip())
            if line.startswith("listening on "):
                break
        assert banner and banner[-1].startswith("listening on "), banner
        assert sum(1 for b in banner if b.startswith("(")) == 3  # three funded accounts listed
        yield banner[-1].removeprefix("listening on ")
    finally:
        proc.terminate()
        proc.wait(timeout=30)


@pytest.fixture(scope="module")
def deployed(node_url: str, tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("dep") / "deployment.json"
    r = CliRunner().invoke(cli, ["deploy", "--rpc", node_url, "--out", str(path), "--json"])
    assert r.exit_code == 0, r.output
    return path


def run(*args: str) -> tuple[int, str, str]:
    r = CliRunner().invoke(cli, list(args))
    return r.exit_code, r.stdout, r.stderr


def test_deploy_to_an_in_process_chain(tmp_path: Path) -> None:
    code, out, _ = run("deploy", "--rpc", "memory", "--out", "/dev/null/x.json", "--json")
    assert code == 2  # the file cannot be written: bad input, one line
    r = CliRunner().invoke(cli, ["deploy", "--rpc", "memory", "--json", "--out", str(tmp_path / "dep.json")])
    assert r.exit_code == 0, r.output
    data = json.loads(r.stdout)
    assert set(data["markets"]) == {"ETH-PERP", "BTC-PERP"} and set(data["collaterals"]) == {"WETH", "WBTC"}
    assert (tmp_path / "abi" / "Lens.json").exists()


def test_deploy_seed_price_health_accounts_over_http(node_url: str, deployed: Path) -> None:
    dep = ["--rpc", node_url, "--deployment", str(deployed)]
    data = json.loads(deployed.read_text())
    assert data["markets"]["ETH-PERP"]["id"] == 0 and (deployed.parent / "abi" / "MarginEngine.json").exists()

    code, out, err = run("seed", *dep, "--accounts", "4", "--seed", "3", "--json")
    assert code == 0, err
    traders = [a["address"] for a in json.loads(out)["accounts"]]
    assert len(traders) == 4

    code, out, err = run("price", "shock", *dep, "ETH", "-20%", "--json")
    assert code == 0, err
    assert json.loads(out)["new"] == "1600"

    code, out, err = run("health", traders[0], *dep, "--json")
    assert code == 0, err
    report = json.loads(out)
    assert report["address"] == traders[0]
    assert report["status"] in {"healthy", "at risk", "liquidatable", "bankrupt"}
    assert int(report["equity"]) == int(report["cash"]) + sum(int(c["value"]) for c in report["collaterals"]) + sum(
        int(p["upnl"]) for p in report["positions"])

    code, out, err = run("accounts", *dep, "--json", "--sort", "health")
    assert code == 0, err
    rows = json.loads(out)["accounts"]
    assert {r["address"] for r in rows} == set(traders)
    assert [int(r["maint_health"]) for r in rows] == sorted(int(r["maint_health"]) for r in rows)

    code, out, err = run("price", "set", *dep, "ETH", "2000")
    assert code == 0 and "1600 -> 2000" in out

    code, out, err = run("price", "show", *dep, "--json")
    assert code == 0, err
    shown = {r["asset"]: r for r in json.loads(out)}
    assert set(shown) == {"ETH", "BTC"} and shown["ETH"]["price_wad"] == str(2000 * 10**18)
    code, out, err = run("price", "show", *dep)
    assert code == 0 and "2,000.00" in out and "ETH" in out


@pytest.mark.parametrize("args, needle", [
    (["health", "0x123"], "invalid address"),
    (["price", "set", "DOGE", "1"], "unknown asset"),
    (["price", "set", "ETH", "abc"], "invalid price"),
    (["price", "shock", "ETH", "-150%"], "cannot fall by 100%"),
])
def test_bad_input_is_one_line_and_exit_2(node_url: str, deployed: Path, args: list[str], needle: str) -> None:
    code, out, err = run(*args, "--rpc", node_url, "--deployment", str(deployed))
    assert code == 2
    assert err.startswith("error: ") and needle in err and err.count("\n") == 1 and "Traceback" not in err + out


def test_unreachable_rpc_is_exit_3(deployed: Path) -> None:
    code, _, err = run("health", "0x" + "11" * 20, "--rpc", "http://127.0.0.1:1", "--deployment", str(deployed))
    assert code == 3 and err.startswith("error: cannot reach") and err.count("\n") == 1


def test_missing_malformed_and_foreign_deployment_files(node_url: str, deployed: Path, tmp_path: Path) -> None:
    code, _, err = run("accounts", "--rpc", node_url, "--deployment", str(tmp_path / "none.json"))
    assert code == 2 and "not found" in err and "xmargin deploy" in err
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    code, _, err = run("accounts", "--rpc", node_url, "--deployment", str(bad))
    assert code == 2 and "not valid JSON" in err
    foreign = tmp_path / "foreign.json"
    foreign.write_text(json.dumps(json.loads(deployed.read_text()) | {"chain_id": 1}))
    code, _, err = run("accounts", "--rpc", node_url, "--deployment", str(foreign))
    assert code == 2 and "chain id 1" in err


def test_node_json_is_one_document_on_one_line_with_keystores(tmp_path: Path) -> None:
    keys = tmp_path / "dev-keys"
    proc = subprocess.Popen([sys.executable, "-m", "cli", "node", "--port", "0", "--accounts", "2", "--json",
                             "--export-keys", str(keys)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None
        doc = json.loads(proc.stdout.readline())
    finally:
        proc.terminate()
        proc.wait(timeout=30)
    assert len(doc["accounts"]) == 2 and doc["url"].startswith("http://127.0.0.1:") and doc["block_time"] is None
    assert doc["keystores"] == [str(keys / "account-0.json"), str(keys / "account-1.json")]
    assert doc["password_file"] == str(keys / "password")
    assert "private_key" not in json.dumps(doc)
