"""A matrix of bad inputs over every command: each is refused with exactly one line on stderr
(``error: ...``), the documented exit code (2 bad input, 3 node unreachable, 1 operation failed),
no traceback, no private key in any output, and -- where a chain is involved -- before any
transaction (the block number does not move).

Most cases fail before any chain is started; those that need one share one dev node (started
only if such a case runs) with one deployment.
"""

from __future__ import annotations

import socket
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from click.testing import CliRunner
from web3 import Web3

from cli import cli
from devnode import DevNode

UNREACHABLE = "http://127.0.0.1:1"
TRADER = "0x58ddE80Afa3411BdfF9De916d0D0a5F8cDd74aDC"
BAD_CHECKSUM = "0x58DDe80afa3411bdff9de916d0d0a5f8cdd74adc"
UNFUNDED_KEY = "0x" + "ab" * 32


@dataclass
class Node:
    url: str
    deployment: Path
    keys: list[str]
    w3: Web3


@pytest.fixture(scope="module")
def node(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Node]:
    path = tmp_path_factory.mktemp("bad-inputs") / "deployment.json"
    with DevNode(port=0, accounts=3) as dev:
        r = CliRunner().invoke(cli, ["deploy", "--rpc", dev.url, "--out", str(path), "--json"])
        assert r.exit_code == 0, r.output
        yield Node(dev.url, path, [k for _a, k in dev.accounts], Web3(Web3.HTTPProvider(dev.url)))


@pytest.fixture(scope="module")
def busy_port() -> Iterator[int]:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        yield int(s.getsockname()[1])


# (case id, arguments, environment, exit code, a phrase of the message). In arguments, {rpc} and
# {dep} are the shared node and its deployment (a case naming them starts the node), {tmp} a
# fresh folder, {busy} a port something listens on, {existing} a file that exists.
CASES: list[tuple[str, list[str], dict[str, str], int, str]] = [
    # usage errors, whatever the command
    ("unknown-command", ["frobnicate"], {}, 2, "No such command"),
    ("unknown-option", ["accounts", "--colour"], {}, 2, "No such option"),
    ("old-env-name", ["accounts"], {"XMARGIN_RPC": "http://127.0.0.1:8545"}, 2, "rename it to XMARGIN_RPC_URL"),
    # node
    ("node-block-time-nan", ["node", "--port", "0", "--block-time", "nan"], {}, 2, "--block-time"),
    ("node-block-time-inf", ["node", "--port", "0", "--block-time", "inf"], {}, 2, "--block-time"),
    ("node-block-time-zero", ["node", "--port", "0", "--block-time", "0"], {}, 2, "--block-time"),
    ("node-block-time-huge", ["node", "--port", "0", "--block-time", "1e9"], {}, 2, "--block-time"),
    ("node-port", ["node", "--port", "70000"], {}, 2, "--port"),
    ("node-busy-port", ["node", "--port", "{busy}"], {}, 2, "cannot listen"),
    ("node-keys-missing-folder", ["node", "--port", "0", "--export-keys", "/nonexistent/dev-keys"], {}, 2,
     "does not exist"),
    ("node-keys-into-a-file", ["node", "--port", "0", "--export-keys", "{existing}"], {}, 2, "is a file"),
    # deploy
    ("deploy-price-age-huge", ["deploy", "--out", "{tmp}/d.json", "--max-price-age", "1" + "0" * 80],
     {}, 2, "--max-price-age"),
    ("deploy-price-age-zero", ["deploy", "--out", "{tmp}/d.json", "--max-price-age", "0"], {}, 2, "--max-price-age"),
    ("deploy-overwrite", ["deploy", "--rpc", UNREACHABLE, "--out", "{existing}"], {}, 2, "--force"),
    ("deploy-missing-folder", ["deploy", "--rpc", UNREACHABLE, "--out", "/nonexistent/dir/d.json"], {}, 2,
     "does not exist"),
    ("deploy-unfunded-key", ["deploy", "--rpc", "{rpc}", "--out", "{tmp}/d.json"],
     {"XMARGIN_PRIVATE_KEY": UNFUNDED_KEY}, 2, "no ETH to pay gas"),
    ("deploy-bad-key", ["deploy", "--rpc", "{rpc}", "--out", "{tmp}/d.json"], {"XMARGIN_PRIVATE_KEY": "0x1234"}, 2,
     "XMARGIN_PRIVATE_KEY"),
    ("deploy-unreachable", ["deploy", "--rpc", UNREACHABLE, "--out", "{tmp}/d.json"], {}, 3, "cannot reach"),
    # seed
    ("seed-zero", ["seed", "--accounts", "0"], {}, 2, "--accounts"),
    ("seed-missing-deployment", ["seed", "--rpc", "{rpc}", "--deployment", "{tmp}/none.json"], {}, 2, "not found"),
    ("seed-unreachable", ["seed", "--rpc", UNREACHABLE, "--deployment", "{dep}"], {}, 3, "cannot reach"),
    # health and accounts
    ("health-short-address", ["health", "0x123", "--rpc", "{rpc}", "--deployment", "{dep}"], {}, 2, "invalid address"),
    ("health-bad-checksum", ["health", BAD_CHECKSUM, "--rpc", "{rpc}", "--deployment", "{dep}"], {}, 2, "checksum"),
    ("health-unreachable", ["health", TRADER, "--rpc", UNREACHABLE, "--deployment", "{dep}"], {}, 3, "cannot reach"),
    ("accounts-limit", ["accounts", "--limit", "0"], {}, 2, "--limit"),
    ("accounts-sort", ["accounts", "--sort", "luck"], {}, 2, "--sort"),
    # price
    ("price-unknown-asset", ["price", "set", "DOGE", "1", "--rpc", "{rpc}", "--deployment", "{dep}"], {}, 2,
     "unknown asset"),
    ("price-not-a-number", ["price", "set", "ETH", "abc", "--rpc", "{rpc}", "--deployment", "{dep}"], {}, 2,
     "invalid price"),
    ("price-zero", ["price", "set", "ETH", "0", "--rpc", "{rpc}", "--deployment", "{dep}"], {}, 2, "above zero"),
    ("price-shock-too-far", ["price", "shock", "ETH", "-150%", "--rpc", "{rpc}", "--deployment", "{dep}"], {}, 2,
     "100%"),
    # bot
    ("bot-profit-share-percent-number", ["bot", "run", "--profit-share", "10", "--dry-run"], {}, 2, "--profit-share"),
    ("bot-min-profit", ["bot", "run", "--min-profit", "-1", "--dry-run"], {}, 2, "--min-profit"),
    ("bot-no-key", ["bot", "run", "--rpc", "{rpc}", "--deployment", "{dep}", "--db", "{tmp}/b.sqlite3"], {}, 2,
     "no signing key"),
    ("bot-metrics-port-busy", ["bot", "run", "--rpc", "{rpc}", "--deployment", "{dep}", "--db", "{tmp}/b.sqlite3",
                               "--metrics-port", "{busy}"], {"XMARGIN_PRIVATE_KEY": "{key1}"}, 2, "--metrics-port"),
    ("bot-unfunded-key", ["bot", "run", "--rpc", "{rpc}", "--deployment", "{dep}", "--db", "{tmp}/b.sqlite3"],
     {"XMARGIN_PRIVATE_KEY": UNFUNDED_KEY}, 2, "no ETH"),
    ("bot-db-is-a-folder", ["bot", "run", "--rpc", "{rpc}", "--deployment", "{dep}", "--db", "{tmp}", "--dry-run"],
     {}, 2, "--db"),
    ("bot-unreachable", ["bot", "run", "--rpc", UNREACHABLE, "--deployment", "{dep}", "--dry-run"], {}, 3, "cannot reach"),
    ("bot-status-no-db", ["bot", "status", "--db", "{tmp}/none.sqlite3"], {}, 2, "no bot database"),
    ("bot-status-not-a-db", ["bot", "status", "--db", "{existing}"], {}, 2, "not a bot database"),
    # demo
    ("demo-too-few-accounts", ["demo", "--accounts", "5"], {}, 2, "--accounts"),
    ("demo-unknown-asset", ["demo", "--accounts", "10", "--shock", "DOGE=-10%"], {}, 2, "unknown asset"),
    ("demo-shock-twice", ["demo", "--accounts", "10", "--shock", "ETH=-10%,ETH=-20%"], {}, 2, "given twice"),
    # simulate
    ("competition-bots-huge", ["simulate", "competition", "--bots", "1000000000"], {}, 2, "--bots"),
    ("competition-blocks-huge", ["simulate", "competition", "--blocks", "100000000"], {}, 2, "--blocks"),
    ("competition-accounts-zero", ["simulate", "competition", "--accounts", "0"], {}, 2, "--accounts"),
    ("competition-shock-no-change", ["simulate", "competition", "--shock", "ETH"], {}, 2, "invalid shock"),
    ("competition-strategy", ["simulate", "competition", "--strategy", "martingale"], {}, 2, "martingale"),
    ("competition-plot-missing-folder", ["simulate", "competition", "--plot", "/nonexistent/dir/x.png"], {}, 2,
     "does not exist"),
    ("competition-plot-is-a-folder", ["simulate", "competition", "--plot", "{tmp}"], {}, 2, "--plot"),
    ("stress-paths-zero", ["simulate", "stress", "--paths", "0"], {}, 2, "--paths"),
    ("stress-plot-missing-folder", ["simulate", "stress", "--plot", "/nonexistent/dir"], {}, 2, "does not exist"),
    ("stress-horizon", ["simulate", "stress", "--horizon", "0"], {}, 2, "--horizon"),
]


@pytest.mark.parametrize("args, env, code, needle", [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_a_bad_input_is_one_line_with_its_exit_code(request: pytest.FixtureRequest, tmp_path: Path, args: list[str],
                                                     env: dict[str, str], code: int, needle: str) -> None:
    existing = tmp_path / "existing.json"
    existing.write_text("{}")
    values = {"tmp": str(tmp_path), "existing": str(existing)}
    uses_node = any("{rpc}" in a or "{dep}" in a for a in args) or any("{key1}" in v for v in env.values())
    chain = request.getfixturevalue("node") if uses_node else None
    if chain is not None:
        values |= {"rpc": chain.url, "dep": str(chain.deployment), "key1": chain.keys[1]}
    if any("{busy}" in a for a in args):
        values["busy"] = str(request.getfixturevalue("busy_port"))
    argv = [a.format(**values) for a in args]
    environ = {"XMARGIN_RPC": None, "XMARGIN_RPC_URL": None, "XMARGIN_DEPLOYMENT_PATH": None,
               "XMARGIN_PRIVATE_KEY": None} | {k: v.format(**values) for k, v in env.items()}
    block = chain.w3.eth.block_number if chain is not None else None

    r = CliRunner().invoke(cli, argv, env=environ)

    assert r.exit_code == code, (r.exit_code, r.stdout, r.stderr)
    lines = r.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), r.stderr
    assert needle in lines[0], lines[0]
    assert "Traceback" not in r.output and "internal error" not in r.output
    secrets = [UNFUNDED_KEY, *(chain.keys if chain is not None else [])]
    for key in secrets:
        assert key.removeprefix("0x").lower() not in r.output.lower()
    if chain is not None:
        assert chain.w3.eth.block_number == block, "a transaction was sent before the input was refused"
    assert not Path("/nonexistent").exists()
