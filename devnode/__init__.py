"""Local Ethereum JSON-RPC dev node backed by eth-tester (py-evm).

``DevNode(block_time=None, port=8545, host="127.0.0.1", accounts=10)``; ``start()`` serves in the
background, ``serve_forever()`` blocks until Ctrl-C/SIGTERM. See :mod:`devnode.node`.
"""

from .engine import DEFAULT_PRIORITY_FEE, DevChain
from .errors import JsonRpcError
from .mempool import Mempool, PoolTx
from .node import DevNode, mining_in_background
from .rpc import RpcDispatcher

__all__ = [
    "mining_in_background",
    "DEFAULT_PRIORITY_FEE",
    "DevChain",
    "DevNode",
    "Mempool",
    "PoolTx",
    "RpcDispatcher",
    "JsonRpcError",
]
