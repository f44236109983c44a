"""Shared fixtures: one in-process chain per session, the protocol deployed once per decimals case,
actors named by role, and a chain snapshot around every test.

Deployments happen in a session fixture *before* the first per-test snapshot, so reverting to a
snapshot never removes them.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Any, Iterator

import pytest
from hypothesis import HealthCheck, settings
from web3 import Web3

from devnode import gas
from protocol_model.chain import Sender, memory_chain, tester_of
from nodes import NODE_KINDS, require_anvil
from protocol_model.deploy import (
    WAD,
    CollateralSpec,
    DeployConfig,
    Deployment,
    MarketSpec,
    compile_contracts,
    deploy_protocol,
)

# ---------------------------------------------------------------- gas estimates
# Every py-evm chain of the run (the in-process chains here, and those of the CLI processes the
# tests start) estimates gas with py-evm's answers in about a third of the executions: the estimate
# behind each Sender.send was most of a contract test's time (tests/integration/test_gas_estimator.py
# holds the two estimators equal). The dev node uses it anyway.
gas.install()

# ---------------------------------------------------------------- Hypothesis profiles
# Chosen with XMARGIN_HYPOTHESIS_PROFILE; every test takes its numbers from the loaded profile.
# * "ci" (default): quick, for the default run and for development;
# * "long": the long fuzz that .ci/run runs after the default run (about 25 minutes on 2 cores);
# * "nightly": longer still, for a nightly job or a release.
# Chain-backed examples are slow by nature and use function-scoped fixtures on purpose (each
# example reverts the chain to a snapshot), so those two health checks are off; the others stay on.
_SUPPRESSED = [HealthCheck.too_slow, HealthCheck.function_scoped_fixture, HealthCheck.data_too_large]
settings.register_profile("ci", max_examples=25, stateful_step_count=20, deadline=None, suppress_health_check=_SUPPRESSED)
settings.register_profile("long", max_examples=220, stateful_step_count=30, deadline=None, suppress_health_check=_SUPPRESSED)
settings.register_profile("nightly", max_examples=1000, stateful_step_count=60, deadline=None, suppress_health_check=_SUPPRESSED)
settings.load_profile(os.environ.get("XMARGIN_HYPOTHESIS_PROFILE", "ci"))

MAX_UINT = 2**256 - 1

# Decimals cases: each of 6, 8 and 18 appears for the quote token and for a collateral token.
DECIMALS_CASES: dict[str, tuple[int, int, int]] = {
    "q6": (6, 18, 8),    # (quote, WETH, WBTC): the default listing
    "q8": (8, 6, 18),
    "q18": (18, 8, 6),
}


def config_for(case: str) -> DeployConfig:
    q, weth, wbtc = DECIMALS_CASES[case]
    base = DeployConfig()
    cols = (
        CollateralSpec("WETH", "ETH", weth, 80 * 10**16, 85 * 10**16, 5 * 10**16),
        CollateralSpec("WBTC", "BTC", wbtc, 75 * 10**16, 80 * 10**16, 5 * 10**16),
    )
    return DeployConfig(quote_decimals=q, collaterals=cols, markets=base.markets, feeds=base.feeds)


# ---------------------------------------------------------------- harness


@dataclass
class Protocol:
    """A deployed protocol with handles and small helpers for tests."""

    w3: Web3
    dep: Deployment
    owner: Sender
    case: str
    engine: Any = field(init=False)
    lens: Any = field(init=False)
    quote: Any = field(init=False)

    def __post_init__(self) -> None:
        self.engine = self.dep.engine_contract
        self.lens = self.dep.lens_contract
        self.quote = self.dep.quote_contract

    # tokens --------------------------------------------------------------
    def token(self, symbol: str) -> Any:
        if symbol.upper() == self.dep.quote_symbol:
            return self.quote
        return self.dep.token_contract(symbol)

    def decimals(self, symbol: str) -> int:
        if symbol.upper() == self.dep.quote_symbol:
            return self.dep.quote_decimals
        return int(self.dep.collateral(symbol)["decimals"])

    def units(self, symbol: str, whole: int | float | str) -> int:
        """Whole tokens to native units (exact for ints and decimal strings)."""
        from decimal import Decimal

        return int(Decimal(str(whole)) * 10 ** self.decimals(symbol))

    def fund(self, actor: Sender, symbol: str, amount: int) -> None:
        """Mint ``amount`` native units to ``actor`` and approve the engine for everything."""
        tok = self.token(symbol)
        self.owner.send(tok.functions.mint(actor.address, amount))
        actor.send(tok.functions.approve(self.engine.address, MAX_UINT))

    def deposit(self, actor: Sender, symbol: str, amount: int) -> Any:
        self.fund(actor, symbol, amount)
        return actor.send(self.engine.functions.deposit(self.token(symbol).address, amount))

    # prices --------------------------------------------------------------
    def feed(self, asset: str) -> Any:
        return self.dep.feed_contract(asset)

    def set_price(self, asset: str, usd: int | float | str) -> Any:
        """Set a feed's price in whole USD (decimal strings are exact)."""
        from decimal import Decimal

        feed = self.feed(asset)
        answer = int(Decimal(str(usd)) * 10 ** feed.functions.decimals().call())
        return self.owner.send(feed.functions.set_answer(answer))

    def price(self, asset: str) -> int:
        """The feed's price normalised to WAD."""
        feed = self.feed(asset)
        return feed.functions.latestRoundData().call()[1] * 10 ** (18 - feed.functions.decimals().call())

    # trading -------------------------------------------------------------
    def trade(self, actor: Sender, market: str, size_delta: int, limit: int | None = None) -> Any:
        if limit is None:
            limit = MAX_UINT if size_delta > 0 else 0
        return actor.send(self.engine.functions.trade(self.dep.market_id(market), size_delta, limit))

    def health(self, account: str) -> tuple[int, int, int]:
        return tuple(self.engine.functions.health(account).call())  # type: ignore[return-value]

    def position(self, account: str, market: str) -> tuple[int, int]:
        return tuple(self.engine.functions.position(account, self.dep.market_id(market)).call())  # type: ignore[return-value]

    def cash(self, account: str) -> int:
        return int(self.engine.functions.cash(account).call())

    def events(self, receipt: Any, name: str) -> list[Any]:
        return list(getattr(self.engine.events, name)().process_receipt(receipt))


@dataclass
class Actors:
    owner: Sender
    trader: Sender
    trader2: Sender
    liquidator: Sender
    rival: Sender
    outsider: Sender


# ---------------------------------------------------------------- fixtures


# ---------------------------------------------------------------- distribution over the workers
# pyproject runs ``-n 2 --dist loadscope --no-loadscope-reorder``, with the scopes drawn here: a
# scope goes whole to one worker (its module fixtures are built once) and the scopes are handed
# out in the order of the items. A scope is a module, or a module's tests on one node kind where
# it runs on the dev node and on anvil (two scopes that the workers can share). (xdist's own
# ``loadgroup`` marks do not reach its scheduler under pytest 9, which no longer reads the node id
# xdist rewrites.) The scopes go out longest first, so that a long one never starts last while the
# other worker idles: SCOPE_SECONDS are rough seconds per scope from ``pytest --durations=0`` on
# 2 busy cores (only the order depends on them; a scope not listed counts one second per test).
SCOPE_SECONDS: dict[str, float] = {
    "tests/fuzz/test_engine_invariants.py": 500,
    "tests/e2e/test_bot_e2e.py:devnode": 340,
    "tests/e2e/test_bot_e2e.py:anvil": 180,
    "tests/integration/test_model_logs.py": 110,
    "tests/e2e/test_cli_node_demo.py": 90,
    "tests/e2e/test_simulation.py": 75,
    "tests/e2e/test_wheel.py": 65,
    "tests/integration/test_engine_collateral_liquidation.py": 60,
    "tests/integration/test_model_loader.py": 55,
    "tests/e2e/test_bot_solvency.py:devnode": 55,
    "tests/fuzz/test_differential.py": 55,
    "tests/integration/test_lens.py": 40,
    "tests/integration/test_engine_accounts.py": 35,
    "tests/integration/test_stress_ray.py": 32,
    "tests/integration/test_seeding.py": 32,
    "tests/integration/test_gas_snapshot.py": 30,
    "tests/integration/test_engine_liquidate.py": 28,
    "tests/e2e/test_bot_backstop.py:devnode": 26,
}


def scope_of(nodeid: str) -> str:
    """``module`` or ``module:node kind`` (a test parametrised by ``node_kind`` has it in its id;
    another parameter spelt like a node kind only makes a scope of its own)."""
    module, _, rest = nodeid.partition("::")
    params = rest[rest.index("[") + 1:-1].split("-") if rest.endswith("]") and "[" in rest else []
    kind = next((k for k in NODE_KINDS if k in params), None)
    return f"{module}:{kind}" if kind else module


def pytest_xdist_make_scheduler(config: pytest.Config, log: Any) -> Any:
    if config.getvalue("dist") != "loadscope":
        return None   # xdist's own
    from xdist.scheduler import LoadScopeScheduling

    class Scopes(LoadScopeScheduling):
        def _split_scope(self, nodeid: str) -> str:
            return scope_of(nodeid)

    return Scopes(config, log)


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if not hasattr(config, "workerinput"):   # only in an xdist worker: the order scopes go out in
        return
    scopes: dict[str, list[pytest.Item]] = {}
    for item in items:
        scopes.setdefault(scope_of(item.nodeid), []).append(item)
    order = sorted(scopes, key=lambda s: -SCOPE_SECONDS.get(s, float(len(scopes[s]))))   # stable
    items[:] = [item for s in order for item in scopes[s]]


@pytest.fixture(scope="session")
def w3() -> Web3:
    compile_contracts()
    return memory_chain()


@pytest.fixture(scope="session")
def tester(w3: Web3) -> Any:
    return tester_of(w3)


@pytest.fixture(scope="session")
def actors(w3: Web3) -> Actors:
    return Actors(*(Sender.unlocked(w3, i) for i in range(6)))


@pytest.fixture(scope="session")
def deployments(w3: Web3, actors: Actors) -> dict[str, Protocol]:
    """The protocol deployed once per decimals case, before any snapshot is taken."""
    out = {}
    for case in DECIMALS_CASES:
        dep = deploy_protocol(w3, actors.owner, config_for(case))
        out[case] = Protocol(w3, dep, actors.owner, case)
    return out


@pytest.fixture(autouse=True)
def _chain_snapshot(request: pytest.FixtureRequest) -> Iterator[None]:
    """Every test that touches the chain starts from a snapshot and reverts to it."""
    if "w3" not in request.fixturenames and "deployments" not in request.fixturenames and not any(
        f in request.fixturenames for f in ("protocol", "any_protocol", "tester")
    ):
        yield
        return
    request.getfixturevalue("deployments")
    tester = request.getfixturevalue("tester")
    snap = tester.take_snapshot()
    try:
        yield
    finally:
        tester.revert_to_snapshot(snap)


@pytest.fixture
def protocol(deployments: dict[str, Protocol]) -> Protocol:
    """The default listing: USDC 6 decimals, WETH 18, WBTC 8."""
    return deployments["q6"]


@pytest.fixture(params=list(DECIMALS_CASES))
def any_protocol(request: pytest.FixtureRequest, deployments: dict[str, Protocol]) -> Protocol:
    """Each decimals case in turn, for tests where token decimals matter."""
    return deployments[request.param]


@pytest.fixture(scope="module", params=NODE_KINDS)
def node_kind(request: pytest.FixtureRequest) -> str:
    """Each local node of ``tests/nodes.py`` in turn (module scope: one node per module and kind).
    The anvil half is skipped only where npm is missing, never in CI (see ``require_anvil``)."""
    if request.param == "anvil":
        require_anvil()
    return str(request.param)
