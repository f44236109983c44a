"""Lens.accounts costs what its batch holds, not a fixed maximum, and its documented batch
(``MAX_BATCH`` = ``protocol_model.loader.LENS_MAX_BATCH`` accounts) fits a 30M-gas block with room
to spare.

Accounts are made by tests/data/LoadedAccounts.vy: minimal proxies that each deposit WETH and
WBTC and hold a position in both markets of the default listing (the most an account of that
listing can hold), every one a distinct address, so reading it touches cold storage as a real
account does. Gas is the ``gasUsed`` of ``Lens.accounts`` sent as a transaction (one execution,
intrinsic gas and calldata included), on the dev node."""

from __future__ import annotations

import pytest
from vyper.compiler import compile_code

from protocol_model.loader import LENS_MAX_BATCH

BLOCK_GAS = 30_000_000
ROOM = BLOCK_GAS // 2           # "room to spare": the documented batch takes at most half a block
SPAWN_PER_TX = 40
AMOUNTS = {"WETH": 1, "WBTC": "0.01"}       # whole tokens per account: 2,000 + 600 USD at the default prices
DELTAS = (4 * 10**17, -(10**16))           # 0.4 ETH long, 0.01 BTC short
DATA = __import__("pathlib").Path(__file__).resolve().parents[1] / "data" / "LoadedAccounts.vy"


def loaded_accounts(p, n: int) -> list[str]:
    out = compile_code(DATA.read_text(), contract_path="LoadedAccounts.vy", output_formats=["abi", "bytecode"])
    factory_cls = p.w3.eth.contract(abi=out["abi"], bytecode=out["bytecode"])
    receipt = p.owner.send(factory_cls.constructor())
    factory = p.w3.eth.contract(address=receipt["contractAddress"], abi=out["abi"])
    tokens = [p.token(s) for s in AMOUNTS]
    amounts = [p.units(s, whole) for s, whole in AMOUNTS.items()]
    for token, amount in zip(tokens, amounts):
        p.owner.send(token.functions.mint(factory.address, amount * n))
    done = 0
    while done < n:
        k = min(SPAWN_PER_TX, n - done)
        p.owner.send(factory.functions.spawn(k, p.engine.address, [t.address for t in tokens], amounts, list(DELTAS)),
                     gas=29_000_000)
        done += k
    return [factory.functions.spawned(i).call() for i in range(n)]


def lens_gas(p, addrs: list[str]) -> int:
    receipt = p.owner.send(p.lens.functions.accounts(p.engine.address, addrs), gas=29_000_000)
    return int(receipt["gasUsed"])


def test_lens_accounts_gas_grows_with_the_batch(protocol):
    """One account costs about what one account reads (it was 4.76M gas when the result was a
    list sized for 1,000 views); each further account adds about the same."""
    p = protocol
    addrs = loaded_accounts(p, 9)
    rows = p.lens.functions.accounts(p.engine.address, addrs).call()
    assert all(r[2] == 0b11 and r[3] == 0b11 for r in rows)    # both markets, both collaterals
    one, eight, nine = lens_gas(p, addrs[:1]), lens_gas(p, addrs[:8]), lens_gas(p, addrs)
    print(f"\nLens.accounts gas: 1 account {one:,}, 8 accounts {eight:,}, 9 accounts {nine:,}")
    assert one < 150_000
    per_account = (eight - one) // 7
    assert 20_000 < per_account < 80_000
    # Past a list size (8 -> 32 views) the memory of the larger list is paid, a few thousand gas.
    assert eight < nine < eight + per_account + 20_000


def test_lens_empty_and_full_batch_bounds(protocol):
    p = protocol
    assert p.lens.functions.accounts(p.engine.address, []).call() == []
    too_many = [p.engine.address] * (LENS_MAX_BATCH + 1)
    with pytest.raises(Exception):
        p.lens.functions.accounts(p.engine.address, too_many).call()


@pytest.mark.slow
def test_the_documented_lens_batch_fits_a_block_with_room_to_spare(protocol):
    """LENS_MAX_BATCH loaded accounts (distinct, cold) in one Lens.accounts call: at most half of
    a 30M-gas block. About 40 s on the dev node (making the accounts is most of it)."""
    p = protocol
    addrs = loaded_accounts(p, LENS_MAX_BATCH)
    gas = lens_gas(p, addrs)
    print(f"\nLens.accounts gas for {LENS_MAX_BATCH} loaded accounts: {gas:,} ({gas / BLOCK_GAS:.0%} of a 30M block)")
    assert gas <= ROOM
