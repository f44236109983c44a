"""protocol_model.calls: the one call encoder, against known selectors and a round trip."""

from __future__ import annotations

import pytest

from protocol_model.calls import LIQUIDATE, SETTLE_BAD_DEBT, decode_call, encode_call, selector
from protocol_model.errors import ConfigError

ACCOUNT = "0x5B38Da6a701c568545dCfcB03FcB875f56beddC4"


def test_selectors_are_the_known_ones() -> None:
    assert selector("transfer(address,uint256)").hex() == "a9059cbb"
    assert selector("approve(address,uint256)").hex() == "095ea7b3"


def test_encode_is_selector_then_one_word_per_static_argument() -> None:
    data = encode_call(LIQUIDATE, ACCOUNT, 1, 2**256 - 1)
    assert data[:4] == selector(LIQUIDATE) and len(data) == 4 + 3 * 32
    assert data[4:36] == bytes(12) + bytes.fromhex(ACCOUNT[2:])
    assert data[36:68] == (1).to_bytes(32, "big") and data[68:] == b"\xff" * 32
    assert encode_call(SETTLE_BAD_DEBT, ACCOUNT) == selector(SETTLE_BAD_DEBT) + bytes(12) + bytes.fromhex(ACCOUNT[2:])


def test_decode_reverses_encode_and_refuses_other_calls() -> None:
    data = encode_call(LIQUIDATE, ACCOUNT.lower(), 7, 10**18)
    assert decode_call(LIQUIDATE, data) == (ACCOUNT, 7, 10**18)
    assert decode_call(SETTLE_BAD_DEBT, data) is None
    assert decode_call(LIQUIDATE, data[:-1]) is None


def test_a_signature_that_is_not_flat_is_refused() -> None:
    with pytest.raises(ConfigError):
        encode_call("liquidate", ACCOUNT)
