"""Competing liquidators: strategies, agent definitions and the rules both simulation modes share.

An **agent** is one liquidation bot with its own key, a tip strategy and a detection latency:

* ``fixed[:TIP]`` - the same priority fee on every liquidation (:class:`bot.txs.FixedTip`; default
  1 gwei);
* ``profit-share[:SHARE]`` - a share of the expected profit as the priority fee over the gas
  estimate (:class:`bot.txs.ProfitShareTip`; default 10 %, like the bot);
* ``rebid[:TIP]`` - a fixed opening tip (default 1 gwei), then **reactive re-bidding**: when a
  rival's pending transaction liquidates the same account and market with a higher effective tip,
  the agent replaces its own (same nonce) with a tip at least 12.5 % above the rival's
  (:func:`bot.txs.bump`), as long as that tip stays within its profit limit (see
  :func:`rebid_fees`);
* ``backrun[:TIP]`` - **backrunning the oracle**: the agent sees the shock's price updates
  (``set_answer`` transactions) pending in the pool, computes which accounts become liquidatable at
  the pending prices (on a copy of its state with those prices: the exact model is its preflight)
  and sends their liquidations before the update's block is built, with the oracle transaction's
  priority fee (and at least its max fee), so that a fee-ordered block places them right after the
  update (equal tips go by arrival, and the update arrived first). ``backrun:TIP`` backruns with
  the tip ``TIP`` instead, whatever the oracle pays: above the oracle's tip its liquidations land
  *before* the update and revert (the accounts are still healthy), which the report counts with
  their gas. After the update's block the agent is a ``fixed`` bot (the tip ``TIP``, default
  1 gwei) for what is left. It takes no latency: backrunning is reacting within the block. On
  chain the agent is the bot's own backrunner (:mod:`bot.backrun`), which always pays the
  update's fees: ``backrun:TIP`` runs off-chain only.
  Combined with the fee strategies: only with ``fixed`` (the tip after the update); a profit-share
  or re-bidding backrunner would bid above the oracle's tip and land before it;
* an ``@L`` suffix gives any of the others a detection latency of ``L`` blocks (see :func:`ticks_at`).

Strategy lists are comma separated and cycled over the bots: ``fixed:2gwei,profit-share:50%,rebid@1``
with ``--bots 5`` gives bot1 ``fixed:2gwei``, bot2 ``profit-share:50%``, bot3 ``rebid:1gwei@1``,
bot4 ``fixed:2gwei``, bot5 ``profit-share:50%``.

Rules shared by the on-chain and the off-chain mode (``onchain.py`` and ``offchain.py`` must agree
on them exactly, and a test checks that they do):

* **The price update is a pending transaction.** The shock's ``set_answer`` transactions (one
  per feed, every feed re-published, the shocked ones moved; sent by the feeds' updater with the
  priority fee ``Scenario.oracle_tip_wei`` and a max fee of ``2 * base fee + tip``) arrive in the
  pool first. Then every ``backrun`` agent, in agent order, sends its backruns (the *update
  round*); then block ``S`` is mined: the updates and the backruns, ordered like any block (below).
  Block ``S`` is the update's block: a liquidation in it is *in the same block as its price update*.
* **Schedule.** After block ``S``, for each of ``B`` rounds, with
  ``h = S, S + 1, ..., S + B - 1`` the head: every agent that ticks at ``h`` runs one tick of the
  liquidation bot, in agent order (bot1 first); then the re-bidding rounds (below); then one block
  is mined. The run ends with block ``S + B``.
* **Latency.** An agent with latency ``L`` ticks at the heads ``h >= S`` with
  ``(h - S) mod (L + 1) == L``: it polls the node every ``L + 1`` blocks, and learns of the shock
  ``L`` blocks late (``L = 0``: every block, starting with the shock's). A tick processes
  everything up to the head it sees.
* **Arrival order** at the node is the order in which transactions are sent: agents tick one after
  the other in agent order, each sends its liquidations in the bot's own order (most profitable
  first), and re-bids come after every tick of the round, in re-bidding order. A replacement
  arrives when it is sent. Blocks are built by effective priority fee, then arrival (the dev node's
  rule), with each sender's nonces in order.
* **Re-bidding rounds.** After the ticks at head ``h``, every ``rebid`` agent that ticked at ``h``
  looks at the pending pool in agent order and re-bids where it is outbid; the round repeats until
  no agent re-bids (at most :data:`MAX_REBID_ROUNDS` rounds): a priority gas auction within one
  block interval. A tip never exceeds the agent's profit limit, so the auction ends.
* **Base fee.** Before the shock the chain's base fee is brought to EIP-1559's floor for empty
  blocks (7 wei: ``7 - 7 // 8 == 7``), so that every run starts from the same base fee however
  busy its setup was, and the race is fought in tips.

Everything on a money path is an integer: wei, WAD fractions, quote native units.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from decimal import Decimal, InvalidOperation
from typing import Literal

from eth_account import Account
from eth_account.signers.local import LocalAccount
from eth_utils import keccak

from protocol_model.calls import LIQUIDATE, decode_call, encode_call
from protocol_model.deploy import DeployConfig
from protocol_model.errors import ConfigError
from protocol_model.wad import ETHER, GWEI, WAD

from bot import config as bot_config
from bot.config import BotConfig
from bot.config import MIN_REPLACEMENT_BUMP_WAD
from bot.pending import SET_ANSWER
from bot.txs import DEFAULT_MAX_FEE_CAP_WEI, Fees, bump, capped_fees
from simulator.defaults import LIQUIDATION_GAS, LOST_RACE_BACKOFF_BLOCKS, MIN_PROFIT_USD_WAD

Kind = Literal["fixed", "profit-share", "rebid", "backrun"]
KINDS: tuple[Kind, ...] = ("fixed", "profit-share", "rebid", "backrun")
_ALIASES: dict[str, Kind] = {
    "fixed": "fixed", "fixed-tip": "fixed",
    "profit-share": "profit-share", "profit_share": "profit-share", "share": "profit-share",
    "rebid": "rebid", "reactive": "rebid",
    "backrun": "backrun", "back-run": "backrun",
}
DEFAULT_FIXED_TIP_WEI = GWEI
DEFAULT_PROFIT_SHARE_WAD = WAD // 10
DEFAULT_ORACLE_TIP_WEI = GWEI     # the priority fee of the shock's price updates
MAX_REBID_ROUNDS = 32
MAX_LATENCY = 1_000
BASE_FEE_FLOOR_WEI = 7          # EIP-1559: an empty block keeps a base fee of 7 wei (7 * 1 // 8 == 0)
AGENT_FUNDS_WEI = 1_000 * ETHER  # gas money each agent key receives on the local chain
# Liquidations are planned and paid only for positions: the agents hold no quote tokens, so they
# never liquidate collateral (which needs the liquidator to repay debt).
COLLATERAL_LIQUIDATION = False


# ---------------------------------------------------------------------- settings


@dataclass(frozen=True)
class SimSettings:
    """What every agent of a run shares: the bot settings that are not the strategy.

    ``gas_estimate`` is the gas limit of every liquidation and the ``gas`` of the bot's profit and
    tip arithmetic (``liquidation_gas_estimate``); ``backoff_blocks`` is how long an agent leaves an
    account alone after losing a race for it.
    """

    min_profit_usd_wad: int = MIN_PROFIT_USD_WAD    # the bot's defaults
    gas_estimate: int = LIQUIDATION_GAS
    backoff_blocks: int = LOST_RACE_BACKOFF_BLOCKS
    max_fee_cap_wei: int = DEFAULT_MAX_FEE_CAP_WEI
    deploy: DeployConfig = field(default_factory=DeployConfig)

    def __post_init__(self) -> None:
        if self.gas_estimate < 21_000 + 100 * 16:
            raise ConfigError("gas_estimate must cover at least a liquidation's intrinsic gas")
        if self.min_profit_usd_wad < 0 or self.backoff_blocks < 0 or self.max_fee_cap_wei < 1:
            raise ConfigError("invalid simulation settings: min profit and backoff must be >= 0, the fee cap >= 1")


@dataclass(frozen=True)
class Scenario:
    """One competition: ``accounts`` seeded traders (:func:`protocol_model.seeding.plan_traders` with ``seed``),
    the price ``shocks`` (asset -> signed WAD fraction, ``-2 * 10**17`` = -20 %), ``blocks`` mined
    after the update's block, and the priority fee the price updates pay (``oracle_tip_wei``)."""

    accounts: int
    seed: int
    shocks: tuple[tuple[str, int], ...]
    blocks: int = 10
    oracle_tip_wei: int = DEFAULT_ORACLE_TIP_WEI

    def __post_init__(self) -> None:
        if not 0 <= self.oracle_tip_wei <= DEFAULT_MAX_FEE_CAP_WEI // 2:
            raise ConfigError(f"--oracle-tip must be between 0 and {DEFAULT_MAX_FEE_CAP_WEI // 2} wei, "
                              f"got {self.oracle_tip_wei}")
        if self.accounts < 1:
            raise ConfigError(f"--accounts must be at least 1, got {self.accounts}")
        if not 0 <= self.seed < 2**64:
            raise ConfigError(f"--seed must be between 0 and 2**64 - 1, got {self.seed}")
        if self.blocks < 1:
            raise ConfigError(f"--blocks must be at least 1, got {self.blocks}")
        if not self.shocks:
            raise ConfigError("give at least one --shock, e.g. --shock ETH=-20%")
        seen: set[str] = set()
        for asset, fraction in self.shocks:
            if asset in seen:
                raise ConfigError(f"two shocks for {asset}: give one")
            seen.add(asset)
            if fraction <= -WAD:
                raise ConfigError(f"shock {asset}: a price cannot fall by 100% or more")

    def shock_map(self) -> dict[str, int]:
        return dict(self.shocks)


# ---------------------------------------------------------------------- agents


@dataclass(frozen=True)
class AgentSpec:
    """One competitor. ``tip_wei`` is the fixed (or opening) tip, ``share_wad`` the profit share;
    ``match_oracle``: a ``backrun`` agent that backruns with the oracle transaction's tip (no tip
    given), its later tip ``tip_wei`` being the default."""

    index: int                 # 0-based; the agent order of the schedule
    kind: Kind
    tip_wei: int = DEFAULT_FIXED_TIP_WEI
    share_wad: int = DEFAULT_PROFIT_SHARE_WAD
    latency: int = 0
    match_oracle: bool = False

    def __post_init__(self) -> None:
        if self.kind == "backrun" and self.latency:
            raise ConfigError(f"{self.name}: a backrun agent reacts within the block and takes no latency")
        if self.match_oracle and self.kind != "backrun":
            raise ConfigError(f"{self.name}: only a backrun agent matches the oracle's tip")  # dev

    @property
    def name(self) -> str:
        return f"bot{self.index + 1}"

    @property
    def strategy(self) -> str:
        """The canonical strategy text, e.g. ``profit-share:50%@2`` (the same for equal strategies)."""
        if self.kind == "profit-share":
            text = f"profit-share:{_fmt_share(self.share_wad)}"
        elif self.kind == "backrun" and self.match_oracle:
            text = "backrun"
        else:
            text = f"{self.kind}:{_fmt_gwei(self.tip_wei)}"
        return text + (f"@{self.latency}" if self.latency else "")

    @property
    def rebids(self) -> bool:
        return self.kind == "rebid"

    @property
    def backruns(self) -> bool:
        return self.kind == "backrun"

    def backrun_tip(self, oracle_tip_wei: int) -> int:
        """The priority fee of this agent's backruns of an update that pays ``oracle_tip_wei``."""
        return oracle_tip_wei if self.match_oracle else self.tip_wei

    def account(self) -> LocalAccount:
        return agent_account(self.index)

    @property
    def address(self) -> str:
        return str(self.account().address)

    def bot_config(self, settings: SimSettings) -> BotConfig:
        """The bot's configuration for this agent (never read from the environment)."""
        strategy = {"gas_strategy": "profit_share", "profit_share_wad": self.share_wad} if self.kind == "profit-share" \
            else {"gas_strategy": "fixed", "fixed_tip_wei": self.tip_wei}
        return BotConfig(
            rpc_url="memory",
            db_path=":memory:",
            min_profit_usd_wad=settings.min_profit_usd_wad,
            lost_race_backoff_blocks=settings.backoff_blocks,
            liquidation_gas_estimate=settings.gas_estimate,
            max_fee_cap_wei=settings.max_fee_cap_wei,
            # The simulator decides every replacement itself (re-bids); the bot's own replacement of
            # transactions stuck for some blocks stays off, so that both modes replace alike.
            stuck_after_blocks=1_000_000_000,
            # One transaction per liquidation, as the off-chain model prices and orders them; the
            # live bot's liquidate_many batches are not modelled off-chain yet.
            max_batch_orders=1,
            # Only a backrun agent watches the pending transactions (the simulator drives it).
            backrun=self.backruns,
            rpc_backoff_s=0.0,
            rpc_backoff_max_s=0.0,
            **strategy,
        )


def agent_account(index: int) -> LocalAccount:
    """The deterministic key of agent ``index`` (local simulation chains only: it is public)."""
    return Account.from_key(keccak(b"xmargin-sim-agent" + index.to_bytes(8, "big")))


def backrun_fees(tip_wei: int, oracle_max_fee_wei: int, head_base_fee_wei: int, settings: SimSettings) -> Fees:
    """The fees of a backrun with the priority fee ``tip_wei``: the bot's fixed-tip fees
    (``2 * head base fee + tip``, within the fee cap) with a max fee at least the oracle
    transaction's, so that at any base fee its effective tip is at least the oracle's when the tips
    are equal."""
    fees = capped_fees(head_base_fee_wei, tip_wei, settings.max_fee_cap_wei)
    return Fees(min(max(fees.max_fee_per_gas, oracle_max_fee_wei), settings.max_fee_cap_wei), fees.max_priority_fee_per_gas)


def oracle_fees(tip_wei: int, head_base_fee_wei: int) -> Fees:
    """The fees of the shock's price updates: ``2 * head base fee + tip`` and the tip."""
    return Fees(2 * head_base_fee_wei + tip_wei, tip_wei)


def ticks_at(latency: int, head: int, shock_block: int) -> bool:
    """Whether an agent with ``latency`` ticks when the head is ``head`` (see the module docstring)."""
    offset = head - shock_block
    return offset >= 0 and offset % (latency + 1) == latency


def parse_strategies(text: str, bots: int) -> list[AgentSpec]:
    """``--strategy`` cycled over ``bots`` agents; raises :class:`ConfigError` naming the bad item."""
    if bots < 1:
        raise ConfigError(f"--bots must be at least 1, got {bots}")
    items = [s.strip() for s in (text or "").split(",") if s.strip()]
    if not items:
        raise ConfigError("--strategy is empty: give e.g. fixed,profit-share:50%,rebid@1")
    parsed = [_parse_one(item) for item in items]
    return [AgentSpec(i, *parsed[i % len(parsed)]) for i in range(bots)]


def _parse_one(item: str) -> tuple[Kind, int, int, int, bool]:
    body, _, lat = item.partition("@")
    latency = 0
    if _:
        try:
            latency = int(lat)
        except ValueError:
            raise ConfigError(f"strategy {item!r}: the latency after '@' must be a whole number of blocks") from None
        if not 0 <= latency <= MAX_LATENCY:
            raise ConfigError(f"strategy {item!r}: the latency must be 0..{MAX_LATENCY} blocks")
    name, _, param = body.partition(":")
    kind = _ALIASES.get(name.strip().lower())
    if kind is None:
        raise ConfigError(f"unknown strategy {name!r} in {item!r}: choose from {', '.join(KINDS)}")
    if kind == "backrun" and latency:
        raise ConfigError(f"strategy {item!r}: a backrun reacts within the block and takes no latency '@'")
    tip, share = DEFAULT_FIXED_TIP_WEI, DEFAULT_PROFIT_SHARE_WAD
    param = param.strip()
    if kind == "profit-share":
        if param:
            share = parse_share(param, item)
    elif param:
        tip = parse_wei(param, item)
    return kind, tip, share, latency, kind == "backrun" and not param


def parse_share(text: str, what: str = "share") -> int:
    """``'0.5'`` or ``'50%'`` -> WAD fraction, exactly."""
    t = text.strip()
    try:
        d = Decimal(t[:-1]) / 100 if t.endswith("%") else Decimal(t)
    except InvalidOperation:
        raise ConfigError(f"{what}: {text!r} is not a share such as 0.5 or 50%") from None
    value = d * WAD
    if not d.is_finite() or value != value.to_integral_value() or not 0 <= d <= 1:
        raise ConfigError(f"{what}: the profit share {text!r} must lie between 0 and 1 (0% and 100%)")
    return int(value)


def parse_wei(text: str, what: str = "tip") -> int:
    """``'2gwei'``, ``'1.5gwei'``, ``'1000'`` (wei) -> wei, exactly (:func:`bot.config.parse_wei`)."""
    try:
        wei = bot_config.parse_wei(text)
    except (ValueError, ArithmeticError):
        raise ConfigError(f"{what}: {text!r} is not a whole amount of wei such as 2gwei or 1500000000") from None
    if wei < 0:
        raise ConfigError(f"{what}: the tip {text!r} must be a whole, non-negative number of wei")
    return wei


def _fmt_gwei(wei: int) -> str:
    d = (Decimal(wei) / GWEI).normalize()
    return f"{d:f}gwei"


def _fmt_share(wad: int) -> str:
    d = (Decimal(wad) * 100 / WAD).normalize()
    return f"{d:f}%"


# ---------------------------------------------------------------------- re-bidding


@dataclass(frozen=True)
class PoolEntry:
    """A pending liquidation as any agent can see it in the node's pool."""

    sender: str
    nonce: int
    account: str
    market: int
    tip_wei: int               # maxPriorityFeePerGas
    max_fee_wei: int           # maxFeePerGas

    def effective_tip(self, base_fee_wei: int) -> int:
        """What the block producer earns per gas at ``base_fee_wei`` (0 when the cap is below it)."""
        return max(0, min(self.tip_wei, self.max_fee_wei - base_fee_wei))


def by_target(entries: list[PoolEntry], exclude: str) -> dict[tuple[str, int], list[PoolEntry]]:
    """The pending liquidations of senders other than ``exclude``, by (account, market)."""
    out: dict[tuple[str, int], list[PoolEntry]] = {}
    for e in entries:
        if e.sender != exclude:
            out.setdefault((e.account, e.market), []).append(e)
    return out


def rebid_fees(own: PoolEntry, rivals: list[PoolEntry], *, next_base_fee_wei: int, head_base_fee_wei: int,
               expected_profit_wei: int, settings: SimSettings) -> Fees | None:
    """The fees of a re-bid of ``own``, or None when it is not outbid or cannot afford to answer.

    ``own`` is outbid when a rival's pending liquidation of the same account and market pays a
    higher effective tip at the next block's base fee. The answer's tip is the best rival's plus
    12.5 % (rounded up; :func:`bot.txs.bump`); its max fee is ``2 * head base fee + tip``, and at
    least the old max fee bumped by 12.5 %, so that the node accepts the replacement. The profit
    limit: the tip may not exceed ``expected_profit_wei / gas_estimate`` (the tip at which the
    bot's expected profit, net of the base fee, reaches zero), nor the max fee the fee cap.
    """
    best = max((r.effective_tip(next_base_fee_wei) for r in rivals
                if r.sender != own.sender and r.account == own.account and r.market == own.market), default=None)
    if best is None or best <= own.effective_tip(next_base_fee_wei):
        return None
    tip = bump(best, MIN_REPLACEMENT_BUMP_WAD)
    limit = max(expected_profit_wei, 0) // settings.gas_estimate
    max_fee = max(2 * head_base_fee_wei + tip, bump(own.max_fee_wei, MIN_REPLACEMENT_BUMP_WAD))
    if tip > limit or max_fee > settings.max_fee_cap_wei:
        return None
    return Fees(max_fee, tip)


def resolve_asset(config: DeployConfig, key: str) -> str:
    """The feed asset (``ETH``) named by an asset, a market (``ETH-PERP``) or a collateral (``WETH``)."""
    k = key.strip().upper()
    for f in config.feeds:
        if f.asset.upper() == k:
            return f.asset
    for m in config.markets:
        if m.name.upper() == k:
            return m.asset
    for c in config.collaterals:
        if c.symbol.upper() == k:
            return c.asset
    known = [f.asset for f in config.feeds] + [m.name for m in config.markets] + [c.symbol for c in config.collaterals]
    raise ConfigError(f"unknown asset {key!r} in --shock: choose from {', '.join(known)}")


def liquidate_calldata(account: str, market: int, max_size: int) -> bytes:
    """The engine's ``liquidate(account, market, max_size)`` call data."""
    return encode_call(LIQUIDATE, account, market, max_size)


def decode_liquidate(data: bytes) -> tuple[str, int, int] | None:
    """``(account, market, max_size)`` of ``liquidate`` call data, else None."""
    args = decode_call(LIQUIDATE, data)
    return None if args is None else (args[0], int(args[1]), int(args[2]))


def set_answer_calldata(answer: int) -> bytes:
    """A feed's ``set_answer(answer)`` call data."""
    return encode_call(SET_ANSWER, answer)


def next_base_fee(base_fee_wei: int, gas_used: int, gas_limit: int) -> int:
    """EIP-1559's base fee of the block after one with ``base_fee_wei``, ``gas_used`` and ``gas_limit``
    (py-evm's London rule, elasticity 2, max change 1/8)."""
    target = gas_limit // 2
    if gas_used == target:
        return base_fee_wei
    if gas_used > target:
        return base_fee_wei + max(base_fee_wei * (gas_used - target) // target // 8, 1)
    return max(base_fee_wei - base_fee_wei * (target - gas_used) // target // 8, 0)


def intrinsic_gas(data: bytes) -> int:
    """A call's intrinsic gas: 21,000 plus 4 per zero and 16 per non-zero byte of call data."""
    return 21_000 + sum(4 if b == 0 else 16 for b in data)


__all__ = [
    "AGENT_FUNDS_WEI",
    "AgentSpec",
    "BASE_FEE_FLOOR_WEI",
    "DEFAULT_ORACLE_TIP_WEI",
    "COLLATERAL_LIQUIDATION",
    "KINDS",
    "MAX_REBID_ROUNDS",
    "PoolEntry",
    "Scenario",
    "SimSettings",
    "agent_account",
    "backrun_fees",
    "oracle_fees",
    "by_target",
    "decode_liquidate",
    "intrinsic_gas",
    "liquidate_calldata",
    "next_base_fee",
    "parse_share",
    "parse_strategies",
    "parse_wei",
    "rebid_fees",
    "resolve_asset",
    "set_answer_calldata",
    "ticks_at",
]
