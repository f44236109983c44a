"""The model against the contracts, step by step (SPEC invariant 7.5).

A Hypothesis state machine applies one random sequence of deposits, withdrawals, trades, price
moves, liquidations, collateral liquidations, bad-debt settlements, pauses, parameter changes and
jumps in time to a deployment on eth-tester *and* to :mod:`protocol_model`, and after every step
checks that both agree: every state field, every health figure, every token balance, and for a
reverting step the same reason. Each example draws its decimals case (q6 / q8 / q18) first.

How a step runs (one transaction at most, so that 200 examples of 30 steps take a few minutes):

* The model goes first, at the timestamp of the block the transaction will be mined in (eth-tester
  mines one block per transaction; the pending block's timestamp is read from the chain).
* If the model succeeds, the transaction is sent and must succeed, its event must carry the
  model's result, and then the whole state is read back and compared: every tracked account's
  fields (the traders and the house), the protocol-level fields (insurance fund, pause flag,
  parameters, market and collateral parameters, total collateral, each feed's round, answer and
  time) and every token balance straight from storage, at the slots the Vyper compiler's storage
  layout gives (checked against the getters once per session), which costs a fraction of
  executing views on py-evm; the engine's ``health`` of every account whose inputs changed
  (fields, feeds, parameters) against the model's and the HealthBook's. The Lens
  (``Lens.accounts``, all tracked accounts with their health in one call) is compared in full
  after the setup and whenever the ``read_through_lens`` rule runs.
* If the model reverts, the same call is executed against the pending block (``eth_call`` with the
  pending block's timestamp and state, exactly the context the transaction would have) and must
  revert with the same reason. Nothing is sent, so the chain is untouched, and the model (state and
  wallets) must be untouched too: it is compared with a copy taken before the step.
* Liquidation steps first compare ``preview_liquidate`` / ``preview_liquidate_collateral`` with the
  model's previews (plan field by field, or the revert reason).

Coverage: random rules alone rarely chain margin, leverage, an adverse price, a liquidation, a
collateral liquidation and a bad-debt settlement (Hypothesis also disables random subsets of rules
per example), so the ``drive`` rule advances that story by one transaction per call, choosing from
the model (it moves a feed to a position's model-computed liquidation price, for instance).

Determinism: eth-tester stamps a block with ``max(parent + 1, wall clock)``. Each example starts by
travelling a day ahead of the wall clock, so every block is ``parent + 1`` and a sequence replays
identically; the feeds are then re-published (at drawn initial prices) so that they are fresh.
Each example starts from a chain snapshot and reverts to it in ``teardown``.
"""

from __future__ import annotations

import copy
import functools
import time
from dataclasses import dataclass
from typing import Any, Callable

import pytest
from eth_tester.exceptions import TransactionFailed
from eth_utils import function_signature_to_4byte_selector, keccak, to_canonical_address
from hypothesis import event, note, settings
from hypothesis.errors import InvalidArgument
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, rule, run_state_machine_as_test
from web3 import Web3

import contracts
import protocol_model as pm
from protocol_model import WAD, Revert
from protocol_model.wad import MAX_AMOUNT, MAX_PRICE, MAX_SIZE, MAX_TOTAL_COLLATERAL, UINT256_MAX

MAX_UINT = UINT256_MAX
GAS = 5_000_000
DAY = 86_400
OUTCOMES: dict[str, int] = {}   # step outcome -> count over the session (printed with -s)
RUNS = {"examples": 0, "rules": 0}

# ---------------------------------------------------------------- settings
# The numbers come from the loaded Hypothesis profile (tests/conftest.py): "ci" is the quick default
# run; "long" (XMARGIN_HYPOTHESIS_PROFILE=long, run by .ci/run after the default run) draws 220
# examples of 30 steps, so that at least 200 run all 30 (a few end early); "nightly" is longer.
DIFFERENTIAL = settings(settings(), deadline=None)


def _note(message: str) -> None:
    """``hypothesis.note`` inside an example; a print in a named regression test that runs steps."""
    try:
        note(message)
    except InvalidArgument:
        print(message)


def _event(label: str) -> None:
    OUTCOMES[label] = OUTCOMES.get(label, 0) + 1
    try:
        event(label)
    except InvalidArgument:
        pass


# ---------------------------------------------------------------- ABI, by hand
# web3's encoders and middleware cost more than the EVM here: the harness encodes calldata itself
# (every argument is a static word) and talks to eth-tester directly.


def _word(x: int | str | bool) -> bytes:
    if isinstance(x, str):
        return int(x, 16).to_bytes(32, "big")
    return (int(x) % 2**256).to_bytes(32, "big")


@functools.cache
def _selector(signature: str) -> bytes:
    return function_signature_to_4byte_selector(signature)


def calldata(signature: str, *args: int | str | bool) -> str:
    return "0x" + (_selector(signature) + b"".join(_word(a) for a in args)).hex()


def accounts_calldata(engine: str, addrs: list[str]) -> str:
    body = _word(engine) + _word(64) + _word(len(addrs)) + b"".join(_word(a) for a in addrs)
    return "0x" + (_selector("accounts(address,address[])") + body).hex()


ORDERS_SIGNATURE = "(address,uint256,address,uint256)[]"


def orders_calldata(function: str, orders: list[pm.LiquidationOrder]) -> str:
    """``liquidate_many`` / ``preview_liquidate_many`` calldata: a dynamic array of static structs."""
    body = _word(32) + _word(len(orders)) + b"".join(
        _word(o.account) + _word(o.market) + _word(o.token) + _word(o.amount) for o in orders)
    return "0x" + (_selector(f"{function}({ORDERS_SIGNATURE})") + body).hex()


def _words(hexdata: str | bytes) -> list[int]:
    raw = bytes.fromhex(hexdata[2:]) if isinstance(hexdata, str) else bytes(hexdata)
    return [int.from_bytes(raw[i:i + 32], "big") for i in range(0, len(raw), 32)]


def _signed(x: int) -> int:
    return x - 2**256 if x >= 2**255 else x


_ADDR: dict[int, str] = {}


def _addr(x: int) -> str:
    a = _ADDR.get(x)
    if a is None:
        a = _ADDR[x] = Web3.to_checksum_address(x.to_bytes(20, "big"))
    return a


def _reason(exc: TransactionFailed) -> str:
    msg = exc.args[0] if exc.args else ""
    return msg if isinstance(msg, str) and not msg.startswith("b'") else ""


# ---------------------------------------------------------------- storage layout


@functools.cache
def storage_slots(contract: str) -> dict[str, int]:
    """Variable -> slot, from the compiler's storage layout of ``contracts/<contract>.vy``."""
    from vyper.compiler import compile_code

    layout = compile_code(contracts.source(contract), contract_path=f"{contract}.vy",
                          output_formats=["layout"])["layout"]["storage_layout"]
    return {name: int(v["slot"]) for name, v in layout.items()}


def hashmap_slot(slot: int, *keys: int | str) -> int:
    """Vyper's HashMap element slot: keccak256(slot ++ key), nested key by key."""
    for key in keys:
        k = int(key, 16) if isinstance(key, str) else key
        slot = int.from_bytes(keccak(slot.to_bytes(32, "big") + k.to_bytes(32, "big")), "big")
    return slot


class RawChain:
    def __init__(self, tester: Any) -> None:
        self.tester = tester

    def pending_timestamp(self) -> int:
        return int(self.tester.get_block_by_number("pending")["timestamp"])

    def latest_timestamp(self) -> int:
        return int(self.tester.get_block_by_number("latest")["timestamp"])

    def send(self, sender: str, to: str, data: str) -> tuple[bool, str | None, list[Any]]:
        """Mine one transaction; (succeeded, reason if it failed, the receipt's logs)."""
        h = self.tester.send_transaction({"from": sender, "to": to, "data": data, "gas": GAS})
        receipt = self.tester.get_transaction_receipt(h)
        if receipt["status"] == 1:
            return True, None, list(receipt["logs"])
        # A failed transaction changes no contract state: replay it on the block it failed in.
        return False, self.call_reason(sender, to, data, "latest"), []

    def call(self, sender: str, to: str, data: str, block: str = "latest") -> str:
        return self.tester.call({"from": sender, "to": to, "data": data}, block)

    def call_reason(self, sender: str, to: str, data: str, block: str = "pending") -> str | None:
        """None if the call succeeds in ``block``'s context, else the revert reason."""
        try:
            self.call(sender, to, data, block)
        except TransactionFailed as exc:
            return _reason(exc)
        return None

    def storage(self) -> Callable[[str, int], int]:
        """A reader of the latest state's storage: ``read(address, slot) -> int``."""
        state = self.tester.backend.chain.get_vm().state   # the pending block: the latest state
        canon: dict[str, bytes] = {}

        def read(address: str, slot: int) -> int:
            a = canon.get(address)
            if a is None:
                a = canon[address] = to_canonical_address(address)
            return int(state.get_storage(a, slot))

        return read


# ---------------------------------------------------------------- events
# The model's results mirror the data (non-indexed fields) of the action's event, field by field.
EVENTS = {
    "deposit": "Deposit(address,address,uint256,int256,uint256)",
    "withdraw": "Withdraw(address,address,uint256,int256,uint256)",
    "trade": "Trade(address,uint256,int256,uint256,int256,uint256,int256,int256,int256,int256,int256,int256)",
    "liquidate": "Liquidation(address,uint256,address,int256,uint256,int256,uint256,uint256,uint256,uint256,int256,int256,int256,int256,int256,int256)",
    "liquidate_collateral": "CollateralLiquidation(address,address,address,uint256,uint256,uint256,uint256,int256,uint256,uint256,int256)",
    "settle_bad_debt": "BadDebtSettled(address,uint256,uint256,uint256,int256,uint256)",
    "skipped": "LiquidationSkipped(address,address,uint256,uint256)",
}
TOPICS = {kind: keccak(text=sig) for kind, sig in EVENTS.items()}


def _as_bytes(x: Any) -> bytes:
    return bytes.fromhex(x[2:]) if isinstance(x, str) else bytes(x)


def event_data(logs: list[Any], kind: str) -> list[tuple[int, ...]]:
    """The decoded data words of every ``kind`` event in a receipt's logs."""
    topic = TOPICS[kind]
    return [tuple(_signed(w) for w in _words(_as_bytes(log["data"])))
            for log in logs if log["topics"] and _as_bytes(log["topics"][0]) == topic]


# ---------------------------------------------------------------- views, normalised

N_MARKETS, N_COLLS = 16, 8
ACCOUNT_WORDS = 4 + 2 * N_MARKETS + N_COLLS + 3


def decode_accounts(words: list[int]) -> dict[str, dict[str, Any]]:
    """``Lens.accounts`` output (a dynamic array of static structs)."""
    n = words[1]
    out = {}
    for k in range(n):
        w = words[2 + k * ACCOUNT_WORDS: 2 + (k + 1) * ACCOUNT_WORDS]
        sizes = [_signed(x) for x in w[4:4 + N_MARKETS]]
        quotes = [_signed(x) for x in w[4 + N_MARKETS:4 + 2 * N_MARKETS]]
        colls = w[4 + 2 * N_MARKETS:4 + 2 * N_MARKETS + N_COLLS]
        out[_addr(w[0])] = {
            "cash": _signed(w[1]),
            "active_markets": w[2],
            "held_collaterals": w[3],
            "positions": {m: (sizes[m], quotes[m]) for m in range(N_MARKETS) if sizes[m] or quotes[m]},
            "collateral": {i: colls[i] for i in range(N_COLLS) if colls[i]},
            "health": tuple(_signed(x) for x in w[4 + 2 * N_MARKETS + N_COLLS:]),
        }
    return out


def model_accounts(state: pm.ProtocolState, addrs: list[str]) -> dict[str, dict[str, Any]]:
    out = {}
    for a in addrs:
        if a == state.engine and state.house is not None:
            acc = state.house
        else:
            acc = state.accounts.get(a) or pm.Account(a)
        index = {c.token: c.index for c in state.collaterals}
        out[a] = {
            "cash": acc.cash,
            "active_markets": acc.active_markets,
            "held_collaterals": state.held_mask(acc),
            "positions": {m: (p.size, p.quote) for m, p in acc.positions.items()},
            "collateral": {index[t]: b for t, b in acc.collateral.items() if b},
            "health": _model_health(state, acc),
        }
    return out


def _model_health(state: pm.ProtocolState, acc: pm.Account) -> tuple[Any, ...]:
    try:
        return tuple(pm.health(state, acc))
    except Revert as exc:
        return ("revert", exc.reason)


def chain_account_fields(read: Callable[[str, int], int], state: pm.ProtocolState, a: str) -> dict[str, Any]:
    """One account's stored fields, slot by slot (everything but health)."""
    e = storage_slots("MarginEngine")
    engine = state.engine
    positions = {}
    for m in range(len(state.markets)):   # struct Position: size, quote
        base = hashmap_slot(e["position"], a, m)
        size, quote = _signed(read(engine, base)), _signed(read(engine, base + 1))
        if size or quote:
            positions[m] = (size, quote)
    colls = {c.index: read(engine, hashmap_slot(e["collateral"], a, c.token)) for c in state.collaterals}
    return {
        "cash": _signed(read(engine, hashmap_slot(e["cash"], a))),
        "active_markets": read(engine, hashmap_slot(e["active_markets"], a)),
        "held_collaterals": read(engine, hashmap_slot(e["held_collaterals"], a)),
        "positions": positions,
        "collateral": {i: b for i, b in colls.items() if b},
    }


def chain_health(chain: "RawChain", engine: str, a: str, caller: str) -> tuple[Any, ...]:
    """The engine's ``health(a)`` view, or ("revert", reason)."""
    try:
        return tuple(_signed(w) for w in _words(chain.call(caller, engine, calldata("health(address)", a))))
    except TransactionFailed as exc:
        return ("revert", _reason(exc))


def model_protocol(state: pm.ProtocolState) -> dict[str, Any]:
    return {
        "insurance_fund": state.insurance_fund,
        "paused": state.params.paused,
        "params": (state.params.keeper_share, state.params.max_price_age, state.params.dust_notional),
        "markets": [(m.imf, m.mmf, m.liquidation_fee, m.taker_fee, m.oi_cap, pm.price_age(state, m)) for m in state.markets],
        "collaterals": [(c.init_weight, c.maint_weight, c.liquidation_discount, c.deposit_cap, c.index,
                         pm.price_age(state, c)) for c in state.collaterals],
        "packed": packed_words(state),
        "total_collateral": [state.total_collateral.get(c.token, 0) for c in state.collaterals],
        "feeds": {a: (f.round_id, f.answer, f.updated_at) for a, f in state.feeds.items()},
    }


def chain_protocol(read: Callable[[str, int], int], state: pm.ProtocolState) -> dict[str, Any]:
    """The same fields as :func:`model_protocol`, from the engine's and the feeds' storage."""
    e, f = storage_slots("MarginEngine"), storage_slots("PriceFeed")
    engine = state.engine

    def markets() -> list[tuple[int, ...]]:
        out = []
        for m in state.markets:   # struct Market: feed, price_scale, imf, mmf, liquidation_fee, taker_fee, oi_cap, max_price_age
            base = hashmap_slot(e["market"], m.id)
            out.append(tuple(read(engine, base + k) for k in range(2, 8)))
        return out

    def collaterals() -> list[tuple[int, ...]]:
        out = []
        for c in state.collaterals:   # struct CollateralConfig: ..., init_weight (4) .. deposit_cap (7), index, max_price_age
            base = hashmap_slot(e["collateral_config"], c.token)
            out.append(tuple(read(engine, base + k) for k in range(4, 10)))
        return out

    def packed() -> dict[str, Any]:
        return {
            "hot_params": read(engine, e["hot_params"]),
            "markets": [(read(engine, hashmap_slot(e["market_words"], m.id)),
                         read(engine, hashmap_slot(e["market_words"], m.id) + 1)) for m in state.markets],
            "collaterals": [(read(engine, hashmap_slot(e["collateral_words"], c.index)),
                             read(engine, hashmap_slot(e["collateral_words"], c.index) + 1),
                             read(engine, hashmap_slot(e["collateral_info"], c.token))) for c in state.collaterals],
        }

    return {
        "insurance_fund": read(engine, e["insurance_fund"]),
        "paused": bool(read(engine, e["paused"])),
        "params": (read(engine, e["keeper_share"]), read(engine, e["max_price_age"]), read(engine, e["dust_notional"])),
        "markets": markets(),
        "collaterals": collaterals(),
        "packed": packed(),
        "total_collateral": [read(engine, hashmap_slot(e["total_collateral"], c.token)) for c in state.collaterals],
        "feeds": {
            a: (read(a, f["latest_round"]), _signed(read(a, f["latest_answer"])), read(a, f["latest_timestamp"]))
            for a in state.feeds
        },
    }


def packed_words(state: pm.ProtocolState) -> dict[str, Any]:
    """The engine's packed copies of the configuration, built here from the readable config with
    the lane layout documented in MarginEngine.vy (CONSTANTS), written independently of it: after
    every step (every admin action included) each stored word must equal this."""
    def addr(a: str) -> int:
        return int(a, 16)

    def exponent(scale: int) -> int:
        return len(str(scale)) - 1    # scale = 10**exponent

    p = state.params
    hot = int(p.paused) | len(state.markets) << 8 | p.keeper_share << 16 | p.dust_notional << 80
    markets = [(addr(m.feed) | exponent(m.price_scale) << 160 | int(m.oi_cap != 0) << 168 | pm.price_age(state, m) << 176,
                m.imf | m.mmf << 64 | m.liquidation_fee << 128 | m.taker_fee << 192) for m in state.markets]
    collaterals = [(addr(c.token) | c.decimals << 160 | exponent(c.price_scale) << 168 | c.init_weight << 176,
                    addr(c.feed) | c.maint_weight << 160 | pm.price_age(state, c) << 224,
                    1 | c.index << 8 | c.liquidation_discount << 16) for c in state.collaterals]
    return {"hot_params": hot, "markets": markets, "collaterals": collaterals}


# ---------------------------------------------------------------- the harness shared by examples


@dataclass
class Case:
    """One deployment (decimals case), funded, with its model state and wallets at the snapshot."""

    name: str
    engine: str
    lens: str
    tokens: dict[str, str]        # "quote" / "WETH" / "WBTC" -> token address
    units: dict[str, int]         # same keys -> 10**decimals
    feeds: dict[str, str]         # "ETH" / "BTC" -> feed address
    accounts_call: str            # Lens.accounts calldata for the tracked accounts
    state: pm.ProtocolState
    wallets: pm.Wallets


class Harness:
    """Funds the actors on every deployment once (inside the test's snapshot) and loads the model."""

    TRADERS = ("trader", "trader2", "rival", "outsider")
    CALLERS = ("trader", "trader2", "rival", "outsider", "liquidator")

    def __init__(self, deployments: dict[str, Any], actors: Any, tester: Any) -> None:
        self.tester = tester
        self.chain = RawChain(tester)
        self.actors = {name: getattr(actors, name).address for name in ("owner",) + self.CALLERS}
        self.holders = list(self.actors.values())
        self.cases = {name: self._prepare(name, protocol) for name, protocol in deployments.items()}

    def _send(self, sender: str, to: str, signature: str, *args: int | str) -> None:
        ok, reason, _ = self.chain.send(sender, to, calldata(signature, *args))
        if not ok:
            raise RuntimeError(f"setup transaction {signature}{args} failed: {reason}")

    def _prepare(self, name: str, protocol: Any) -> Case:
        dep = protocol.dep
        owner = self.actors["owner"]
        engine = dep.engine
        tokens = {"quote": dep.quote, **{sym: c["token"] for sym, c in dep.collaterals.items()}}
        units = {"quote": 10**dep.quote_decimals, **{sym: 10 ** int(c["decimals"]) for sym, c in dep.collaterals.items()}}
        # The callers are rich and approve everything; the outsider holds little and approves little
        # (quote) or nothing (WETH), so that token reverts happen too. The owner can seed a little.
        for actor in ("trader", "trader2", "rival", "liquidator"):
            for tok in tokens.values():
                self._send(owner, tok, "mint(address,uint256)", self.actors[actor], 2**160)
                self._send(self.actors[actor], tok, "approve(address,uint256)", engine, MAX_UINT)
        out = self.actors["outsider"]
        for key, tok in tokens.items():
            self._send(owner, tok, "mint(address,uint256)", out, 1_000 * units[key])
        self._send(out, tokens["quote"], "approve(address,uint256)", engine, 500 * units["quote"])
        self._send(out, tokens["WBTC"], "approve(address,uint256)", engine, MAX_UINT)
        self._send(owner, tokens["quote"], "mint(address,uint256)", owner, 10**6 * units["quote"])
        self._send(owner, tokens["quote"], "approve(address,uint256)", engine, 10**6 * units["quote"])

        state = load_state(protocol, engine)
        addrs = [self.actors[a] for a in self.TRADERS] + [engine]
        accounts_call = accounts_calldata(engine, addrs)
        for a, v in decode_accounts(_words(self.chain.call(owner, dep.lens, accounts_call))).items():
            acc = state.account(a)
            acc.cash = v["cash"]
            acc.positions = {m: pm.Position(s, q) for m, (s, q) in v["positions"].items()}
            acc.collateral = {state.collaterals[i].token: b for i, b in v["collateral"].items()}

        wallets = pm.Wallets()
        for tok in tokens.values():
            for holder in self.holders + [engine]:
                balance = _words(self.chain.call(owner, tok, calldata("balanceOf(address)", holder)))[0]
                wallets.balances.setdefault(tok, {})[holder] = balance
                allowance = _words(self.chain.call(owner, tok, calldata("allowance(address,address)", holder, engine)))[0]
                if allowance:
                    wallets.approve(tok, holder, engine, allowance)
        case = Case(name, engine, dep.lens, tokens, units, dict(dep.feeds), accounts_call, state, wallets)
        self._check_layout(case)
        return case

    def _check_layout(self, case: Case) -> None:
        """The storage reader agrees with the getters (so a layout change fails loudly here)."""
        owner = self.actors["owner"]
        read = self.chain.storage()
        got = chain_protocol(read, case.state)
        want = model_protocol(case.state)
        if got != want:
            raise RuntimeError(f"storage layout reader disagrees with the getters: {got} != {want}")
        slot = storage_slots("Token")["balanceOf"]
        for tok in case.tokens.values():
            on_chain = _words(self.chain.call(owner, tok, calldata("balanceOf(address)", case.engine)))[0]
            if read(tok, hashmap_slot(slot, case.engine)) != on_chain:
                raise RuntimeError("storage layout reader disagrees with Token.balanceOf")


def load_state(protocol: Any, engine: str) -> pm.ProtocolState:
    """A model state from the deployment's configuration getters and the feeds."""
    eng = protocol.engine
    owner = eng.functions.owner().call()
    params = pm.Params(
        quote_token=eng.functions.quote_token().call(), quote_scale=eng.functions.quote_scale().call(),
        keeper_share=eng.functions.keeper_share().call(), max_price_age=eng.functions.max_price_age().call(),
        dust_notional=eng.functions.dust_notional().call(), paused=eng.functions.paused().call(), owner=owner,
    )
    markets = []
    feeds: dict[str, pm.Feed] = {}
    for m in range(eng.functions.market_count().call()):
        feed, scale, imf, mmf, fee, taker, cap, age = eng.functions.market(m).call()
        markets.append(pm.Market(m, feed, scale, imf, mmf, fee, taker, cap, max_price_age=age))
    collaterals = []
    for i in range(eng.functions.collateral_count().call()):
        token = eng.functions.collateral_tokens(i).call()
        feed, scale, decimals, unit, iw, mw, disc, cap, index, age = eng.functions.collateral_config(token).call()
        collaterals.append(pm.Collateral(token, feed, scale, decimals, unit, iw, mw, disc, cap, index, max_price_age=age))
    for feed_addr in {m.feed for m in markets} | {c.feed for c in collaterals}:
        from protocol_model.deploy import contract_at

        f = contract_at(protocol.w3, "PriceFeed", feed_addr).functions
        round_id, answer, _, updated_at, _ = f.latestRoundData().call()
        feeds[feed_addr] = pm.Feed(feed_addr, f.decimals().call(), answer, updated_at, round_id,
                                   f.min_answer().call(), f.max_answer().call())
    state = pm.ProtocolState(engine=engine, params=params, markets=markets, collaterals=collaterals, feeds=feeds)
    state.insurance_fund = eng.functions.insurance_fund().call()
    state.total_collateral = {c.token: eng.functions.total_collateral(c.token).call() for c in collaterals}
    return state


# ---------------------------------------------------------------- strategies

CALLERS = st.sampled_from(Harness.CALLERS)
ACCOUNTS = st.sampled_from(("auto", "auto", "auto", "trader", "trader2", "rival", "outsider", "house"))
TOKENS = st.sampled_from(("quote", "quote", "quote", "WETH", "WETH", "WBTC", "WBTC", "unlisted"))
COLL_TOKENS = st.sampled_from(("WETH", "WETH", "WBTC", "WBTC", "quote", "unlisted"))
MARKETS = st.sampled_from((0, 0, 0, 1, 1, 1, 2))

AMOUNTS = st.one_of(
    st.tuples(st.just("whole"), st.integers(1, 10**6)),
    st.tuples(st.just("whole"), st.integers(1, 10**4)),
    st.tuples(st.just("wei"), st.integers(0, 1000)),
    st.tuples(st.just("raw"), st.integers(1, MAX_AMOUNT)),
    st.tuples(st.just("bound"), st.integers(-1, 1)),            # MAX_AMOUNT + d
    st.tuples(st.just("cap"), st.integers(-1, 1)),              # takes the token's total to its bound + d
)
WITHDRAWALS = st.one_of(
    st.tuples(st.just("frac"), st.integers(1, 1000)),
    st.tuples(st.just("frac"), st.integers(1, 300)),
    st.just(("all", 0)),
    st.tuples(st.just("wei"), st.integers(0, 1000)),
    st.just(("over", 0)),
)
SIZES = st.one_of(
    st.tuples(st.just("lev"), st.integers(1, 1200)),            # permille of the init-margin capacity
    st.tuples(st.just("lev"), st.integers(1, 1200)),
    st.tuples(st.just("wei"), st.integers(0, 1000)),
    st.tuples(st.just("close"), st.just(0)),
    st.tuples(st.just("flip"), st.integers(1, 1000)),
    st.tuples(st.just("max"), st.integers(-2, 2)),              # MAX_SIZE + d
    st.tuples(st.just("raw"), st.integers(1, MAX_SIZE)),
    st.tuples(st.just("away"), st.integers(-1, 1)),             # to MAX_SIZE + d from the current size
)
LIMITS = st.sampled_from(("any", "any", "any", "any", "exact", "worse", "better"))
PRICE_MOVES = st.one_of(
    st.tuples(st.just("mul"), st.integers(850, 1150)),          # answer * permille / 1000
    st.tuples(st.just("mul"), st.integers(500, 1500)),
    st.tuples(st.just("mul"), st.integers(1, 3000)),
    st.tuples(st.just("abs"), st.sampled_from((-1, 0, 1, 2))),
    st.tuples(st.just("top"), st.integers(-2, 1)),              # max_answer + d
    st.tuples(st.just("same"), st.just(0)),
)
INITIAL_ANSWERS = st.one_of(
    st.just(("default", 0)),
    st.just(("default", 0)),
    st.just(("default", 0)),
    st.tuples(st.just("mul"), st.integers(1, 5000)),
    st.tuples(st.just("abs"), st.integers(1, 1000)),
    st.tuples(st.just("top"), st.integers(-1000, 0)),
)
LIQ_AMOUNTS = st.sampled_from(("all", "all", "all", "one", "frac", "frac", "zero"))


class DifferentialMachine(RuleBasedStateMachine):
    """Contract and model, side by side. ``harness`` is set by the test that runs it."""

    harness: Harness

    def __init__(self) -> None:
        super().__init__()
        self.h = self.harness
        self.chain = self.h.chain
        self.snapshot = self.h.tester.take_snapshot()
        self.case: Case | None = None
        self.model: pm.ProtocolState
        self.wallets: pm.Wallets
        self.steps = 0

    def teardown(self) -> None:
        self.h.tester.revert_to_snapshot(self.snapshot)

    @invariant()
    def count_steps(self) -> None:
        """Only counts: the checks run inside each step. Hypothesis calls this after every rule."""
        RUNS["rules"] += 1

    # ------------------------------------------------------------ plumbing
    @property
    def c(self) -> Case:
        if self.case is None:
            raise RuntimeError("the machine was not initialised")
        return self.case

    def addr(self, name: str) -> str:
        return self.c.engine if name == "house" else self.h.actors[name]

    def token(self, key: str) -> str:
        return self.c.lens if key == "unlisted" else self.c.tokens[key]   # the lens: a contract, no listed token

    def unit(self, key: str) -> int:
        return self.c.units.get(key, 1)

    def account(self, address: str) -> pm.Account:
        return self.model.accounts.get(address) or pm.Account(address)

    @property
    def tracked(self) -> list[str]:
        return [self.h.actors[a] for a in Harness.TRADERS] + [self.c.engine]

    def health_or_zero(self, acc: pm.Account) -> pm.Health:
        """The model's health for choosing arguments (zeros where the engine's would overflow)."""
        try:
            return pm.health(self.model, acc)
        except Revert:
            return pm.Health(0, 0, 0)

    def mirror(self, kind: str, what: str, sender: str, to: str, data: str, model_step: Callable[[], Any],
               after: Callable[[], Any] | None = None) -> Any:
        """Run one step on the model and on the chain and check that they agree.

        ``after`` brings the HealthBook up to date after a success (default: re-read every
        tracked account)."""
        self.steps += 1
        self.model.timestamp = self.chain.pending_timestamp()
        before = copy.deepcopy((self.model, self.wallets))
        try:
            result = model_step()
            expected: str | None = None
        except Revert as exc:
            result, expected = None, exc.reason
        outcome = "ok" if expected is None else repr(expected)
        _note(f"step {self.steps}: {what} at t={self.model.timestamp}: model -> {outcome} {result!r}")
        _event(f"{kind}: {outcome}")
        if expected is None:
            ok, reason, logs = self.chain.send(sender, to, data)
            assert ok, f"{what}: the model succeeded ({result!r}) but the contract reverted with {reason!r}"
            if kind in EVENTS:
                emitted = event_data(logs, kind)
                assert len(emitted) == 1 and emitted[0] == tuple(result)[:len(emitted[0])], (
                    f"{what}: event {EVENTS[kind]} data {emitted} != model result {result!r}"
                )
            if kind in ("liquidate", "liquidate_collateral"):
                settled = pm.auto_settlement(result)
                assert event_data(logs, "settle_bad_debt") == ([] if settled is None else [tuple(settled)]), what
                _event(f"{kind}: settles bad debt" if settled else f"{kind}: no settlement")
            if kind == "liquidate_many":
                self.check_batch_events(logs, result, what)
            if after is not None:
                after()
            else:
                for a in self.tracked:
                    self.book.apply_account(self.model.house if a == self.c.engine else self.account(a))
            self.check_state()
        else:
            reason = self.chain.call_reason(sender, to, data, "pending")
            assert reason == expected, (
                f"{what}: the model reverts with {expected!r}, the contract "
                f"{'succeeds' if reason is None else 'reverts with ' + repr(reason)}"
            )
            assert (self.model, self.wallets) == before, f"{what}: the model changed state on a revert"
        return result

    def check_batch_events(self, logs: list[Any], result: pm.BatchResult, what: str) -> None:
        """The events of a ``liquidate_many``, kind by kind, in order, against its outcomes."""
        want: dict[str, list[tuple[int, ...]]] = {k: [] for k in ("liquidate", "liquidate_collateral", "settle_bad_debt", "skipped")}
        sender = None
        for index, o in enumerate(result.outcomes):
            if not o.executed:
                want["skipped"].append((index, o.status))
                _event(f"liquidate_many: skip {o.reason}")
                continue
            kind = "liquidate_collateral" if isinstance(o.plan, pm.CollateralLiquidationPlan) else "liquidate"
            _event(f"liquidate_many: executed {kind}" + (", settles bad debt" if o.settlement is not None else ""))
            want[kind].append(o.plan)
            if o.settlement is not None:
                want["settle_bad_debt"].append(tuple(o.settlement))
        for kind, items in want.items():
            got = event_data(logs, kind)
            assert len(got) == len(items), f"{what}: {len(got)} {kind} events, the model {len(items)}"
            for g, w in zip(got, items):
                assert g == tuple(w)[:len(g)], f"{what}: {kind} event {g} != model {w!r}"
        del sender

    def check_state(self) -> None:
        """Every field of every tracked account, the protocol and the wallets: model == chain.

        Fields come from storage. The engine's ``health`` view, which costs far more to execute,
        is called for an account only when one of its inputs changed since it last agreed with the
        model: its stored fields, any feed reading, or any parameter (all of which are compared
        here too); otherwise it is a pure function of unchanged inputs. The model's health and the
        HealthBook's are compared with it."""
        c = self.c
        owner = self.h.actors["owner"]
        read = self.chain.storage()
        model = model_accounts(self.model, self.tracked)
        protocol = model_protocol(self.model)
        assert protocol == chain_protocol(read, self.model)
        inputs = (repr(protocol["feeds"]), repr(protocol["markets"]), repr(protocol["collaterals"]))
        for a in self.tracked:
            mine = model[a]
            health_of_model = mine.pop("health")
            assert mine == chain_account_fields(read, self.model, a), f"account {a}"
            key = (repr(mine), inputs)
            if self.verified.get(a) != key:
                on_chain = chain_health(self.chain, c.engine, a, owner)
                assert health_of_model == on_chain, f"health of {a}: model {health_of_model}, engine {on_chain}"
                self.verified[a] = key
            try:
                book: tuple[Any, ...] = tuple(self.book.health(a))
            except Revert as exc:
                book = ("revert", exc.reason)
            assert book == health_of_model, f"HealthBook health of {a}: {book} != {health_of_model}"
        slot = storage_slots("Token")["balanceOf"]
        for key_, tok in c.tokens.items():
            for holder in self.h.holders + [c.engine]:
                got = read(tok, hashmap_slot(slot, holder))
                assert self.wallets.balance(tok, holder) == got, f"{key_} balance of {holder}: model {self.wallets.balance(tok, holder)}, chain {got}"
        assert self.chain.latest_timestamp() == self.model.timestamp, "the transaction was mined at another timestamp"

    def check_lens(self) -> None:
        """The whole tracked state through one ``Lens.accounts`` call (a check of the slot reader
        too). The batch reverts if any account's health overflows; then the model must say so."""
        try:
            out = decode_accounts(_words(self.chain.call(self.h.actors["owner"], self.c.lens, self.c.accounts_call)))
        except TransactionFailed as exc:
            assert any(v["health"][0] == "revert" for v in model_accounts(self.model, self.tracked).values()), (
                f"Lens.accounts reverts ({_reason(exc)!r}) but the model computes every health"
            )
            return
        assert model_accounts(self.model, self.tracked) == out

    def pick_account(self, name: str, want: Callable[[pm.Account], bool]) -> str:
        """``auto``: the first trader for which ``want`` holds (else the first trader)."""
        if name != "auto":
            return self.addr(name)
        for a in Harness.TRADERS:
            acc = self.model.accounts.get(self.h.actors[a])
            if acc is not None and want(acc):
                return acc.address
        return self.h.actors["trader"]

    def compare_preview(self, fn: str, signature: str, args: tuple[Any, ...], model_fn: Callable[[], Any]) -> None:
        """A preview view on the chain against the model's (plan field by field, or the reason)."""
        self.model.timestamp = self.chain.pending_timestamp()
        try:
            expected: tuple[int, ...] | str = tuple(model_fn())
        except Revert as exc:
            expected = exc.reason
        try:
            out = self.chain.call(self.h.actors["owner"], self.c.engine, calldata(signature, *args), "pending")
            got: tuple[int, ...] | str = tuple(_signed(w) for w in _words(out))
        except TransactionFailed as exc:
            got = _reason(exc)
        assert got == expected, f"{fn}{args}: contract {got!r}, model {expected!r}"

    # ------------------------------------------------------------ setup
    @initialize(case=st.sampled_from(("q6", "q8", "q18")), eth=INITIAL_ANSWERS, btc=INITIAL_ANSWERS)
    def setup(self, case: str, eth: tuple[str, int], btc: tuple[str, int]) -> None:
        RUNS["examples"] += 1
        self.case = self.h.cases[case]
        self.model = copy.deepcopy(self.case.state)
        self.wallets = copy.deepcopy(self.case.wallets)
        for a in self.tracked:
            self.model.account(a)
        self.book = pm.HealthBook(self.model)
        self.verified: dict[str, Any] = {}   # account -> the inputs at which its health last agreed
        # A day ahead of the wall clock: blocks are then stamped parent + 1, deterministically.
        self.h.tester.time_travel(max(self.chain.pending_timestamp(), int(time.time())) + DAY)
        for asset, (kind, x) in (("ETH", eth), ("BTC", btc)):
            feed = self.model.feeds[self.c.feeds[asset]]
            answer = {"default": feed.answer, "mul": feed.answer * x // 1000, "abs": x, "top": feed.max_answer + x}[kind]
            self._set_answer(asset, max(answer, 1), "owner")
        self.check_lens()

    @rule()
    def read_through_lens(self) -> None:
        """No transaction: the whole tracked state through the Lens, against the model."""
        self.check_lens()

    def _set_answer(self, asset: str, answer: int, sender_name: str) -> None:
        feed = self.c.feeds[asset]
        owner = self.h.actors["owner"]
        sender = self.h.actors[sender_name]
        f = self.model.feeds[feed]
        self.mirror(
            "set_answer", f"{sender_name} sets {asset} to {answer}", sender, feed, calldata("set_answer(int256)", answer),
            lambda: pm.set_answer(self.model, feed, answer, self.model.timestamp, sender=sender, updater=owner),
            after=lambda: self.book.update_price(feed, f.answer, f.updated_at, f.round_id),
        )

    # ------------------------------------------------------------ account actions
    @rule(actor=CALLERS, token=TOKENS, amount=AMOUNTS)
    def deposit(self, actor: str, token: str, amount: tuple[str, int]) -> None:
        kind, x = amount
        sender, tok = self.addr(actor), self.token(token)
        if kind == "cap":   # the room left under MAX_TOTAL_COLLATERAL whole tokens (the quote token has no cap)
            room = MAX_TOTAL_COLLATERAL * self.unit(token) - self.model.total_collateral.get(tok, 0)
            n = max(room + x, 0)
        else:
            n = {"wei": x, "whole": x * self.unit(token), "raw": x, "bound": MAX_AMOUNT + x}[kind]
        self.mirror("deposit", f"{actor} deposits {n} {token}", sender, self.c.engine,
                    calldata("deposit(address,uint256)", tok, n),
                    lambda: pm.deposit(self.model, sender, tok, n, self.wallets))

    def _holding(self, actor: str, tok: str) -> int:
        acc = self.account(self.addr(actor))
        return max(acc.cash, 0) // self.model.params.quote_scale if tok == self.c.tokens["quote"] else acc.collateral.get(tok, 0)

    @rule(actor=CALLERS, token=TOKENS, amount=WITHDRAWALS)
    def withdraw(self, actor: str, token: str, amount: tuple[str, int]) -> None:
        tok = self.token(token)
        kind, x = amount
        if kind in ("all", "frac") and self._holding(actor, tok) == 0:
            actor = next((a for a in Harness.CALLERS if self._holding(a, tok) > 0), actor)   # someone who has some
        sender = self.addr(actor)
        have = self._holding(actor, tok)
        n = {"all": have, "frac": have * x // 1000, "wei": x, "over": MAX_AMOUNT + 1}[kind]
        self.mirror("withdraw", f"{actor} withdraws {n} {token}", sender, self.c.engine,
                    calldata("withdraw(address,uint256)", tok, n),
                    lambda: pm.withdraw(self.model, sender, tok, n, self.wallets))

    def _capacity_size(self, acc: pm.Account, market: int, permille: int, p: int) -> int:
        """``permille`` of the size whose initial margin uses up the account's init_health."""
        imf = self.model.markets[market].imf if market < len(self.model.markets) else WAD
        capacity = max(self.health_or_zero(acc).init_health, 0) * WAD // imf   # notional, USD WAD
        return max(capacity * permille // 1000 * WAD // max(p, 1), 1)

    def _trade(self, actor: str, market: int, size: tuple[str, int], buy: bool, limit: str) -> None:
        sender = self.addr(actor)
        acc = self.account(sender)
        kind, x = size
        current = acc.positions[market].size if market in acc.positions else 0
        sign = 1 if buy else -1
        p = pm.price(self.model, self.model.markets[market].feed, False) if market < len(self.model.markets) else WAD
        if kind == "lev":
            delta = sign * self._capacity_size(acc, market, x, p)
        elif kind == "wei":
            delta = sign * x
        elif kind == "close":
            delta = -current
        elif kind == "flip":
            extra = self._capacity_size(acc, market, x, p)
            delta = -current - (extra if current > 0 else -extra)
        elif kind == "max":
            delta = sign * (MAX_SIZE + x)
        elif kind == "raw":
            delta = sign * x
        else:  # "away": to the bound (+d) on the drawn side
            delta = sign * (MAX_SIZE + x) - current
        lim = {
            "any": MAX_UINT if delta > 0 else 0,
            "exact": p,
            "worse": p - 1 if delta > 0 else p + 1,     # a buy capped below P, a sell floored above: reverts
            "better": p + 1 if delta > 0 else p - 1,
        }[limit]
        self.mirror("trade", f"{actor} trades {delta} in market {market} (limit {lim})", sender, self.c.engine,
                    calldata("trade(uint256,int256,uint256)", market, delta, lim),
                    lambda: pm.trade(self.model, sender, market, delta, lim))

    @rule(actor=CALLERS, market=MARKETS, size=SIZES, buy=st.booleans(), limit=LIMITS)
    def trade(self, actor: str, market: int, size: tuple[str, int], buy: bool, limit: str) -> None:
        self._trade(actor, market, size, buy, limit)

    # ------------------------------------------------------------ prices and time
    @rule(asset=st.sampled_from(("ETH", "BTC")), move=PRICE_MOVES, by_outsider=st.integers(0, 15))
    def move_price(self, asset: str, move: tuple[str, int], by_outsider: int) -> None:
        feed = self.model.feeds[self.c.feeds[asset]]
        kind, x = move
        answer = {"mul": feed.answer * x // 1000, "abs": x, "top": feed.max_answer + x, "same": feed.answer}[kind]
        self._set_answer(asset, answer, "outsider" if by_outsider == 0 else "owner")

    @rule(which=st.integers(0, 7), overshoot=st.integers(0, 600), up=st.booleans())
    def shock(self, which: int, overshoot: int, up: bool) -> None:
        self._shock(which, overshoot, up)

    def _shock(self, which: int, overshoot: int, up: bool) -> None:
        """Move a feed to (or past) some position's liquidation price, from the model."""
        held = [(self.model.accounts[a], m) for a in (self.h.actors[t] for t in Harness.TRADERS)
                if a in self.model.accounts for m in sorted(self.model.accounts[a].positions)]
        asset = ("ETH", "BTC")[which % 2]
        target = None
        if held:
            acc, m = held[which % len(held)]
            feed_addr = self.model.markets[m].feed
            asset = next(k for k, v in self.c.feeds.items() if v == feed_addr)
            try:
                target = pm.liquidation_price(self.model, acc, m)
            except Revert:
                target = None
        feed = self.model.feeds[self.c.feeds[asset]]
        if target is None:
            answer = feed.answer * (1000 + overshoot if up else 1000 - overshoot * 3 // 2) // 1000
        else:
            at = target // feed.price_scale
            answer = at * (1000 - overshoot) // 1000 if at < feed.answer else at * (1000 + overshoot) // 1000
        _note(f"shock: {asset} towards {target} -> answer {answer}")
        self._set_answer(asset, max(answer, 1), "owner")

    @rule(kind=st.sampled_from(("past", "edge", "small", "small", "small")), x=st.integers(0, 1000))
    def warp(self, kind: str, x: int) -> None:
        """Move time; ``edge`` puts the next block exactly on (or one past) the staleness bound."""
        pending = self.chain.pending_timestamp()
        ages = [pm.price_age(self.model, m) for m in self.model.markets] + [pm.price_age(self.model, c) for c in self.model.collaterals]
        age = ages[x % len(ages)]    # one market's or collateral's own age
        if kind == "past":
            target = pending + age + 1 + x
        elif kind == "edge":
            target = min(f.updated_at for f in self.model.feeds.values()) + age + x % 2
        else:
            target = pending + x
        _note(f"warp: next block at {target} (pending was {pending})")
        if target - 1 > pending:
            self.h.tester.time_travel(target - 1)   # mines a block at target - 1; the next is at target

    # ------------------------------------------------------------ liquidations
    @rule(caller=CALLERS, account=ACCOUNTS, market=MARKETS, amount=LIQ_AMOUNTS, frac=st.integers(1, 1000))
    def liquidate(self, caller: str, account: str, market: int, amount: str, frac: int) -> None:
        target = self.pick_account(account, lambda a: self.health_or_zero(a).maint_health < 0 and bool(a.positions))
        acc = self.account(target)
        if account == "auto" and acc.positions and market not in acc.positions:
            market = min(acc.positions)
        self._liquidate(caller, target, market, amount, frac)

    def _liquidate(self, caller: str, target: str, market: int, amount: str, frac: int) -> None:
        acc = self.account(target)
        size = abs(acc.positions[market].size) if market in acc.positions else 0
        max_size = {"all": MAX_UINT, "one": 1, "frac": max(size * frac // 1000, 1), "zero": 0}[amount]
        signature = "liquidate(address,uint256,uint256)"
        self.compare_preview("preview_liquidate", "preview_" + signature, (target, market, max_size),
                             lambda: pm.preview_liquidate(self.model, target, market, max_size))
        sender = self.addr(caller)
        self.mirror("liquidate", f"{caller} liquidates {target} in market {market} up to {max_size}", sender,
                    self.c.engine, calldata(signature, target, market, max_size),
                    lambda: pm.liquidate(self.model, sender, target, market, max_size, self.wallets))

    @rule(caller=CALLERS, account=ACCOUNTS, token=COLL_TOKENS, amount=LIQ_AMOUNTS, frac=st.integers(1, 1000))
    def liquidate_collateral(self, caller: str, account: str, token: str, amount: str, frac: int) -> None:
        target = self.pick_account(account, lambda a: self.health_or_zero(a).maint_health < 0 and a.cash < 0 and bool(a.collateral))
        acc = self.account(target)
        if account == "auto" and acc.collateral and self.token(token) not in acc.collateral and token in ("WETH", "WBTC"):
            token = next(k for k, v in self.c.tokens.items() if v in acc.collateral)
        self._liquidate_collateral(caller, target, token, amount, frac)

    def _liquidate_collateral(self, caller: str, target: str, token: str, amount: str, frac: int) -> None:
        acc = self.account(target)
        tok = self.token(token)
        debt = -acc.cash // self.model.params.quote_scale if acc.cash < 0 else 0
        max_repay = {"all": MAX_UINT, "one": 1, "frac": max(debt * frac // 1000, 1), "zero": 0}[amount]
        signature = "liquidate_collateral(address,address,uint256)"
        self.compare_preview("preview_liquidate_collateral", "preview_" + signature, (target, tok, max_repay),
                             lambda: pm.preview_liquidate_collateral(self.model, target, tok, max_repay))
        sender = self.addr(caller)
        self.mirror("liquidate_collateral", f"{caller} liquidates the {token} of {target} repaying up to {max_repay}",
                    sender, self.c.engine, calldata(signature, target, tok, max_repay),
                    lambda: pm.liquidate_collateral(self.model, sender, target, tok, max_repay, self.wallets))

    @rule(caller=CALLERS, account=ACCOUNTS)
    def settle_bad_debt(self, caller: str, account: str) -> None:
        target = self.pick_account(account, lambda a: a.cash < 0 and not a.positions and not a.collateral)
        self._settle(caller, target)

    def _settle(self, caller: str, target: str) -> None:
        self.mirror("settle_bad_debt", f"{caller} settles the bad debt of {target}", self.addr(caller), self.c.engine,
                    calldata("settle_bad_debt(address)", target), lambda: pm.settle_bad_debt(self.model, target))

    @rule(caller=CALLERS, picks=st.lists(st.tuples(ACCOUNTS, st.sampled_from(("pos", "pos", "coll", "bad")),
                                                    MARKETS, COLL_TOKENS, LIQ_AMOUNTS), min_size=1, max_size=6))
    def liquidate_many(self, caller: str, picks: list[tuple[str, str, int, str, str]]) -> None:
        """A batch of position and collateral orders, some on healthy accounts or repeated (skips),
        some malformed (a collateral order with a market: the whole call reverts)."""
        orders = []
        for account, kind, market, token, amount in picks:
            if kind == "pos":
                target = self.pick_account(account, lambda a: self.health_or_zero(a).maint_health < 0 and bool(a.positions))
                acc = self.account(target)
                if account == "auto" and acc.positions and market not in acc.positions:
                    market = min(acc.positions)
                size = abs(acc.positions[market].size) if market in acc.positions else 0
                max_size = {"all": MAX_UINT, "one": 1, "frac": max(size // 2, 1), "zero": 0}[amount]
                orders.append(pm.LiquidationOrder.position(target, market, max_size))
            else:
                target = self.pick_account(account, lambda a: self.health_or_zero(a).maint_health < 0 and a.cash < 0 and bool(a.collateral))
                acc = self.account(target)
                tok = self.token(token)
                if account == "auto" and acc.collateral and tok not in acc.collateral and token in ("WETH", "WBTC"):
                    tok = next(t for t in acc.collateral)
                max_repay = {"all": MAX_UINT, "one": 1, "frac": max(-acc.cash // self.model.params.quote_scale // 2, 1), "zero": 0}[amount]
                orders.append(pm.LiquidationOrder(target, market if kind == "bad" else 0, tok, max_repay))
        self._batch(caller, orders)

    def _batch(self, caller: str, orders: list[pm.LiquidationOrder]) -> None:
        self.compare_batch_preview(orders)
        sender = self.addr(caller)
        self.mirror("liquidate_many", f"{caller} liquidates a batch {orders}", sender, self.c.engine,
                    orders_calldata("liquidate_many", orders),
                    lambda: pm.liquidate_many(self.model, sender, orders, self.wallets))

    def compare_batch_preview(self, orders: list[pm.LiquidationOrder]) -> None:
        self.model.timestamp = self.chain.pending_timestamp()
        try:
            expected: Any = [tuple(v) for v in pm.preview_liquidate_many(self.model, orders)]
        except Revert as exc:
            expected = exc.reason
        try:
            words = [_signed(w) for w in _words(self.chain.call(self.h.actors["owner"], self.c.engine,
                                                                 orders_calldata("preview_liquidate_many", orders), "pending"))]
            got: Any = [tuple(words[2 + 6 * k: 8 + 6 * k]) for k in range(words[1])]
        except TransactionFailed as exc:
            got = _reason(exc)
        assert got == expected, f"preview_liquidate_many({orders}): contract {got!r}, model {expected!r}"

    @rule(caller=CALLERS, which=st.integers(0, 11), overshoot=st.integers(0, 600), up=st.booleans(),
          amount=st.sampled_from(("all", "all", "one", "frac")), frac=st.integers(1, 1000),
          token=st.sampled_from(("quote", "WETH", "WBTC")), whole=st.integers(1, 10**5), lev=st.integers(500, 990))
    def drive(self, caller: str, which: int, overshoot: int, up: bool, amount: str, frac: int, token: str,
              whole: int, lev: int) -> None:
        """Advance a liquidation story by one transaction, chosen from the model the way a keeper
        (or a reckless trader) would: settle a bad debt; else liquidate a liquidatable account's
        position or collateral; else push a price towards some position's liquidation price; else
        open a leveraged position; else deposit margin. Random rules alone rarely chain these."""
        order = list(Harness.TRADERS[:3])
        order = order[which % 3:] + order[:which % 3]
        accounts = [self.account(self.h.actors[t]) for t in order]
        for acc in accounts:
            if acc.cash < 0 and not acc.positions and not acc.collateral:
                self._settle(caller, acc.address)
                return
        if frac % 3 == 0 and any(self.health_or_zero(acc).maint_health < 0 for acc in accounts):
            # One batch for every trader, as a keeper's tick sends it: each position closed and each
            # collateral seized, in turn (the model's health, which ignores ages, picks them, so
            # stale feeds give skips; later orders meet what earlier ones did).
            repay = MAX_UINT if amount != "one" else 1
            orders = [pm.LiquidationOrder.position(acc.address, m, MAX_UINT) for acc in accounts for m in sorted(acc.positions)]
            orders += [pm.LiquidationOrder.collateral(acc.address, t, repay) for acc in accounts for t in sorted(acc.collateral)]
            self._batch(caller, orders[:32])
            return
        for acc in accounts:
            if self.health_or_zero(acc).maint_health >= 0:
                continue
            if (which >= 6 or not acc.positions) and acc.cash < 0 and acc.collateral:
                token = next(k for k, v in self.c.tokens.items() if v in acc.collateral)
                self._liquidate_collateral(caller, acc.address, token, amount, frac)
                return
            if acc.positions:
                self._liquidate(caller, acc.address, min(acc.positions), amount, frac)
                return
        if any(acc.positions for acc in accounts) and which % 4 != 0:
            self._shock(which, overshoot, up)
            return
        acc = accounts[0]
        actor = order[0]
        if self.health_or_zero(acc).init_health > 0:
            self._trade(actor, which % 2, ("lev", lev), up, "any")
        else:
            n = whole * self.unit(token)
            tok, sender = self.token(token), acc.address
            self.mirror("deposit", f"{actor} deposits {n} {token}", sender, self.c.engine,
                        calldata("deposit(address,uint256)", tok, n),
                        lambda: pm.deposit(self.model, sender, tok, n, self.wallets))

    # ------------------------------------------------------------ admin
    @rule(action=st.sampled_from(("pause", "unpause", "unpause", "params", "market", "collateral", "seed_house",
                                  "seed_insurance", "market_age", "collateral_age", "collateral_age")),
          by_owner=st.integers(0, 7), share=st.sampled_from((0, WAD // 3, WAD // 2, WAD, WAD + 1)),
          age=st.sampled_from((0, 60, 3600, 3600, DAY, 2**32 - 1, 2**32)), dust=st.sampled_from((0, 10 * WAD, 10 * WAD, MAX_PRICE, MAX_PRICE + 1)),
          which=st.integers(0, 1), cap=st.sampled_from((0, 0, 1, 10**18, 10**21, 10**24, 2**200)), amount=st.integers(0, 10**6),
          weights=st.sampled_from(((80, 85, 5), (0, 0, 0), (50, 90, 9), (90, 85, 5), (50, 96, 4), (10, 50, 49))),
          fractions=st.sampled_from(((100, 50, 20, 5), (200, 100, 10, 0), (50, 50, 20, 5), (100, 50, 0, 5), (1000, 999, 1, 999))))
    def admin(self, action: str, by_owner: int, share: int, age: int, dust: int, which: int, cap: int, amount: int,
              weights: tuple[int, int, int], fractions: tuple[int, int, int, int]) -> None:
        sender_name = "owner" if by_owner else "outsider"
        sender = self.h.actors[sender_name]
        engine = self.c.engine
        if action == "pause":
            self.mirror(action, f"{sender_name} pauses", sender, engine, calldata("pause()"), lambda: pm.pause(self.model, sender))
        elif action == "unpause":
            self.mirror(action, f"{sender_name} unpauses", sender, engine, calldata("unpause()"),
                        lambda: pm.unpause(self.model, sender))
        elif action == "params":
            self.mirror(action, f"{sender_name} sets params ({share}, {age}, {dust})", sender, engine,
                        calldata("set_params(uint256,uint256,uint256)", share, age, dust),
                        lambda: pm.set_params(self.model, sender, share, age, dust))
        elif action == "market":
            # permille: imf, mmf, liquidation fee, taker fee (in 1/10000); the oi cap in base units
            imf, mmf, fee = (f * WAD // 1000 for f in fractions[:3])
            taker = fractions[3] * WAD // 10_000
            self.mirror(action, f"{sender_name} sets market {which} params {fractions} cap {cap}", sender, engine,
                        calldata("set_market_params(uint256,uint256,uint256,uint256,uint256,uint256)", which, imf, mmf, fee, taker, cap),
                        lambda: pm.set_market_params(self.model, sender, which, imf, mmf, fee, taker, cap),
                        after=self.book.rebuild)
        elif action == "collateral":
            token = self.token(("WETH", "WBTC")[which])
            iw, mw, disc = (w * WAD // 100 for w in weights)
            self.mirror(action, f"{sender_name} sets collateral {token} params {weights} cap {cap}", sender, engine,
                        calldata("set_collateral_params(address,uint256,uint256,uint256,uint256)", token, iw, mw, disc, cap),
                        lambda: pm.set_collateral_params(self.model, sender, token, iw, mw, disc, cap),
                        after=self.book.rebuild)
        elif action == "market_age":
            market = which if by_owner != 1 else 2    # sometimes an unlisted market
            self.mirror(action, f"{sender_name} sets market {market} max price age {age}", sender, engine,
                        calldata("set_market_price_age(uint256,uint256)", market, age),
                        lambda: pm.set_market_price_age(self.model, sender, market, age), after=self.book.rebuild)
        elif action == "collateral_age":
            token = self.token(("WETH", "WBTC", "unlisted")[which if by_owner != 1 else 2])
            self.mirror(action, f"{sender_name} sets collateral {token} max price age {age}", sender, engine,
                        calldata("set_collateral_price_age(address,uint256)", token, age),
                        lambda: pm.set_collateral_price_age(self.model, sender, token, age), after=self.book.rebuild)
        else:
            n = amount * self.unit("quote")
            fn = pm.seed_house if action == "seed_house" else pm.seed_insurance
            self.mirror(action, f"{sender_name} {action} {n}", sender, engine, calldata(f"{action}(uint256)", n),
                        lambda: fn(self.model, sender, n, self.wallets))


# ---------------------------------------------------------------- the tests


@pytest.fixture
def harness(deployments: dict[str, Any], actors: Any, tester: Any) -> Harness:
    return Harness(deployments, actors, tester)


def test_model_matches_contract(harness: Harness) -> None:
    """SPEC 7.5: random sequences on every decimals case; state and reasons equal after each step."""
    machine = type("Differential", (DifferentialMachine,), {"harness": harness})
    started = time.time()
    run_state_machine_as_test(machine, settings=DIFFERENTIAL)
    print(f"\ndifferential: {time.time() - started:.0f}s, {RUNS['examples']} examples, "
          f"{RUNS['rules']} steps, {sum(OUTCOMES.values())} mirrored transactions; outcomes:",
          *(f"  {k}: {v}" for k, v in sorted(OUTCOMES.items())), sep="\n")


# ---------------------------------------------------------------- regressions (shrunk failures, kept by name)


def run_steps(harness: Harness, steps: Callable[[DifferentialMachine], None]) -> None:
    """Run a fixed sequence through the same machine (same checks after every step)."""
    machine = type("Differential", (DifferentialMachine,), {"harness": harness})()
    try:
        steps(machine)
    finally:
        machine.teardown()


def test_regression_health_overflow_deposit_is_capped(harness: Harness) -> None:
    """Found by the machine: in the q18 case WETH has 8 decimals, so 2**128 - 1 units at the feed's
    top answer were worth about 2**201 USD WAD and ``mul_down(value, weight)`` overflowed int256:
    the engine's ``health`` view (and the whole ``Lens.accounts`` batch) reverted. Since the bound on
    a collateral's total deposits (``MAX_TOTAL_COLLATERAL`` whole tokens) that deposit reverts
    ``"deposit cap"`` on both sides; a deposit up to the bound, one unit short of it and exactly at
    it, leaves an account whose health both compute at the top price, and one unit more reverts."""

    def steps(m: DifferentialMachine) -> None:
        m.setup(case="q18", eth=("top", -688), btc=("default", 0))
        m.deposit(actor="trader", token="WETH", amount=("bound", -1))      # "deposit cap" on both sides
        m.deposit(actor="trader", token="WETH", amount=("cap", -1))
        m.deposit(actor="trader2", token="WETH", amount=("cap", 0))        # one unit: exactly the bound
        m.deposit(actor="rival", token="WETH", amount=("cap", 1))          # "deposit cap" on both sides
        weth = m.token("WETH")
        assert m.model.total_collateral[weth] == MAX_TOTAL_COLLATERAL * m.unit("WETH")
        pm.health(m.model, m.model.accounts[m.addr("trader")])
        m.read_through_lens()
        m.withdraw(actor="trader", token="WETH", amount=("frac", 500))
        m.withdraw(actor="trader", token="WETH", amount=("all", 0))

    run_steps(harness, steps)


def test_regression_collateral_liquidation_takes_whole_balance_at_cap(harness: Harness) -> None:
    """Found by the machine after commit 9665ada changed the engine: a collateral liquidation whose
    repay equals the cap (the balance's whole discounted value) seizes the whole balance, and a
    zero cap means a repay of 0 instead of ``"too small"``; the model still took
    ``floor(repay * qs * unit / discounted)`` and left 100353740 wei behind."""

    def steps(m: DifferentialMachine) -> None:
        m.setup(case="q6", eth=("default", 0), btc=("mul", 1))
        m.deposit(actor="trader", token="WETH", amount=("whole", 23634))
        m._trade("trader", 0, ("raw", 149745024000000000000000), False, "any")
        m._set_answer("ETH", 296844679121, "owner")
        m._liquidate("trader", m.addr("trader"), 0, "all", 1)
        m._liquidate_collateral("liquidator", m.addr("trader"), "WETH", "all", 1)
        assert m.model.accounts[m.addr("trader")].collateral == {}

    run_steps(harness, steps)


@pytest.mark.parametrize("case, symbol", [("q18", "WETH"), ("q18", "WBTC"), ("q8", "WETH"), ("q6", "WBTC")])
def test_engine_health_never_reverts_within_the_documented_bounds(deployments: dict[str, Any], actors: Any,
                                                                   case: str, symbol: str) -> None:
    """docs/protocol.md: with MAX_SIZE, MAX_PRICE and the bound on a collateral's total deposits
    (``MAX_TOTAL_COLLATERAL`` whole tokens) "no health term can overflow". A deposit the engine
    accepts must leave an account whose health the engine can compute, or a single such account
    makes every Lens.accounts batch that includes it revert. MAX_AMOUNT units of a 6- or 8-decimal
    token (the case that overflowed) are now above the bound: "deposit cap"; the whole bound is
    accepted, and the engine computes its health at the feed's top answer, as the model does."""
    protocol = deployments[case]
    decimals = protocol.decimals(symbol)
    assert decimals in (6, 8)
    feed = protocol.feed("ETH" if symbol == "WETH" else "BTC")
    protocol.owner.send(feed.functions.set_answer(feed.functions.max_answer().call()))
    token = protocol.token(symbol)
    protocol.fund(actors.trader, symbol, MAX_AMOUNT)
    with pytest.raises(Revert) as exc:
        actors.trader.send(protocol.engine.functions.deposit(token.address, MAX_AMOUNT))
    assert exc.value.reason == "deposit cap"
    bound = MAX_TOTAL_COLLATERAL * 10**decimals
    actors.trader.send(protocol.engine.functions.deposit(token.address, bound))
    state = load_state(protocol, protocol.engine.address)
    acc = state.account(actors.trader.address)
    acc.collateral[token.address] = bound
    on_chain = tuple(protocol.engine.functions.health(actors.trader.address).call())
    assert on_chain == tuple(pm.health(state, acc))
    assert on_chain[0] == bound * (feed.functions.max_answer().call() * 10**10) // 10**decimals
