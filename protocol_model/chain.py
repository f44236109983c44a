"""Connecting to a chain and sending transactions from a deployer or an operator.

``connect`` gives a :class:`web3.Web3` for either the embedded eth-tester chain (``rpc`` of
``None`` or ``"memory"``) or any JSON-RPC HTTP URL. ``Sender`` sends a transaction either from an
account the node unlocks (dev nodes, eth-tester) or signed locally with a key (any node).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

from eth_account.signers.local import LocalAccount
from web3 import Web3
from web3.exceptions import BlockNotFound
from web3.types import BlockIdentifier, TxReceipt

from .errors import ChainError, ConfigError, Revert

log = logging.getLogger(__name__)

MEMORY = "memory"


def memory_chain() -> Web3:
    """A fresh in-process eth-tester chain on py-evm with ten funded, unlocked accounts."""
    from eth_tester import EthereumTester, PyEVMBackend
    from web3 import EthereumTesterProvider

    tester = EthereumTester(PyEVMBackend())
    return Web3(EthereumTesterProvider(tester))


def connect(rpc: str | None, timeout: float = 10.0, *, probe: bool = True) -> Web3:
    """Connect to ``rpc`` (an http(s) URL) or, for ``None``/``"memory"``, a new in-process chain.
    ``probe=False`` skips the one request that checks the node answers (a caller that installs
    its own retrying layer first probes through it)."""
    if rpc is None or rpc == MEMORY:
        return memory_chain()
    if not rpc.startswith(("http://", "https://")):
        raise ChainError(f"unsupported RPC URL {rpc!r}: give an http:// or https:// URL, or 'memory'")
    w3 = Web3(Web3.HTTPProvider(rpc, request_kwargs={"timeout": timeout}))
    if not probe:
        return w3
    try:
        w3.eth.chain_id
    except Exception as exc:  # noqa: BLE001 - any transport failure means "unreachable"
        raise ChainError(
            f"cannot reach the RPC node at {rpc} ({type(exc).__name__}); is the node running? "
            "start one with 'xmargin node'"
        ) from exc
    return w3


def tester_of(w3: Web3) -> Any | None:
    """The EthereumTester behind an in-process chain, or None for a JSON-RPC node."""
    return getattr(w3.provider, "ethereum_tester", None)


def revert_reason(exc: BaseException) -> str | None:
    """The revert reason string carried by a web3 ContractLogicError, or None for other errors."""
    from eth_tester.exceptions import TransactionFailed
    from web3.exceptions import ContractLogicError

    if isinstance(exc, ContractLogicError):
        msg = str(exc.message if getattr(exc, "message", None) else exc)
    elif isinstance(exc, TransactionFailed):
        msg = str(exc.args[0]) if exc.args else ""
    else:
        return None
    prefix = "execution reverted: "
    if msg.startswith(prefix):
        return msg[len(prefix):]
    if msg == "execution reverted":
        return ""
    return msg


@dataclass
class Sender:
    """Sends transactions from ``address``: unlocked on the node, or signed with ``account``."""

    w3: Web3
    address: str
    account: LocalAccount | None = None
    tip_wei: int = 1_000_000_000

    @classmethod
    def unlocked(cls, w3: Web3, index: int = 0) -> "Sender":
        accounts = w3.eth.accounts
        if not accounts:
            raise ChainError("the node has no unlocked accounts: give a key (XMARGIN_PRIVATE_KEY or --keystore)")
        return cls(w3, accounts[index])

    @classmethod
    def from_key(cls, w3: Web3, account: LocalAccount) -> "Sender":
        return cls(w3, account.address, account)

    def submit(
        self, call: Any | None, gas: int, nonce: int, *, to: str | None = None, value: int = 0,
        max_fee: int | None = None, chain_id: int | None = None,
    ) -> bytes:
        """Send without waiting: a contract call, or (``call=None``) a plain transfer of ``value`` wei
        to ``to``. The caller tracks ``nonce`` and may pass ``max_fee`` and ``chain_id`` to save the
        two reads per transaction when it sends many; returns the transaction hash."""
        params: dict[str, Any] = {"from": self.address, "gas": gas, "nonce": nonce, "value": value}
        if call is None:
            params["to"] = to
        if max_fee is None:
            max_fee = 2 * self.w3.eth.get_block("latest")["baseFeePerGas"] + self.tip_wei
        params |= {"maxPriorityFeePerGas": min(self.tip_wei, max_fee), "maxFeePerGas": max_fee}
        tx = call.build_transaction(params) if call is not None else params
        if self.account is None:
            return bytes(self.w3.eth.send_transaction(tx))  # type: ignore[arg-type]
        tx["chainId"] = chain_id if chain_id is not None else self.w3.eth.chain_id
        signed = self.account.sign_transaction(tx)
        return bytes(self.w3.eth.send_raw_transaction(signed.raw_transaction))

    def send(self, call: Any, gas: int | None = None) -> TxReceipt:
        """Send a prepared contract call (``contract.functions.f(...)``) and wait for its receipt.

        Raises :class:`Revert` with the reason if the call would revert or the receipt failed.
        """
        params: dict[str, Any] = {"from": self.address}
        if gas is not None:
            params["gas"] = gas
        try:
            if self.account is None:
                tx_hash = call.transact(params)
            else:
                base = self.w3.eth.get_block("latest")["baseFeePerGas"]
                params |= {
                    "nonce": self.w3.eth.get_transaction_count(self.address, "pending"),
                    "maxPriorityFeePerGas": self.tip_wei,
                    "maxFeePerGas": 2 * base + self.tip_wei,
                    "chainId": self.w3.eth.chain_id,
                }
                tx = call.build_transaction(params)
                signed = self.account.sign_transaction(tx)
                tx_hash = self.w3.eth.send_raw_transaction(signed.raw_transaction)
        except Exception as exc:  # noqa: BLE001 - only revert errors are translated, others re-raised
            reason = revert_reason(exc)
            if reason is None:
                raise
            raise Revert(reason) from exc
        receipt = self.w3.eth.wait_for_transaction_receipt(tx_hash)
        if receipt["status"] != 1:
            raise Revert("")
        return receipt


def decimals_of_scale(scale: int) -> int:
    """``d`` such that ``scale == 10**(18 - d)``: the decimals behind an engine price/quote scale."""
    d = 18
    s = scale
    while s > 1 and s % 10 == 0:
        s //= 10
        d -= 1
    if s != 1 or d < 0:
        raise ChainError(f"scale {scale} is not 10**(18 - decimals): is this an xmargin engine?")
    return d


def resolve_block(w3: Web3, block_identifier: BlockIdentifier) -> int:
    """A block number for ``block_identifier`` (an int is returned as is, a tag costs one header read)."""
    if isinstance(block_identifier, int) and not isinstance(block_identifier, bool):
        if block_identifier < 0:
            raise ConfigError(f"block number {block_identifier} is negative: give a block number >= 0 or 'latest'")
        return block_identifier
    try:
        return int(w3.eth.get_block(block_identifier)["number"])
    except (BlockNotFound, ValueError) as exc:  # an unknown block, or a tag the node rejects
        raise ChainError(f"cannot resolve block {block_identifier!r}: {exc}") from exc
