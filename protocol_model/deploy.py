"""Compile ``contracts/`` and deploy the whole protocol; read and write the deployment file.

Compilation uses the ``vyper`` package in-process and is cached for the life of the process.
The default listing (ETH-PERP, BTC-PERP; WETH and WBTC against a 6-decimal USDC) and every
parameter are documented in ``docs/protocol.md``; the deployment file in ``docs/deployment.md``.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import contracts
from web3 import Web3
from web3.contract import Contract

from .chain import Sender
from .errors import ConfigError
from .wad import MAX_PRICE, WAD

log = logging.getLogger(__name__)

CONTRACT_NAMES = contracts.NAMES
DEPLOYMENT_VERSION = 1


@dataclass(frozen=True)
class Artifact:
    name: str
    abi: list[dict[str, Any]]
    bytecode: str


@functools.cache
def compile_contracts() -> dict[str, Artifact]:
    """Compile every contract once per process (about a second); later calls hit the cache."""
    from vyper.compiler import compile_code

    folder = contracts.sources_dir()
    if not all((folder / f"{name}.vy").is_file() for name in CONTRACT_NAMES):
        raise ConfigError(f"contract sources not found in {folder}: reinstall xmargin (pip install xmargin)")
    out: dict[str, Artifact] = {}
    for name in CONTRACT_NAMES:
        source = contracts.source(name)
        compiled = compile_code(source, contract_path=f"{name}.vy", output_formats=["abi", "bytecode"])
        out[name] = Artifact(name, compiled["abi"], compiled["bytecode"])
    return out


def contract_at(w3: Web3, name: str, address: str) -> Contract:
    return w3.eth.contract(address=Web3.to_checksum_address(address), abi=compile_contracts()[name].abi)


def deploy_contract(w3: Web3, sender: Sender, name: str, *args: Any) -> Contract:
    art = compile_contracts()[name]
    factory = w3.eth.contract(abi=art.abi, bytecode=art.bytecode)
    receipt = sender.send(factory.constructor(*args))
    log.debug("deployed %s at %s (%d gas)", name, receipt["contractAddress"], receipt["gasUsed"])
    return w3.eth.contract(address=receipt["contractAddress"], abi=art.abi)


# ------------------------------------------------------------------ configuration


@dataclass(frozen=True)
class FeedSpec:
    asset: str                # e.g. "ETH"; the feed prices one whole unit of it in USD
    price: int                # initial answer in whole USD cents * 10**(decimals-2) is awkward:
                              # it is the answer in feed units (price * 10**decimals)
    decimals: int = 8
    # Seconds an answer stays usable for every market and collateral this feed prices. The local
    # default is the heartbeat of Chainlink's ETH / USD and BTC / USD on Ethereum (3,600 s; others
    # beat every 60 s to 24 h); production: the feed's heartbeat plus a margin. None:
    # DeployConfig.max_price_age. See docs/protocol.md, "Per-feed maximum price ages".
    max_price_age: int | None = 3600


@dataclass(frozen=True)
class MarketSpec:
    name: str                 # e.g. "ETH-PERP"
    asset: str                # the FeedSpec asset whose feed prices it
    imf: int                  # WAD fraction
    mmf: int
    liquidation_fee: int
    taker_fee: int
    oi_cap: int = 0           # base units WAD, 0 = none


@dataclass(frozen=True)
class CollateralSpec:
    symbol: str               # e.g. "WETH"
    asset: str                # the FeedSpec asset whose feed prices it
    decimals: int
    init_weight: int          # WAD fraction
    maint_weight: int
    liquidation_discount: int
    deposit_cap: int = 0      # native units, 0 = none


@dataclass(frozen=True)
class DeployConfig:
    quote_symbol: str = "USDC"
    quote_decimals: int = 6
    keeper_share: int = WAD // 2              # half of each penalty to the liquidator
    max_price_age: int = 3600                 # seconds; the engine's default age for what it lists
    dust_notional: int = 10 * WAD             # USD WAD
    house_seed: int = 10_000_000              # whole quote tokens minted to and seeded by the owner
    insurance_seed: int = 100_000             # whole quote tokens
    feeds: tuple[FeedSpec, ...] = (
        FeedSpec("ETH", 2_000 * 10**8, max_price_age=3600),
        FeedSpec("BTC", 60_000 * 10**8, max_price_age=3600),
    )
    markets: tuple[MarketSpec, ...] = (
        MarketSpec("ETH-PERP", "ETH", imf=WAD // 10, mmf=WAD // 20, liquidation_fee=WAD // 50, taker_fee=5 * 10**14),
        MarketSpec("BTC-PERP", "BTC", imf=WAD // 10, mmf=WAD // 20, liquidation_fee=WAD // 50, taker_fee=5 * 10**14),
    )
    collaterals: tuple[CollateralSpec, ...] = (
        CollateralSpec("WETH", "ETH", 18, init_weight=80 * 10**16, maint_weight=85 * 10**16, liquidation_discount=5 * 10**16),
        CollateralSpec("WBTC", "BTC", 8, init_weight=75 * 10**16, maint_weight=80 * 10**16, liquidation_discount=5 * 10**16),
    )


def with_max_price_age(config: DeployConfig, max_price_age: int) -> DeployConfig:
    """``config`` with one max price age for the engine's default and every feed."""
    feeds = tuple(dataclasses.replace(f, max_price_age=max_price_age) for f in config.feeds)
    return dataclasses.replace(config, max_price_age=max_price_age, feeds=feeds)


def feed_age(config: DeployConfig, asset: str) -> int:
    """The max price age (seconds) a deployment gives whatever the feed of ``asset`` prices."""
    for f in config.feeds:
        if f.asset == asset:
            return config.max_price_age if f.max_price_age is None else f.max_price_age
    raise ConfigError(f"no feed for asset {asset}")


# ------------------------------------------------------------------ deployment


@dataclass
class Deployment:
    """Addresses of a deployed protocol, and contract handles bound to a Web3 when loaded."""

    chain_id: int
    block: int
    owner: str
    engine: str
    lens: str
    quote: str
    quote_symbol: str
    quote_decimals: int
    feeds: dict[str, str]                      # asset -> feed address
    collaterals: dict[str, dict[str, Any]]     # symbol -> {token, feed, decimals, index}
    markets: dict[str, dict[str, Any]]         # name -> {id, feed, asset}
    abi_dir: str | None = None
    w3: Web3 | None = field(default=None, repr=False, compare=False)

    # contract handles ---------------------------------------------------
    def _w3(self) -> Web3:
        if self.w3 is None:
            raise ConfigError("deployment is not bound to a chain")
        return self.w3

    @property
    def engine_contract(self) -> Contract:
        return contract_at(self._w3(), "MarginEngine", self.engine)

    @property
    def lens_contract(self) -> Contract:
        return contract_at(self._w3(), "Lens", self.lens)

    @property
    def quote_contract(self) -> Contract:
        return contract_at(self._w3(), "Token", self.quote)

    def token_contract(self, symbol: str) -> Contract:
        return contract_at(self._w3(), "Token", self.collateral(symbol)["token"])

    def feed_contract(self, asset: str) -> Contract:
        return contract_at(self._w3(), "PriceFeed", self.feed(asset))

    # lookups with actionable errors -------------------------------------
    def market_id(self, name: str) -> int:
        key = name.upper()
        if key not in self.markets and f"{key}-PERP" in self.markets:
            key = f"{key}-PERP"
        if key not in self.markets:
            raise ConfigError(f"unknown market {name!r}: known markets are {', '.join(self.markets)}")
        return int(self.markets[key]["id"])

    def collateral(self, symbol: str) -> dict[str, Any]:
        key = symbol.upper()
        if key not in self.collaterals:
            raise ConfigError(f"unknown collateral {symbol!r}: known collaterals are {', '.join(self.collaterals)}")
        return self.collaterals[key]

    def feed(self, asset: str) -> str:
        key = asset.upper().removesuffix("-PERP")
        if key not in self.feeds:
            raise ConfigError(f"unknown asset {asset!r}: known price feeds are {', '.join(self.feeds)}")
        return self.feeds[key]

    # file ---------------------------------------------------------------
    def to_json(self) -> dict[str, Any]:
        return {
            "version": DEPLOYMENT_VERSION,
            "chain_id": self.chain_id,
            "block": self.block,
            "owner": self.owner,
            "engine": self.engine,
            "lens": self.lens,
            "quote": self.quote,
            "quote_symbol": self.quote_symbol,
            "quote_decimals": self.quote_decimals,
            "feeds": self.feeds,
            "collaterals": self.collaterals,
            "markets": self.markets,
            "abi_dir": self.abi_dir,
        }

    def save(self, path: str | Path) -> None:
        """Write the deployment file and, beside it in ``abi/``, one ABI JSON per contract."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        abi_dir = path.parent / "abi"
        abi_dir.mkdir(exist_ok=True)
        for name, art in compile_contracts().items():
            (abi_dir / f"{name}.json").write_text(json.dumps(art.abi, indent=1))
        self.abi_dir = "abi"
        tmp = path.with_suffix(path.suffix + ".tmp")
        tmp.write_text(json.dumps(self.to_json(), indent=2) + "\n")
        tmp.replace(path)

    @classmethod
    def from_json(cls, data: Any, source: str = "deployment") -> "Deployment":
        if not isinstance(data, dict):
            raise ConfigError(f"{source} is not a JSON object: regenerate it with 'xmargin deploy'")
        required = ("chain_id", "block", "engine", "lens", "quote", "collaterals", "markets", "feeds")
        missing = [k for k in required if k not in data]
        if missing:
            raise ConfigError(f"{source} lacks {', '.join(missing)}: regenerate it with 'xmargin deploy'")
        try:
            return cls(
                chain_id=int(data["chain_id"]),
                block=int(data["block"]),
                owner=str(data.get("owner", "")),
                engine=Web3.to_checksum_address(data["engine"]),
                lens=Web3.to_checksum_address(data["lens"]),
                quote=Web3.to_checksum_address(data["quote"]),
                quote_symbol=str(data.get("quote_symbol", "USDC")),
                quote_decimals=int(data.get("quote_decimals", 6)),
                feeds={str(k).upper(): Web3.to_checksum_address(v) for k, v in data["feeds"].items()},
                collaterals={
                    str(k).upper(): {**v, "token": Web3.to_checksum_address(v["token"]), "feed": Web3.to_checksum_address(v["feed"])}
                    for k, v in data["collaterals"].items()
                },
                markets={
                    str(k).upper(): {**v, "id": int(v["id"]), "feed": Web3.to_checksum_address(v["feed"])}
                    for k, v in data["markets"].items()
                },
                abi_dir=data.get("abi_dir"),
            )
        except (KeyError, TypeError, ValueError, AttributeError) as exc:
            raise ConfigError(f"{source} is malformed ({exc}): regenerate it with 'xmargin deploy'") from exc

    @classmethod
    def load(cls, path: str | Path, w3: Web3 | None = None) -> "Deployment":
        """Read a deployment file; with ``w3``, also check it belongs to that chain."""
        path = Path(path)
        try:
            text = path.read_text()
        except FileNotFoundError:
            raise ConfigError(f"deployment file {path} not found: create it with 'xmargin deploy --out {path}'") from None
        except OSError as exc:
            raise ConfigError(f"cannot read deployment file {path}: {exc.strerror}") from None
        try:
            data = json.loads(text)
        except json.JSONDecodeError as exc:
            raise ConfigError(f"deployment file {path} is not valid JSON (line {exc.lineno}): regenerate it with 'xmargin deploy'") from None
        dep = cls.from_json(data, source=f"deployment file {path}")
        if w3 is not None:
            dep.bind(w3)
        return dep

    def bind(self, w3: Web3) -> "Deployment":
        chain_id = w3.eth.chain_id
        if chain_id != self.chain_id:
            raise ConfigError(
                f"the deployment is for chain id {self.chain_id} but the node is chain id {chain_id}: "
                "point --rpc at the right node or deploy again"
            )
        self.w3 = w3
        return self


def deploy_protocol(w3: Web3, sender: Sender, config: DeployConfig = DeployConfig()) -> Deployment:
    """Deploy tokens, feeds, engine and lens, list the default markets and collaterals, seed the
    house and the insurance fund, and return the :class:`Deployment` bound to ``w3``."""
    start_block = w3.eth.block_number
    owner = sender.address

    quote = deploy_contract(w3, sender, "Token", f"USD Coin (xmargin {config.quote_symbol})", config.quote_symbol, config.quote_decimals)
    feeds: dict[str, Contract] = {}
    for f in config.feeds:
        max_answer = MAX_PRICE // 10 ** (18 - f.decimals)
        feeds[f.asset] = deploy_contract(w3, sender, "PriceFeed", f.decimals, f"{f.asset} / USD", f.price, 1, max_answer)

    engine = deploy_contract(w3, sender, "MarginEngine", quote.address, config.keeper_share, config.max_price_age, config.dust_notional)
    lens = deploy_contract(w3, sender, "Lens")

    markets: dict[str, dict[str, Any]] = {}
    for i, m in enumerate(config.markets):
        if m.asset not in feeds:
            raise ConfigError(f"market {m.name} names unknown feed asset {m.asset}")
        sender.send(engine.functions.list_market(feeds[m.asset].address, m.imf, m.mmf, m.liquidation_fee, m.taker_fee, m.oi_cap))
        if feed_age(config, m.asset) != config.max_price_age:
            sender.send(engine.functions.set_market_price_age(i, feed_age(config, m.asset)))
        markets[m.name] = {"id": i, "feed": feeds[m.asset].address, "asset": m.asset}

    collaterals: dict[str, dict[str, Any]] = {}
    for i, c in enumerate(config.collaterals):
        if c.asset not in feeds:
            raise ConfigError(f"collateral {c.symbol} names unknown feed asset {c.asset}")
        token = deploy_contract(w3, sender, "Token", f"Wrapped {c.asset} (xmargin)", c.symbol, c.decimals)
        sender.send(engine.functions.list_collateral(
            token.address, feeds[c.asset].address, c.init_weight, c.maint_weight, c.liquidation_discount, c.deposit_cap
        ))
        if feed_age(config, c.asset) != config.max_price_age:
            sender.send(engine.functions.set_collateral_price_age(token.address, feed_age(config, c.asset)))
        collaterals[c.symbol] = {"token": token.address, "feed": feeds[c.asset].address, "decimals": c.decimals, "index": i, "asset": c.asset}

    unit = 10**config.quote_decimals
    seed = (config.house_seed + config.insurance_seed) * unit
    if seed:
        sender.send(quote.functions.mint(owner, seed))
        sender.send(quote.functions.approve(engine.address, seed))
        if config.house_seed:
            sender.send(engine.functions.seed_house(config.house_seed * unit))
        if config.insurance_seed:
            sender.send(engine.functions.seed_insurance(config.insurance_seed * unit))

    dep = Deployment(
        chain_id=w3.eth.chain_id,
        block=start_block,
        owner=owner,
        engine=engine.address,
        lens=lens.address,
        quote=quote.address,
        quote_symbol=config.quote_symbol,
        quote_decimals=config.quote_decimals,
        feeds={a: c.address for a, c in feeds.items()},
        collaterals=collaterals,
        markets=markets,
        w3=w3,
    )
    log.info("deployed xmargin engine %s on chain %d at block %d", engine.address, dep.chain_id, start_block)
    return dep
