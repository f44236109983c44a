"""``seed_accounts`` is idempotent and resumable: a second run sends nothing, a run interrupted
half-way (Ctrl-C) is finished by the next one, and a new deployment on the same chain is seeded anew."""

from __future__ import annotations

import pytest

from conftest import Protocol
from protocol_model.deploy import DeployConfig, deploy_protocol
from protocol_model.loader import load_state
from protocol_model.seeding import seed_accounts

N, SEED = 6, 11


def positions(p: Protocol, dep, plans) -> dict[str, dict[int, int]]:  # type: ignore[no-untyped-def]
    state = load_state(p.w3, dep, [t.address for t in plans])
    return {a: {m: pos.size for m, pos in acc.positions.items()} for a, acc in state.accounts.items()}


def planned(plans) -> dict[str, dict[int, int]]:  # type: ignore[no-untyped-def]
    return {t.address: {m: s for m, s in ((0, t.eth_size), (1, t.btc_size)) if s} for t in plans}


def test_a_second_run_skips_every_trader_and_sends_nothing(protocol: Protocol) -> None:
    first = seed_accounts(protocol.w3, protocol.dep, protocol.owner, N, SEED)
    assert first.skipped == 0 and positions(protocol, protocol.dep, first) == planned(first)
    block = protocol.w3.eth.block_number
    again = seed_accounts(protocol.w3, protocol.dep, protocol.owner, N, SEED)
    assert again.skipped == N and [t.address for t in again] == [t.address for t in first]
    assert protocol.w3.eth.block_number == block          # not one transaction
    more = seed_accounts(protocol.w3, protocol.dep, protocol.owner, N + 2, SEED)
    assert more.skipped == N and positions(protocol, protocol.dep, more) == planned(more)


@pytest.mark.parametrize("stop_at", [N // 2, N + 2, 2 * N + 1])   # in funding, in deposits, in trades
def test_a_run_interrupted_half_way_is_finished_by_the_next(protocol: Protocol, stop_at: int) -> None:
    def interrupt(done: int, total: int) -> None:
        if done == stop_at:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        seed_accounts(protocol.w3, protocol.dep, protocol.owner, N, SEED, progress=interrupt)
    plans = seed_accounts(protocol.w3, protocol.dep, protocol.owner, N, SEED)
    assert positions(protocol, protocol.dep, plans) == planned(plans)
    # Deposits were not doubled: each trader holds exactly its planned collateral.
    state = load_state(protocol.w3, protocol.dep, [t.address for t in plans])
    weth = protocol.dep.token_contract("WETH").address
    assert {t.address: state.accounts[t.address].collateral.get(weth, 0) for t in plans} == \
        {t.address: t.weth for t in plans}


def test_a_new_deployment_on_the_same_chain_is_seeded_anew(protocol: Protocol) -> None:
    seed_accounts(protocol.w3, protocol.dep, protocol.owner, N, SEED)
    other = deploy_protocol(protocol.w3, protocol.owner, DeployConfig())
    plans = seed_accounts(protocol.w3, other, protocol.owner, N, SEED)
    assert plans.skipped == 0 and positions(protocol, other, plans) == planned(plans)
