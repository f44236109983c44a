"""devnode.gas: py-evm's gas estimates in fewer executions.

The dev node estimates with it, and ``tests/conftest.py`` installs it for every in-process chain of
the test run (and the CLI processes the tests start), so the estimate every ``Sender.send`` asks for
costs about a third of py-evm's bisection. Here both estimators answer every estimate of a story
(deposits, trades, a crash, liquidations of positions and collateral, bad debt settled, reverting
calls, a plain transfer, a deployment, a sender who cannot pay for the gas) on the same state, and
must agree exactly: the same number, or the same error.
"""

from __future__ import annotations

from collections import Counter
from typing import Any, Callable

import eth.vm.forks.frontier.state as frontier_state
import pytest
from eth.estimators.gas import binary_gas_search_intrinsic_tolerance
from eth_account import Account
from eth_utils import ValidationError

from devnode.gas import ENV, THIS, binary_gas_search_fewer_runs
from engine_helpers import new_token
from protocol_model.errors import Revert

MAX_UINT = 2**256 - 1


def outcome(estimator: Callable[[Any, Any], int], state: Any, tx: Any) -> tuple[str, Any]:
    try:
        return "gas", estimator(state, tx)
    except Exception as exc:  # noqa: BLE001 - any error is an outcome to compare
        return type(exc).__name__, exc.args


def test_the_fewer_runs_estimator_is_installed_for_the_test_run() -> None:
    import os

    assert os.environ.get(ENV) == THIS


def test_every_estimate_equals_py_evms_in_fewer_runs(protocol: Any, actors: Any, tester: Any,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    runs: Counter[str] = Counter()
    counting: list[str] = []
    apply = frontier_state.FrontierState.apply_transaction

    def counted(self: Any, tx: Any) -> Any:
        if counting:
            runs[counting[-1]] += 1
        return apply(self, tx)

    monkeypatch.setattr(frontier_state.FrontierState, "apply_transaction", counted)
    compared: list[tuple[tuple[str, Any], tuple[str, Any]]] = []

    def both(state: Any, tx: Any) -> int:
        counting.append("py-evm")
        theirs = outcome(binary_gas_search_intrinsic_tolerance, state, tx)
        counting[-1] = "fewer runs"
        ours = outcome(binary_gas_search_fewer_runs, state, tx)
        counting.pop()
        compared.append((theirs, ours))
        if theirs[0] != "gas":
            return binary_gas_search_intrinsic_tolerance(state, tx)   # raises as py-evm does
        return int(theirs[1])

    # The chain object is replaced when a snapshot is reverted: the autouse snapshot fixture's
    # revert at the end of the test drops this estimator again.
    monkeypatch.setattr(tester.backend.chain, "gas_estimator", both)
    p, trader, liquidator = protocol, actors.trader, actors.liquidator
    weth = p.token("WETH")

    p.deposit(trader, "USDC", p.units("USDC", 1_000))
    p.deposit(trader, "WETH", p.units("WETH", 2))
    p.trade(trader, "ETH-PERP", 8 * 10**18)
    p.trade(trader, "BTC-PERP", -(10**17))
    p.deposit(liquidator, "USDC", p.units("USDC", 100_000))
    with pytest.raises(Revert, match="healthy"):
        liquidator.send(p.engine.functions.liquidate(trader.address, p.dep.market_id("ETH-PERP"), MAX_UINT))
    with pytest.raises(Revert):
        trader.send(p.engine.functions.withdraw(p.quote.address, p.units("USDC", 1_000_000)))
    p.set_price("ETH", 1_700)
    p.set_price("BTC", 70_000)
    liquidator.send(p.engine.functions.liquidate(trader.address, p.dep.market_id("ETH-PERP"), MAX_UINT))
    p.set_price("ETH", 1_000)
    for market in ("ETH-PERP", "BTC-PERP"):
        try:
            liquidator.send(p.engine.functions.liquidate(trader.address, p.dep.market_id(market), MAX_UINT))
        except Revert:
            pass
    try:
        liquidator.send(p.engine.functions.liquidate_collateral(trader.address, weth.address, MAX_UINT))
        liquidator.send(p.engine.functions.settle_bad_debt(trader.address))
    except Revert:
        pass
    # A plain transfer (intrinsic gas is enough), a deployment, and a sender without ether.
    w3 = p.w3
    w3.eth.send_transaction({"from": actors.owner.address, "to": actors.outsider.address, "value": 1})
    new_token(p)
    for wei in (0, 2 * 10**16):      # 0.02 ETH pays for 20M gas at 1 gwei, not for the block's 30M
        nobody = Account.create().address
        if wei:
            w3.eth.send_transaction({"from": actors.owner.address, "to": nobody, "value": wei})
        with pytest.raises(ValidationError, match="cannot afford"):
            w3.eth.estimate_gas({"from": nobody, "to": p.engine.address, "maxFeePerGas": 10**9,
                                 "maxPriorityFeePerGas": 10**9, "data": p.engine.encode_abi("pause", [])})

    kinds = Counter(theirs[0] for theirs, _ in compared)
    assert [pair for pair in compared if pair[0] != pair[1]] == []
    assert kinds["gas"] >= 15 and kinds["Revert"] >= 2 and kinds["ValidationError"] == 2, kinds
    assert runs["fewer runs"] * 2 < runs["py-evm"], runs
