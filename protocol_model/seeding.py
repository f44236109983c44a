"""Seed a deployment with traders: random but reproducible collateral and positions, a share of
them leveraged close to the maintenance margin so that a price shock liquidates some.

Trader keys are derived from the seed (never printed); the deployer funds each trader with gas
ETH and mints its tokens (it owns the local tokens). Transactions are sent without waiting, with
locally tracked nonces and fixed gas limits, and receipts are collected per phase, so seeding works
the same against an automining chain and a node with a block time.
"""

from __future__ import annotations

import logging
import random
from dataclasses import asdict, dataclass
from typing import Callable

from eth_account import Account
from eth_account.signers.local import LocalAccount
from eth_utils import keccak
from web3 import Web3
from web3.contract import Contract

from protocol_model.chain import Sender
from protocol_model.deploy import Deployment
from protocol_model.errors import ChainError
from protocol_model.wad import UINT256_MAX, WAD

log = logging.getLogger(__name__)

GAS_ETH = 10**17                 # wei of ETH each trader receives for gas
GAS = {"approve": 70_000, "deposit": 160_000, "trade": 350_000, "transfer": 21_000, "mint": 80_000}

Progress = Callable[[int, int], None]


@dataclass(frozen=True)
class TraderPlan:
    index: int
    address: str
    usdc: int            # native quote units deposited
    weth: int            # native units deposited
    wbtc: int
    eth_size: int        # base units WAD (signed)
    btc_size: int
    leverage_pct: int    # total notional / initial margin, in percent

    def to_json(self) -> dict[str, object]:
        return {k: (str(v) if isinstance(v, int) and abs(v) > 2**53 else v) for k, v in asdict(self).items()}


def trader_account(seed: int, index: int) -> LocalAccount:
    """The deterministic key of trader ``index`` under ``seed``."""
    key = keccak(b"xmargin-seed" + seed.to_bytes(8, "big", signed=False) + index.to_bytes(8, "big"))
    return Account.from_key(key)


def plan_traders(dep: Deployment, n: int, seed: int, prices: dict[str, int], imf: int = WAD // 10) -> list[TraderPlan]:
    """Reproducible trader plans. ``prices`` maps "ETH"/"BTC" to WAD prices.

    Leverage (total notional over initial-margin value) is drawn from three bands: 40% in
    [1x, 3x], 40% in [3x, 7x], 20% in [8x, 9.3x] (close to the 10x an imf of 10% allows), so
    that a 15-20% move liquidates roughly the last band and part of the middle one.
    """
    rng = random.Random(seed)
    qd = dep.quote_decimals
    wd = int(dep.collaterals["WETH"]["decimals"])
    bd = int(dep.collaterals["WBTC"]["decimals"])
    plans: list[TraderPlan] = []
    for i in range(n):
        usd_cash = rng.choice([0, 500, 1_000, 2_000, 5_000, 10_000, 25_000])
        weth_milli = rng.choice([0, 0, 500, 1_000, 2_000, 5_000])          # thousandths of WETH
        wbtc_milli = rng.choice([0, 0, 0, 50, 100, 250])                    # thousandths of WBTC
        if usd_cash == 0 and weth_milli == 0 and wbtc_milli == 0:
            usd_cash = 1_000
        # Initial-margin value in USD WAD with the default weights (0.80 WETH, 0.75 WBTC).
        margin = usd_cash * WAD + weth_milli * prices["ETH"] * 80 // 100_000 + wbtc_milli * prices["BTC"] * 75 // 100_000
        band = rng.random()
        if band < 0.4:
            lev = rng.randint(100, 300)
        elif band < 0.8:
            lev = rng.randint(300, 700)
        else:
            lev = rng.randint(800, 930)
        notional = margin * lev // 100
        split = rng.choice([0, 100, 100, 60, 30])     # percent of notional in ETH-PERP
        eth_sign = rng.choice([1, 1, -1])
        btc_sign = rng.choice([1, -1])
        eth_size = eth_sign * (notional * split // 100 * WAD // prices["ETH"])
        btc_size = btc_sign * (notional * (100 - split) // 100 * WAD // prices["BTC"])
        plans.append(TraderPlan(
            index=i,
            address=trader_account(seed, i).address,
            usdc=usd_cash * 10**qd,
            weth=weth_milli * 10 ** wd // 1000,
            wbtc=wbtc_milli * 10 ** bd // 1000,
            eth_size=eth_size,
            btc_size=btc_size,
            leverage_pct=lev,
        ))
    return plans


def _wait_all(w3: Web3, hashes: list[bytes], timeout: float) -> int:
    """Wait for every receipt; return how many failed."""
    failed = 0
    for h in hashes:
        r = w3.eth.wait_for_transaction_receipt(h, timeout=timeout)
        if r["status"] != 1:
            failed += 1
    return failed


class SeededTraders(list[TraderPlan]):
    """The plans of :func:`seed_accounts` (all of them), and how many were already on chain."""

    def __init__(self, plans: list[TraderPlan], skipped: int) -> None:
        super().__init__(plans)
        self.skipped = skipped


def seed_accounts(
    w3: Web3,
    dep: Deployment,
    owner: Sender,
    n: int,
    seed: int,
    progress: Progress | None = None,
    timeout: float = 120.0,
) -> SeededTraders:
    """Create ``n`` traders per :func:`plan_traders` on chain. Returns the plans.

    Idempotent and resumable, judged by what the engine holds (so a new deployment on the same
    chain is seeded anew): a trader with a position is seeded and skipped; one without deposits
    and positions the deployer funds (ETH and the tokens its wallet lacks), and it approves and
    deposits what the engine does not hold yet and opens its positions. A run interrupted by
    Ctrl-C is finished by running it again. Raises ChainError if any seeding transaction fails.
    """
    from protocol_model.loader import load_state

    eng = dep.engine_contract
    tokens = (dep.quote_contract, dep.token_contract("WETH"), dep.token_contract("WBTC"))
    prices = {}
    for asset in ("ETH", "BTC"):
        feed = dep.feed_contract(asset)
        prices[asset] = feed.functions.latestRoundData().call()[1] * 10 ** (18 - feed.functions.decimals().call())
    plans = plan_traders(dep, n, seed, prices)
    total = 3 * n
    done = 0

    def tick(k: int = 1) -> None:
        nonlocal done
        done += k
        if progress is not None:
            progress(done, total)

    # What the engine holds of each trader decides what is left to do.
    held = load_state(w3, dep, [p.address for p in plans]).accounts
    todo = [p for p in plans if not held[p.address].positions]
    skipped = len(plans) - len(todo)
    tick(3 * skipped)

    def deposits(p: TraderPlan) -> list[tuple[Contract, int]]:
        acc = held[p.address]
        there = (acc.cash != 0, acc.collateral.get(tokens[1].address, 0) > 0, acc.collateral.get(tokens[2].address, 0) > 0)
        return [(tok, amount) for tok, amount, ok in zip(tokens, (p.usdc, p.weth, p.wbtc), there) if amount and not ok]

    chain_id = w3.eth.chain_id

    def fee() -> int:
        # Three times the base fee: enough headroom for a node whose blocks fill during a phase.
        return 3 * w3.eth.get_block("latest")["baseFeePerGas"] + owner.tip_wei

    # Phase 1: the owner funds gas and mints the tokens a trader's wallet lacks for its deposits.
    max_fee = fee()
    nonce = w3.eth.get_transaction_count(owner.address, "pending")
    hashes: list[bytes] = []
    nonces: dict[int, int] = {}
    for p in todo:
        nonces[p.index] = int(w3.eth.get_transaction_count(p.address, "pending"))
        balance = int(w3.eth.get_balance(p.address))
        fresh = balance == 0 and nonces[p.index] == 0   # the owner sends its ETH first: no token minted either
        if balance < GAS_ETH // 2:
            hashes.append(owner.submit(None, GAS["transfer"], nonce, to=p.address, value=GAS_ETH, max_fee=max_fee,
                                       chain_id=chain_id))
            nonce += 1
        for tok, amount in deposits(p):
            missing = amount if fresh else amount - int(tok.functions.balanceOf(p.address).call())
            if missing > 0:
                hashes.append(owner.submit(tok.functions.mint(p.address, missing), GAS["mint"], nonce,
                                           max_fee=max_fee, chain_id=chain_id))
                nonce += 1
        tick()
    if _wait_all(w3, hashes, timeout):
        raise ChainError("seeding failed: some funding transactions reverted (is the sender the token owner?)")

    # Phase 2: each trader approves and deposits what the engine does not hold yet.
    max_fee = fee()
    hashes = []
    for p in todo:
        trader = Sender.from_key(w3, trader_account(seed, p.index))
        for tok, amount in deposits(p):
            trader.submit(tok.functions.approve(eng.address, UINT256_MAX), GAS["approve"], nonces[p.index],
                          max_fee=max_fee, chain_id=chain_id)
            hashes.append(trader.submit(eng.functions.deposit(tok.address, amount), GAS["deposit"], nonces[p.index] + 1,
                                        max_fee=max_fee, chain_id=chain_id))
            nonces[p.index] += 2
        tick()
    if _wait_all(w3, hashes, timeout):
        raise ChainError("seeding failed: some deposits reverted")

    # Phase 3: each trader opens its positions (nonces continue from phase 2).
    max_fee = fee()
    hashes = []
    for p in todo:
        trader = Sender.from_key(w3, trader_account(seed, p.index))
        for market, size in ((0, p.eth_size), (1, p.btc_size)):
            if size:
                limit = UINT256_MAX if size > 0 else 0
                hashes.append(trader.submit(eng.functions.trade(market, size, limit), GAS["trade"], nonces[p.index],
                                            max_fee=max_fee, chain_id=chain_id))
                nonces[p.index] += 1
        tick()
    failed = _wait_all(w3, hashes, timeout)
    if failed:
        raise ChainError(f"seeding failed: {failed} trades reverted")
    log.info("seeded %d traders (seed %d), %d of them already there", n, seed, skipped)
    return SeededTraders(plans, skipped)
