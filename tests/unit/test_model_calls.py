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


def test_liquidate_many_takes_a_list_of_order_tuples_and_round_trips() -> None:
    """The batch call: a list of (account, market, token, amount) orders, the engine's
    LiquidationOrder struct (the e2e batches show the engine accepts it)."""
    from eth_abi import encode as abi_encode
    from eth_utils import keccak, to_checksum_address

    from protocol_model.calls import LIQUIDATE_MANY

    token = "0x" + "ab" * 20
    orders = [(ACCOUNT, 1, "0x" + "00" * 20, 10**18), (ACCOUNT, 0, token, 5 * 10**6)]
    data = encode_call(LIQUIDATE_MANY, orders)
    assert data[:4] == keccak(text="liquidate_many((address,uint256,address,uint256)[])")[:4]
    assert data[4:] == abi_encode(["(address,uint256,address,uint256)[]"], [orders])
    assert decode_call(LIQUIDATE_MANY, data) == ([(ACCOUNT, 1, "0x" + "00" * 20, 10**18),
                                                  (ACCOUNT, 0, to_checksum_address(token), 5 * 10**6)],)
    assert decode_call(LIQUIDATE_MANY, data + bytes(32)) is None       # trailing bytes
    assert decode_call(LIQUIDATE_MANY, data[:-32]) is None             # cut short
    assert decode_call(LIQUIDATE, data) is None
    with pytest.raises(ConfigError):
        encode_call("liquidate_many((address,uint256)[]", orders)      # unbalanced
