"""Every CLI command that reads a deployment file checks that its engine has code on the node
(``cli.common.require_engine``): a dev node restarted since ``xmargin deploy`` has the same chain
id and an empty chain, and used to fail with "internal error" (``BadFunctionCallOutput``)."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest
from click.testing import CliRunner

from cli import cli
from devnode import DevNode

TRADER = "0x7E5F4552091A69125d5DfCb7b8C2659029395Bdf"


@pytest.fixture(scope="module")
def restarted(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, Path]]:
    """A deployment file written against one dev node, and the URL of another, fresh one (the
    same node restarted: same chain id, nothing deployed)."""
    path = tmp_path_factory.mktemp("dep") / "deployment.json"
    with DevNode(port=0) as first:
        r = CliRunner().invoke(cli, ["deploy", "--rpc", first.url, "--out", str(path), "--json"])
        assert r.exit_code == 0, r.output
    with DevNode(port=0) as second:
        yield second.url, path


@pytest.mark.parametrize("args", [
    ["price", "show"],
    ["price", "set", "ETH", "1800"],
    ["price", "shock", "ETH", "-10%"],
    ["health", TRADER],
    ["accounts"],
    ["seed", "--accounts", "2"],
    ["bot", "run", "--dry-run", "--max-blocks", "1"],
])
def test_a_deployment_without_engine_code_is_one_line_and_exit_2(
    restarted: tuple[str, Path], tmp_path: Path, args: list[str]
) -> None:
    url, path = restarted
    extra = ["--db", str(tmp_path / "bot.sqlite3")] if args[0] == "bot" else []
    r = CliRunner().invoke(cli, [*args, "--rpc", url, "--deployment", str(path), *extra])
    assert r.exit_code == 2, r.output
    lines = r.stderr.splitlines()
    assert len(lines) == 1, r.stderr
    engine = json.loads(path.read_text())["engine"]
    assert lines[0] == (f"error: no engine at {engine} on this chain: was the node restarted? "
                        "redeploy with `xmargin deploy --force`")
    assert not (tmp_path / "bot.sqlite3").exists()
