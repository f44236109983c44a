"""The bot's RPC layer against broken transports: a real node (the dev node over HTTP) behind
``tests/faultproxy.py``, one fault kind at a time, on every request path (single request, batch,
``eth_getLogs``). Each fault must be retried to the right answer, never surface as a traceback.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from web3 import HTTPProvider, Web3

from bot.errors import CircuitOpen, RpcError
from bot.rpc import CountingRpc
from protocol_model.logscan import LogScanner

from faultproxy import FAULT_KINDS, FaultProxy
from nodes import LocalNode, start_node

CLIENT_TIMEOUT_S = 0.5


@pytest.fixture(scope="module")
def node() -> Iterator[LocalNode]:
    with start_node("devnode") as n:
        n.mine(3)
        yield n


def client(proxy: FaultProxy, **kwargs: object) -> tuple[Web3, CountingRpc]:
    w3 = Web3(HTTPProvider(proxy.url, request_kwargs={"timeout": CLIENT_TIMEOUT_S}))
    settings = {"retries": 3, "backoff_s": 0.0, "backoff_max_s": 0.0, "breaker_threshold": 50}
    settings.update(kwargs)
    return w3, CountingRpc(w3, **settings)  # type: ignore[arg-type]


TRANSPORT_KINDS = [k for k in FAULT_KINDS if k != "rate_limit"]


@pytest.mark.parametrize("kind", TRANSPORT_KINDS)
def test_a_single_request_survives_each_fault(node: LocalNode, kind: str) -> None:
    with FaultProxy(node.url, schedule=[kind, kind], stall_s=CLIENT_TIMEOUT_S + 0.5) as proxy:
        w3, rpc = client(proxy)
        block = w3.eth.get_block("latest")
        assert int(block["number"]) == node.block_number()
        assert proxy.stats.faults[kind] == 2
        stats = rpc.stats()
        assert stats.retries == 2 and stats.failures_by_method == {"eth_getBlockByNumber": 2}


@pytest.mark.parametrize("kind", TRANSPORT_KINDS)
def test_a_batch_survives_each_fault(node: LocalNode, kind: str) -> None:
    with FaultProxy(node.url, schedule=[], stall_s=CLIENT_TIMEOUT_S + 0.5) as proxy:
        w3, rpc = client(proxy)
        proxy.fail_next(kind)
        with w3.batch_requests() as batch:
            batch.add(w3.eth.get_block(1))
            batch.add(w3.eth.get_block(2))
            blocks = batch.execute()
        assert [int(b["number"]) for b in blocks] == [1, 2]
        assert proxy.stats.faults[kind] == 1
        assert rpc.stats().retries == 1


def test_faults_beyond_the_retries_are_one_rpc_error_and_open_the_breaker(node: LocalNode) -> None:
    with FaultProxy(node.url, rate=1.0, only=["truncated", "http_502", "reset"], seed=3) as proxy:
        w3, rpc = client(proxy, retries=2, breaker_threshold=3)
        with pytest.raises(CircuitOpen) as info:
            w3.eth.get_block("latest")
        assert "\n" not in str(info.value) and isinstance(info.value, RpcError)
        assert rpc.breaker.state == "open"


def test_a_rate_limit_on_get_logs_is_retried_not_fatal(node: LocalNode) -> None:
    """-32005 "limit exceeded" on every other eth_getLogs: the scanner shrinks its range, and at one
    block backs off and retries; every block's logs come back."""
    head = node.block_number()
    with FaultProxy(node.url, schedule=["rate_limit", None] * 20, methods=["eth_getLogs"]) as proxy:
        w3, _rpc = client(proxy)
        scanner = LogScanner(w3, "0x" + "00" * 20, None, start_block=0, chunk=4, backoff_s=0.0)
        assert scanner.scan(head) == []
        assert scanner.next_block == head + 1
        assert proxy.stats.faults["rate_limit"] >= 2


def test_the_proxy_is_bounded_in_requests(node: LocalNode) -> None:
    with FaultProxy(node.url, rate=0.0, max_requests=2) as proxy:
        w3, _rpc = client(proxy, retries=0)
        w3.eth.get_block("latest")
        w3.eth.get_block("latest")
        with pytest.raises(RpcError):
            w3.eth.get_block("latest")
        assert proxy.stats.requests == 3
