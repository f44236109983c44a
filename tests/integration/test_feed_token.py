"""PriceFeed (Chainlink AggregatorV3 read interface, settable by its updater) and Token (ERC-20
with an owner-only mint), deployed fresh for each test."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from eth_tester.exceptions import TransactionFailed
from web3.exceptions import ContractLogicError
from web3.logs import DISCARD

from protocol_model.deploy import deploy_contract
from protocol_model.errors import Revert

MAX_UINT = 2**256 - 1
ZERO = "0x0000000000000000000000000000000000000000"


def events(contract, receipt, name: str) -> list:
    return list(getattr(contract.events, name)().process_receipt(receipt, errors=DISCARD))


def reverts(sender, call) -> str:
    with pytest.raises(Revert) as exc:
        sender.send(call)
    return exc.value.reason


def block_time(w3, receipt) -> int:
    return w3.eth.get_block(receipt["blockNumber"])["timestamp"]


# ---------------------------------------------------------------- PriceFeed


@pytest.fixture
def feed(w3, actors, tester):
    return deploy_contract(w3, actors.owner, "PriceFeed", 8, "ETH / USD", 2000 * 10**8, 100, 10**14)


def test_feed_constructor_state_and_first_round(w3, actors, tester):
    art_feed = deploy_contract(w3, actors.owner, "PriceFeed", 6, "BTC / USD", 60_000 * 10**6, 1, 10**12)
    f = art_feed.functions
    assert f.decimals().call() == 6
    assert f.description().call() == "BTC / USD"
    assert f.version().call() == 4
    assert (f.owner().call(), f.updater().call()) == (actors.owner.address, actors.owner.address)
    assert (f.min_answer().call(), f.max_answer().call()) == (1, 10**12)
    round_id, answer, started, updated, answered_in = f.latestRoundData().call()
    assert (round_id, answer, answered_in) == (1, 60_000 * 10**6, 1)
    assert started == updated == f.latest_timestamp().call() == f.latestTimestamp().call() > 0
    assert f.latestAnswer().call() == f.latest_answer().call() == 60_000 * 10**6


def test_feed_constructor_without_initial_answer_has_no_round(w3, actors, tester):
    f = deploy_contract(w3, actors.owner, "PriceFeed", 8, "X / USD", 0, 1, 10).functions
    assert tuple(f.latestRoundData().call()) == (0, 0, 0, 0, 0)
    assert f.latest_round().call() == 0


@pytest.mark.parametrize(
    "decimals,minimum,maximum,initial,reason",
    [
        (19, 1, 10, 0, "bad decimals"),
        (8, 0, 10, 0, "bad bounds"),
        (8, -1, 10, 0, "bad bounds"),
        (8, 11, 10, 0, "bad bounds"),
        (8, 5, 10, 4, "answer out of range"),
        (8, 5, 10, 11, "answer out of range"),
    ],
)
def test_feed_constructor_rejects(w3, actors, tester, decimals, minimum, maximum, initial, reason):
    with pytest.raises(Revert) as exc:
        deploy_contract(w3, actors.owner, "PriceFeed", decimals, "X / USD", initial, minimum, maximum)
    assert exc.value.reason == reason


def test_feed_constructor_accepts_equal_bounds_and_18_decimals(w3, actors, tester):
    f = deploy_contract(w3, actors.owner, "PriceFeed", 18, "X / USD", 7, 7, 7).functions
    assert (f.decimals().call(), f.latestAnswer().call()) == (18, 7)


def test_set_answer_starts_a_new_round_and_emits_chainlink_events(w3, feed, actors):
    receipt = actors.owner.send(feed.functions.set_answer(2100_12345678))
    ts = block_time(w3, receipt)
    assert tuple(feed.functions.latestRoundData().call()) == (2, 2100_12345678, ts, ts, 2)
    [new_round] = events(feed, receipt, "NewRound")
    assert dict(new_round.args) == {"roundId": 2, "startedBy": actors.owner.address, "startedAt": ts}
    [updated] = events(feed, receipt, "AnswerUpdated")
    assert dict(updated.args) == {"current": 2100_12345678, "roundId": 2, "updatedAt": ts}
    # Chainlink's event signature: AnswerUpdated(int256 indexed, uint256 indexed, uint256).
    topic = receipt["logs"][1]["topics"][0]
    assert topic == w3.keccak(text="AnswerUpdated(int256,uint256,uint256)")
    actors.owner.send(feed.functions.set_answer(2000 * 10**8))
    assert feed.functions.latestRoundData().call()[0] == 3


def test_set_answer_at_bounds_and_outside(feed, actors):
    actors.owner.send(feed.functions.set_answer(100))
    actors.owner.send(feed.functions.set_answer(10**14))
    for bad in (99, 10**14 + 1, 0, -5):
        assert reverts(actors.owner, feed.functions.set_answer(bad)) == "answer out of range"
    assert feed.functions.latestAnswer().call() == 10**14


def test_set_answer_only_by_updater(feed, actors):
    assert reverts(actors.outsider, feed.functions.set_answer(2000 * 10**8)) == "not updater"
    receipt = actors.owner.send(feed.functions.set_updater(actors.rival.address))
    [ev] = events(feed, receipt, "UpdaterSet")
    assert (ev.args.previous, ev.args.updater) == (actors.owner.address, actors.rival.address)
    assert feed.functions.updater().call() == actors.rival.address
    # The owner is no longer the updater.
    assert reverts(actors.owner, feed.functions.set_answer(2000 * 10**8)) == "not updater"
    receipt = actors.rival.send(feed.functions.set_answer(1999 * 10**8))
    assert events(feed, receipt, "NewRound")[0].args.startedBy == actors.rival.address
    assert feed.functions.latestAnswer().call() == 1999 * 10**8


def test_feed_admin_only_by_owner(feed, actors):
    assert reverts(actors.outsider, feed.functions.set_updater(actors.outsider.address)) == "not owner"
    assert reverts(actors.outsider, feed.functions.transfer_ownership(actors.outsider.address)) == "not owner"
    assert reverts(actors.owner, feed.functions.transfer_ownership(ZERO)) == "zero address"
    receipt = actors.owner.send(feed.functions.transfer_ownership(actors.rival.address))
    [ev] = events(feed, receipt, "OwnershipTransferred")
    assert (ev.args.previous, ev.args.owner) == (actors.owner.address, actors.rival.address)
    assert feed.functions.owner().call() == actors.rival.address
    assert reverts(actors.owner, feed.functions.set_updater(actors.owner.address)) == "not owner"
    actors.rival.send(feed.functions.set_updater(actors.trader.address))
    assert feed.functions.updater().call() == actors.trader.address


# ---------------------------------------------------------------- Token


@pytest.fixture
def token(w3, actors, tester):
    return deploy_contract(w3, actors.owner, "Token", "Test USD", "TUSD", 6)


def test_token_metadata(w3, actors, tester, token):
    f = token.functions
    assert (f.name().call(), f.symbol().call(), f.decimals().call()) == ("Test USD", "TUSD", 6)
    assert (f.totalSupply().call(), f.owner().call()) == (0, actors.owner.address)


def test_token_constructor_rejects_19_decimals(w3, actors, tester):
    with pytest.raises(Revert) as exc:
        deploy_contract(w3, actors.owner, "Token", "Bad", "BAD", 19)
    assert exc.value.reason == "bad decimals"


def test_mint(token, actors):
    receipt = actors.owner.send(token.functions.mint(actors.trader.address, 1_000))
    [ev] = events(token, receipt, "Transfer")
    assert dict(ev.args) == {"sender": ZERO, "receiver": actors.trader.address, "value": 1_000}
    assert token.functions.balanceOf(actors.trader.address).call() == 1_000
    assert token.functions.totalSupply().call() == 1_000
    assert reverts(actors.outsider, token.functions.mint(actors.outsider.address, 1)) == "not owner"
    assert reverts(actors.owner, token.functions.mint(ZERO, 1)) == "zero address"
    assert token.functions.totalSupply().call() == 1_000


def test_transfer(token, actors):
    actors.owner.send(token.functions.mint(actors.trader.address, 1_000))
    receipt = actors.trader.send(token.functions.transfer(actors.trader2.address, 400))
    [ev] = events(token, receipt, "Transfer")
    assert dict(ev.args) == {"sender": actors.trader.address, "receiver": actors.trader2.address, "value": 400}
    assert token.functions.balanceOf(actors.trader.address).call() == 600
    assert token.functions.balanceOf(actors.trader2.address).call() == 400
    assert token.functions.transfer(actors.trader2.address, 600).call({"from": actors.trader.address}) is True
    assert reverts(actors.trader, token.functions.transfer(actors.trader2.address, 601)) == "insufficient balance"
    assert reverts(actors.trader, token.functions.transfer(ZERO, 1)) == "zero address"
    # A transfer of the whole balance, and one to oneself, keep the supply.
    actors.trader.send(token.functions.transfer(actors.trader.address, 600))
    actors.trader.send(token.functions.transfer(actors.trader2.address, 600))
    assert token.functions.balanceOf(actors.trader.address).call() == 0
    assert token.functions.totalSupply().call() == 1_000


def test_approve_and_transfer_from(token, actors):
    actors.owner.send(token.functions.mint(actors.trader.address, 1_000))
    receipt = actors.trader.send(token.functions.approve(actors.liquidator.address, 300))
    [ev] = events(token, receipt, "Approval")
    assert dict(ev.args) == {"owner": actors.trader.address, "spender": actors.liquidator.address, "value": 300}
    assert token.functions.allowance(actors.trader.address, actors.liquidator.address).call() == 300

    receipt = actors.liquidator.send(token.functions.transferFrom(actors.trader.address, actors.rival.address, 200))
    [ev] = events(token, receipt, "Transfer")
    assert dict(ev.args) == {"sender": actors.trader.address, "receiver": actors.rival.address, "value": 200}
    assert token.functions.allowance(actors.trader.address, actors.liquidator.address).call() == 100
    assert token.functions.balanceOf(actors.rival.address).call() == 200
    call = token.functions.transferFrom(actors.trader.address, actors.rival.address, 101)
    assert reverts(actors.liquidator, call) == "insufficient allowance"
    # Without any allowance.
    call = token.functions.transferFrom(actors.trader.address, actors.outsider.address, 1)
    assert reverts(actors.outsider, call) == "insufficient allowance"
    # Approve overwrites.
    actors.trader.send(token.functions.approve(actors.liquidator.address, 5_000))
    call = token.functions.transferFrom(actors.trader.address, actors.rival.address, 801)
    assert reverts(actors.liquidator, call) == "insufficient balance"
    call = token.functions.transferFrom(actors.trader.address, ZERO, 1)
    assert reverts(actors.liquidator, call) == "zero address"
    assert token.functions.allowance(actors.trader.address, actors.liquidator.address).call() == 5_000


def test_infinite_allowance_is_not_decremented(token, actors):
    actors.owner.send(token.functions.mint(actors.trader.address, 1_000))
    actors.trader.send(token.functions.approve(actors.liquidator.address, MAX_UINT))
    receipt = actors.liquidator.send(token.functions.transferFrom(actors.trader.address, actors.liquidator.address, 700))
    assert events(token, receipt, "Approval") == []
    assert token.functions.allowance(actors.trader.address, actors.liquidator.address).call() == MAX_UINT
    actors.liquidator.send(token.functions.transferFrom(actors.trader.address, actors.liquidator.address, 300))
    assert token.functions.balanceOf(actors.liquidator.address).call() == 1_000
    assert token.functions.allowance(actors.trader.address, actors.liquidator.address).call() == MAX_UINT
    call = token.functions.transferFrom(actors.trader.address, actors.liquidator.address, 1)
    assert reverts(actors.liquidator, call) == "insufficient balance"


def test_allowance_one_below_infinite_is_decremented(token, actors):
    actors.owner.send(token.functions.mint(actors.trader.address, 10))
    actors.trader.send(token.functions.approve(actors.liquidator.address, MAX_UINT - 1))
    actors.liquidator.send(token.functions.transferFrom(actors.trader.address, actors.liquidator.address, 10))
    assert token.functions.allowance(actors.trader.address, actors.liquidator.address).call() == MAX_UINT - 11


def test_token_ownership(token, actors):
    assert reverts(actors.outsider, token.functions.transfer_ownership(actors.outsider.address)) == "not owner"
    assert reverts(actors.owner, token.functions.transfer_ownership(ZERO)) == "zero address"
    receipt = actors.owner.send(token.functions.transfer_ownership(actors.rival.address))
    [ev] = events(token, receipt, "OwnershipTransferred")
    assert (ev.args.previous, ev.args.owner) == (actors.owner.address, actors.rival.address)
    assert reverts(actors.owner, token.functions.mint(actors.owner.address, 1)) == "not owner"
    actors.rival.send(token.functions.mint(actors.rival.address, 1))
    assert token.functions.balanceOf(actors.rival.address).call() == 1


# ---------------------------------------------------------------- Chainlink's interface

CHAINLINK_ABI = Path(__file__).resolve().parents[1] / "data" / "chainlink_aggregator_v2v3_abi.json"


def test_feed_answers_chainlink_aggregator_v2v3_abi_with_round_history(w3, actors, tester, feed):
    """Read through Chainlink's AggregatorV2V3Interface ABI (written from Chainlink's interface
    sources as test data), as a tool written for Chainlink feeds would: every past round stays
    readable, unknown rounds behave as Chainlink's aggregators do."""
    abi = json.loads(CHAINLINK_ABI.read_text())
    names = {e["name"] for e in abi if e["type"] == "function"}
    assert names == {"latestAnswer", "latestTimestamp", "latestRound", "getAnswer", "getTimestamp", "decimals",
                     "description", "version", "getRoundData", "latestRoundData"}
    cl = w3.eth.contract(address=feed.address, abi=abi).functions
    first_time = feed.functions.latest_timestamp().call()
    answers = {1: 2000 * 10**8}
    times = {1: first_time}
    for price in (1990 * 10**8, 2010 * 10**8, 1500 * 10**8):
        receipt = actors.owner.send(feed.functions.set_answer(price))
        round_id = feed.functions.latest_round().call()
        answers[round_id] = price
        times[round_id] = block_time(w3, receipt)
    latest = max(answers)
    assert (cl.decimals().call(), cl.description().call(), cl.version().call()) == (8, "ETH / USD", 4)
    assert cl.latestRound().call() == latest == 4
    assert cl.latestAnswer().call() == answers[latest]
    assert cl.latestTimestamp().call() == times[latest]
    assert tuple(cl.latestRoundData().call()) == (latest, answers[latest], times[latest], times[latest], latest)
    for round_id in answers:   # round 1 and the latest round included
        assert tuple(cl.getRoundData(round_id).call()) == (round_id, answers[round_id], times[round_id],
                                                             times[round_id], round_id)
        assert cl.getAnswer(round_id).call() == answers[round_id]
        assert cl.getTimestamp(round_id).call() == times[round_id]
    for missing in (0, latest + 1, 2**80 - 1):
        with pytest.raises((ContractLogicError, TransactionFailed), match="No data present"):
            cl.getRoundData(missing).call()
        assert cl.getAnswer(missing).call() == 0 and cl.getTimestamp(missing).call() == 0
    assert cl.getAnswer(2**256 - 1).call() == 0 and cl.getTimestamp(2**200).call() == 0
    # The engine reads latestRoundData only: the same tuple through the feed's own ABI.
    assert tuple(feed.functions.latestRoundData().call()) == tuple(cl.latestRoundData().call())


def test_feed_history_keeps_answers_above_the_packed_lane(w3, actors, tester):
    big = 2**130
    f = deploy_contract(w3, actors.owner, "PriceFeed", 18, "BIG / USD", big, 1, 2**200)
    actors.owner.send(f.functions.set_answer(7))
    abi = json.loads(CHAINLINK_ABI.read_text())
    cl = w3.eth.contract(address=f.address, abi=abi).functions
    assert cl.getAnswer(1).call() == big and cl.getRoundData(1).call()[1] == big
    assert cl.getAnswer(2).call() == 7 and cl.latestAnswer().call() == 7
