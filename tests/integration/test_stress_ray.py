"""``xmargin simulate stress`` on Ray in local mode: the same JSON whatever the workers, sweeps,
figures, and bad input. Ray starts once for the module (two CPUs) and the commands reuse it."""

from __future__ import annotations

import json
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from cli import cli

ray = pytest.importorskip("ray")

SMALL = ["--accounts", "80", "--paths", "12", "--steps", "6", "--seed", "4", "--jump-rate", "40"]


@pytest.fixture(scope="module", autouse=True)
def local_ray() -> Iterator[None]:
    from simulator.stress.runner import ensure_ray

    ensure_ray(2, None)
    yield
    ray.shutdown()


def stress(*args: str) -> tuple[int, str, str]:
    result = CliRunner().invoke(cli, ["simulate", "stress", *args])
    return result.exit_code, result.stdout, result.stderr


def without_wall_clock(doc: dict) -> dict:
    return {k: v for k, v in doc.items() if k != "run"}


def test_the_same_seed_gives_the_same_json_with_one_and_two_workers() -> None:
    code1, out1, err1 = stress(*SMALL, "--workers", "1", "--json")
    code2, out2, err2 = stress(*SMALL, "--workers", "2", "--json")
    assert code1 == code2 == 0, err1 + err2
    one, two = json.loads(out1), json.loads(out2)
    assert (one["run"]["workers"], two["run"]["workers"]) == (1, 2)
    assert without_wall_clock(one) == without_wall_clock(two)
    f = one["sets"][0]["figures"]
    assert f["paths"] == 12 and len(one["sets"][0]["bad_debt"]) == 12
    assert int(f["var99"]) >= int(f["var95"]) >= 0 and int(f["cvar99"]) >= int(f["var99"])
    assert f["liquidations_mean"] > 0
    # Another seed is another sample.
    code3, out3, _ = stress(*SMALL[:-3], "5", "--jump-rate", "40", "--workers", "2", "--json")
    assert code3 == 0 and json.loads(out3)["sets"][0]["bad_debt"] != one["sets"][0]["bad_debt"]


def test_the_table_and_the_figures(tmp_path: Path) -> None:
    code, out, err = stress(*SMALL, "--workers", "2", "--plot", str(tmp_path))
    assert code == 0, err
    for needle in ("bad debt, VaR 95%", "bad debt, CVaR 99%", "P(insurance fund depleted)", "socialised to the house",
                   "liquidation volume", "keeper rewards", "accounts left liquidatable per step", "12 paths in"):
        assert needle in out
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bad_debt.png", "liquidatable.png"]
    assert all(p.read_bytes()[:4] == b"\x89PNG" for p in tmp_path.iterdir())


def test_a_sweep_recommends_the_cheapest_set_that_meets_the_target(tmp_path: Path) -> None:
    code, out, err = stress("--accounts", "60", "--paths", "6", "--steps", "4", "--seed", "2", "--keeper", "reference",
                            "--shock", "ETH=-30%", "--shock", "BTC=-30%", "--vol", "0", "--jump-rate", "0",
                            "--sweep", "mmf=0.03:0.07:0.02", "--sweep", "insurance=0:200000:200000",
                            "--target", "p_depleted<50%", "--plot", str(tmp_path), "--json")
    assert code == 0, err
    doc = json.loads(out)
    assert len(doc["sets"]) == 6
    assert [r["params"] for r in doc["sets"]][:2] == [{"mmf": "0.03", "insurance": "0"}, {"mmf": "0.03", "insurance": "200000"}]
    meets = [r for r in doc["sets"] if r["meets"]]
    assert meets, "a 200,000 USD fund covers this shock's bad debt"
    rec = doc["recommended"]
    assert rec is not None and doc["sets"][rec["index"]]["meets"]
    assert all(Decimal_cost(r) >= Decimal_cost(doc["sets"][rec["index"]]) for r in meets)
    assert (tmp_path / "sweep.png").read_bytes()[:4] == b"\x89PNG"


def Decimal_cost(row: dict) -> float:
    # mmf 0.03..0.07 and insurance 0..200000, both dearer when higher
    return (float(row["params"]["mmf"]) - 0.03) / 0.04 + float(row["params"]["insurance"]) / 200000


@pytest.mark.parametrize(("args", "needle"), [
    (["--sweep", "colour=1:2:1"], "invalid --sweep"),
    (["--target", "var42<1%"], "invalid --target"),
    (["--paths", "0"], "--paths must be at least 1"),
    (["--workers", "0"], "--workers must be at least 1"),
    (["--vol", "ETH=80%"], "--vol names some feeds only"),
    (["--shock", "DOGE=-10%"], "unknown price 'DOGE'"),
    (["--corr", "-2"], "--corr"),
    (["--horizon", "0"], "--horizon must be > 0"),
    (["--path-file", "/nonexistent/crash.csv"], "cannot read the path file"),
])
def test_bad_input_is_one_line_and_exit_2(args: list[str], needle: str) -> None:
    code, out, err = stress("--accounts", "5", "--paths", "2", "--steps", "2", *args)
    assert code == 2 and needle in err and len(err.strip().splitlines()) == 1 and "Traceback" not in err


def test_a_path_file_replays_a_crash(tmp_path: Path) -> None:
    crash = tmp_path / "crash.csv"
    crash.write_text("step,ETH,BTC\n1,1900,58000\n2,1500,47000\n3,1450,46000\n")
    code, out, err = stress("--accounts", "80", "--seed", "4", "--path-file", str(crash), "--horizon", "3",
                            "--keeper", "reference", "--json")
    assert code == 0, err
    doc = json.loads(out)
    assert doc["settings"]["paths"] == 1 and doc["settings"]["steps"] == 3
    assert doc["settings"]["price_model"] == {"kind": "file", "paths_in_file": 1}
    f = doc["sets"][0]["figures"]
    assert f["liquidations_mean"] > 0 and f["liquidatable_max_by_step"] == [0, 0, 0]


def test_without_ray_the_command_says_how_to_install_it(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "ray", None)      # import ray -> ImportError
    code, _, err = stress("--accounts", "5", "--paths", "2")
    assert code == 2 and err.strip() == "error: ray is not installed: install the stress extra, e.g. pip install -e '.[stress]'"


def test_a_population_loaded_from_a_chain_is_the_seeded_one(protocol: Any) -> None:
    from cli.common import Context
    from protocol_model.seeding import seed_accounts

    seed_accounts(protocol.w3, protocol.dep, protocol.owner, 12, 6)
    args = ["simulate", "stress", "--paths", "4", "--steps", "4", "--seed", "6", "--jump-rate", "60", "--json"]
    loaded = CliRunner().invoke(cli, args, obj=Context(w3=protocol.w3, deployment=protocol.dep))
    assert loaded.exit_code == 0, loaded.stderr
    seeded = CliRunner().invoke(cli, [*args, "--accounts", "12"])
    on_chain, off_chain = json.loads(loaded.stdout), json.loads(seeded.stdout)
    assert on_chain["settings"]["accounts"] == 12
    assert on_chain["settings"]["population"].startswith("loaded from the chain at block")
    assert on_chain["sets"][0]["figures"]["liquidations_mean"] > 0
    # The model seeds exactly what `xmargin seed` creates on chain: the same figures, path for path.
    assert on_chain["sets"] == off_chain["sets"]


def test_an_unreachable_cluster_is_one_line_and_exit_3() -> None:
    import socket

    with socket.socket() as s:          # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    code, _, err = stress("--accounts", "5", "--paths", "2", "--ray-address", f"127.0.0.1:{port}")
    assert code == 3 and err.startswith(f"error: cannot reach the Ray cluster at 127.0.0.1:{port}")
    assert len(err.strip().splitlines()) == 1
    code, _, err = stress("--accounts", "5", "--paths", "2", "--ray-address", "not an address")
    assert code == 2 and "invalid --ray-address" in err


def test_the_node_in_the_environment_does_not_replace_the_seeded_population(monkeypatch: pytest.MonkeyPatch) -> None:
    import socket

    with socket.socket() as s:          # a node nobody runs: loading from it would fail with exit 3
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    monkeypatch.setenv("XMARGIN_RPC_URL", f"http://127.0.0.1:{port}")
    code, out, err = stress("--accounts", "20", "--paths", "2", "--steps", "3", "--seed", "2", "--json")
    assert code == 0, err
    assert json.loads(out)["settings"]["population"] == "seeded, seed 2"
    # Typed on the command line, the same node is where the population comes from.
    code, _, err = stress("--rpc", f"http://127.0.0.1:{port}", "--paths", "2", "--steps", "3", "--json")
    assert code == 3 and "cannot reach" in err
