# pragma version 0.4.3
# pragma nonreentrancy on
"""
@title PriceFeed
@notice A settable price feed for local chains with Chainlink's AggregatorV3 read interface.
@dev Glossary:
     answer      - the price, scaled by 10**decimals (USD per whole unit of the asset)
     round       - one call to set_answer; round ids start at 1 and grow by one
     updater     - the only address allowed to call set_answer
     min/max     - the answer bounds, as Chainlink's OffchainAggregator has them; set_answer
                   reverts outside them so that no answer can overflow the engine's arithmetic
"""

# ---------------------------------------------------------------- EVENTS

# Chainlink's AggregatorInterface event, emitted on every update.
event AnswerUpdated:
    current: indexed(int256)
    roundId: indexed(uint256)
    updatedAt: uint256

event NewRound:
    roundId: indexed(uint256)
    startedBy: indexed(address)
    startedAt: uint256

event UpdaterSet:
    previous: indexed(address)
    updater: indexed(address)

event OwnershipTransferred:
    previous: indexed(address)
    owner: indexed(address)

# ---------------------------------------------------------------- STORAGE

decimals: public(uint8)               # answer decimals (<= 18)
description: public(String[64])       # e.g. "ETH / USD"
version: public(constant(uint256)) = 4

owner: public(address)                # may set the updater and transfer ownership
updater: public(address)              # may call set_answer
min_answer: public(int256)            # answer units; lowest accepted answer (> 0)
max_answer: public(int256)            # answer units; highest accepted answer

latest_round: public(uint80)          # id of the latest round (0 before the first update)
latest_answer: public(int256)         # answer units
latest_timestamp: public(uint256)     # seconds; block timestamp of the latest update

# ---------------------------------------------------------------- CONSTRUCTOR

@deploy
def __init__(
    _decimals: uint8,
    _description: String[64],
    _initial_answer: int256,
    _min_answer: int256,
    _max_answer: int256,
):
    assert _decimals <= 18, "bad decimals"
    assert 0 < _min_answer and _min_answer <= _max_answer, "bad bounds"
    self.decimals = _decimals
    self.description = _description
    self.min_answer = _min_answer
    self.max_answer = _max_answer
    self.owner = msg.sender
    self.updater = msg.sender
    log OwnershipTransferred(previous=empty(address), owner=msg.sender)
    log UpdaterSet(previous=empty(address), updater=msg.sender)
    if _initial_answer != 0:
        self._set(_initial_answer)

# ---------------------------------------------------------------- VIEWS

@view
@external
def latestRoundData() -> (uint80, int256, uint256, uint256, uint80):
    """
    @return (roundId, answer, startedAt, updatedAt, answeredInRound) as Chainlink returns them
    """
    return (
        self.latest_round,
        self.latest_answer,
        self.latest_timestamp,
        self.latest_timestamp,
        self.latest_round,
    )

@view
@external
def latestAnswer() -> int256:
    return self.latest_answer

@view
@external
def latestTimestamp() -> uint256:
    return self.latest_timestamp

# ---------------------------------------------------------------- ACTIONS

@external
def set_answer(answer: int256):
    """
    @notice Publish a new answer (a new round) at the current block timestamp.
    """
    assert msg.sender == self.updater, "not updater"
    self._set(answer)

@internal
def _set(answer: int256):
    assert answer >= self.min_answer and answer <= self.max_answer, "answer out of range"
    round_id: uint80 = self.latest_round + 1
    self.latest_round = round_id
    self.latest_answer = answer
    self.latest_timestamp = block.timestamp
    log NewRound(roundId=convert(round_id, uint256), startedBy=msg.sender, startedAt=block.timestamp)
    log AnswerUpdated(current=answer, roundId=convert(round_id, uint256), updatedAt=block.timestamp)

# ---------------------------------------------------------------- ADMIN

@external
def set_updater(updater: address):
    assert msg.sender == self.owner, "not owner"
    log UpdaterSet(previous=self.updater, updater=updater)
    self.updater = updater

@external
def transfer_ownership(new_owner: address):
    assert msg.sender == self.owner, "not owner"
    assert new_owner != empty(address), "zero address"
    log OwnershipTransferred(previous=self.owner, owner=new_owner)
    self.owner = new_owner
