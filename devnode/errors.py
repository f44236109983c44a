"""JSON-RPC error type and the error codes the dev node uses."""

from __future__ import annotations

from typing import Any

PARSE_ERROR = -32700
INVALID_REQUEST = -32600
METHOD_NOT_FOUND = -32601
INVALID_PARAMS = -32602
INTERNAL_ERROR = -32603
# geth's generic "server error" code, used for rejected transactions and failed state lookups.
SERVER_ERROR = -32000
# geth/anvil: an eth_call or eth_estimateGas that reverted.
EXECUTION_REVERTED = 3


class JsonRpcError(Exception):
    """An error to return to the JSON-RPC client as ``{"code", "message", "data"?}``."""

    def __init__(self, code: int, message: str, data: Any = None) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.data = data

    def to_json(self) -> dict[str, Any]:
        error: dict[str, Any] = {"code": self.code, "message": self.message}
        if self.data is not None:
            error["data"] = self.data
        return error


class InvalidParams(JsonRpcError):
    """Malformed or missing method parameters (-32602)."""

    def __init__(self, message: str) -> None:
        super().__init__(INVALID_PARAMS, message)


class ServerError(JsonRpcError):
    """A well-formed request the node refuses or cannot satisfy (-32000), e.g. a rejected tx."""

    def __init__(self, message: str, data: Any = None) -> None:
        super().__init__(SERVER_ERROR, message, data)
