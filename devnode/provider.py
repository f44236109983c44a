"""An in-process web3 provider that speaks JSON-RPC to a :class:`~.engine.DevChain` directly.

Same node, same methods and batching as ``xmargin node``, without a socket: requests are encoded
to JSON-RPC bytes, handled by :class:`~.rpc.RpcDispatcher` and decoded back, exactly as over HTTP.
Unlike web3's ``EthereumTesterProvider`` it keeps a transaction index and reads logs through the
blocks' blooms, so receipts and ``eth_getLogs`` do not slow down as the chain grows.
"""

from __future__ import annotations

from typing import Any, cast

from web3 import Web3
from web3.providers.base import JSONBaseProvider
from web3.types import RPCEndpoint, RPCResponse

from .engine import DevChain
from .rpc import RpcDispatcher


class DevChainProvider(JSONBaseProvider):
    """``Web3(DevChainProvider())``: a fresh automining dev chain in this process."""

    def __init__(self, chain: DevChain | None = None, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.chain = chain if chain is not None else DevChain(automine=True)
        self.dispatcher = RpcDispatcher(self.chain)

    def __str__(self) -> str:
        return f"in-process dev chain {self.chain.chain_id}"

    def is_connected(self, show_traceback: bool = False) -> bool:
        return True

    def _round_trip(self, body: bytes) -> Any:
        raw = self.dispatcher.handle_body(body)
        if raw is None:  # notifications only; web3 never sends those
            raise ValueError("the dev chain returned no response")
        return self.decode_rpc_response(raw)

    def make_request(self, method: RPCEndpoint, params: Any) -> RPCResponse:
        return cast(RPCResponse, self._round_trip(self.encode_rpc_request(method, params)))

    def make_batch_request(self, batch_requests: list[tuple[RPCEndpoint, Any]]) -> list[RPCResponse] | RPCResponse:
        response = self._round_trip(self.encode_batch_rpc_request(batch_requests))
        # The dispatcher answers a batch's members in request order, as web3 expects them.
        return cast("list[RPCResponse] | RPCResponse", response)


def dev_chain_web3(chain: DevChain | None = None) -> Web3:
    """A Web3 on a fresh (or the given) in-process dev chain."""
    return Web3(DevChainProvider(chain))
