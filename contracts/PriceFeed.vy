# pragma version 0.4.3
# pragma nonreentrancy on
"""
@title PriceFeed
@notice A settable price feed for local chains with Chainlink's whole AggregatorV2V3 read
        interface: latestRoundData, getRoundData for every past round, latestRound, getAnswer,
        getTimestamp, latestAnswer, latestTimestamp, decimals, description, version.
@dev Glossary:
     answer      - the price, scaled by 10**decimals (USD per whole unit of the asset)
     round       - one call to set_answer; round ids start at 1 and grow by one; every round is
                   kept (answer and timestamp), as Chainlink's aggregators keep theirs
     no data     - a round that does not exist: getRoundData reverts "No data present" (as
                   Chainlink's aggregators do), getAnswer and getTimestamp return 0 (V2 semantics)
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

# ---------------------------------------------------------------- CONSTANTS
# Lanes of round_data (see STORAGE).

ANSWER_MASK: constant(uint256) = 2**128 - 1     # bits 0-127: min(answer, ANSWER_CAP)
ANSWER_CAP: constant(uint256) = ANSWER_MASK     # answer units; a lane at the cap means "read latest_answer"
ROUND_SHIFT: constant(uint256) = 128            # bits 128-207: the round id
ROUND_MASK: constant(uint256) = 2**80 - 1
TIMESTAMP_SHIFT: constant(uint256) = 208        # bits 208-255: min(timestamp, TIMESTAMP_CAP)
TIMESTAMP_CAP: constant(uint256) = 2**48 - 1    # seconds; a lane at the cap means "read latest_timestamp"

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

# A packed copy of the latest round, appended so that every slot above keeps its number:
# latestRoundData reads one cold slot instead of three.
# dev: every answer is 0 (no round yet) or in [min_answer, max_answer] with min_answer > 0, so it
#      is >= 0; a lane at its cap means "read the variable above", which holds the exact value.
round_data: uint256                   # packed: min(latest_answer, ANSWER_CAP) (answer units) | latest_round << ROUND_SHIFT | min(latest_timestamp, TIMESTAMP_CAP) (seconds) << TIMESTAMP_SHIFT

# Every round, packed like round_data without the id: one slot per round (Chainlink's history).
rounds: HashMap[uint80, uint256]      # round id -> min(answer, ANSWER_CAP) (answer units) | timestamp (seconds) << ROUND_SHIFT
big_answers: HashMap[uint80, int256]  # round id -> answer units, only for answers at or above ANSWER_CAP

# Copies of the bounds, which only the constructor writes, read from code by set_answer.
MIN_ANSWER: immutable(int256)         # answer units; = min_answer
MAX_ANSWER: immutable(int256)         # answer units; = max_answer

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
    MIN_ANSWER = _min_answer
    MAX_ANSWER = _max_answer
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
    data: uint256 = self.round_data
    round_id: uint80 = convert((data >> ROUND_SHIFT) & ROUND_MASK, uint80)
    answer: int256 = convert(data & ANSWER_MASK, int256)
    if answer == convert(ANSWER_CAP, int256):
        answer = self.latest_answer
    updated_at: uint256 = data >> TIMESTAMP_SHIFT
    if updated_at == TIMESTAMP_CAP:
        updated_at = self.latest_timestamp
    return (round_id, answer, updated_at, updated_at, round_id)

@view
@external
def getRoundData(_roundId: uint80) -> (uint80, int256, uint256, uint256, uint80):
    """
    @return (roundId, answer, startedAt, updatedAt, answeredInRound) of round _roundId; reverts
            "No data present" for a round that does not exist
    """
    answer: int256 = 0
    updated_at: uint256 = 0
    answer, updated_at = self._round(_roundId)
    assert updated_at != 0, "No data present"
    return (_roundId, answer, updated_at, updated_at, _roundId)

@view
@external
def latestRound() -> uint256:
    return convert(self.latest_round, uint256)

@view
@external
def getAnswer(_roundId: uint256) -> int256:
    """
    @return the answer of round _roundId, 0 when there is no such round
    """
    if _roundId > convert(max_value(uint80), uint256):
        return 0
    return self._round(convert(_roundId, uint80))[0]

@view
@external
def getTimestamp(_roundId: uint256) -> uint256:
    """
    @return the timestamp (seconds) of round _roundId, 0 when there is no such round
    """
    if _roundId > convert(max_value(uint80), uint256):
        return 0
    return self._round(convert(_roundId, uint80))[1]

@view
@external
def latestAnswer() -> int256:
    return self.latest_answer

@view
@external
def latestTimestamp() -> uint256:
    return self.latest_timestamp

@view
@internal
def _round(round_id: uint80) -> (int256, uint256):
    """(answer, timestamp) of a round; (0, 0) when it does not exist."""
    data: uint256 = self.rounds[round_id]
    if data == 0:
        return (0, 0)
    answer: int256 = convert(data & ANSWER_MASK, int256)
    if answer == convert(ANSWER_CAP, int256):
        answer = self.big_answers[round_id]
    return (answer, data >> ROUND_SHIFT)

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
    assert answer >= MIN_ANSWER and answer <= MAX_ANSWER, "answer out of range"
    round_id: uint80 = self.latest_round + 1
    self.latest_round = round_id
    self.latest_answer = answer
    self.latest_timestamp = block.timestamp
    lane: uint256 = min(convert(answer, uint256), ANSWER_CAP)
    self.round_data = lane | (convert(round_id, uint256) << ROUND_SHIFT) \
        | (min(block.timestamp, TIMESTAMP_CAP) << TIMESTAMP_SHIFT)
    # dev: block.timestamp > 0, so a stored round is never 0 (0 means "no such round")
    self.rounds[round_id] = lane | (block.timestamp << ROUND_SHIFT)
    if lane == ANSWER_CAP:
        self.big_answers[round_id] = answer
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
