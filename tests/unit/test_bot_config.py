"""BotConfig: defaults, environment with prefix, exact unit parsing, one-line actionable errors."""

from __future__ import annotations

import dataclasses

import pytest

from bot.config import GWEI, MIN_REPLACEMENT_BUMP_WAD, WAD, BotConfig, redact_url
from bot.errors import BotConfigError, BotError
from protocol_model.errors import ConfigError as ProtocolConfigError


def load(env: dict[str, str] | None = None, **overrides):
    return BotConfig.from_env(environ=env or {}, **overrides)


def test_defaults_are_valid_and_documented():
    cfg = load()
    assert cfg.replacement_bump_wad == MIN_REPLACEMENT_BUMP_WAD == 125 * 10**15
    assert cfg.lookback_blocks == 12
    assert cfg.dry_run is False and cfg.metrics_port is None
    helps = BotConfig.settings_help()
    assert len(helps) == len(dataclasses.fields(BotConfig))
    assert all(var.startswith("XMARGIN_") and text for var, _, text in helps)


def test_environment_with_prefix_and_overrides_win():
    env = {
        "XMARGIN_POLL_INTERVAL_S": "2.5",
        "XMARGIN_LOOKBACK_BLOCKS": "64",
        "XMARGIN_DRY_RUN": "yes",
        "XMARGIN_METRICS_PORT": "9108",
        "XMARGIN_GAS_STRATEGY": "profit_share",
        "OTHER_LOOKBACK_BLOCKS": "3",
        "XMARGIN_PRIVATE_KEY": "not a setting, ignored here",
    }
    cfg = load(env, lookback_blocks=30, db_path=None)
    assert cfg.poll_interval_s == 2.5
    assert cfg.lookback_blocks == 30            # the override wins over the environment
    assert cfg.db_path == "xmargin-bot.sqlite3"  # a None override (unset CLI option) falls through
    assert cfg.dry_run is True and cfg.metrics_port == 9108 and cfg.gas_strategy == "profit_share"
    other = BotConfig.from_env(prefix="OTHER_", environ=env)
    assert other.lookback_blocks == 3 and other.poll_interval_s == 1.0


@pytest.mark.parametrize(("var", "raw", "field", "expected"), [
    ("XMARGIN_FIXED_TIP_WEI", "1.5gwei", "fixed_tip_wei", 1_500_000_000),
    ("XMARGIN_FIXED_TIP_WEI", "2 GWEI", "fixed_tip_wei", 2 * GWEI),
    ("XMARGIN_FIXED_TIP_WEI", "12345", "fixed_tip_wei", 12345),
    ("XMARGIN_MAX_FEE_CAP_WEI", "0.000001eth", "max_fee_cap_wei", 10**12),
    ("XMARGIN_REPLACEMENT_BUMP_WAD", "12.5%", "replacement_bump_wad", 125 * 10**15),
    ("XMARGIN_PROFIT_SHARE_WAD", "33.3333%", "profit_share_wad", 333_333 * 10**12),
    ("XMARGIN_MIN_PROFIT_USD_WAD", "2.5usd", "min_profit_usd_wad", 5 * WAD // 2),
    # beyond float precision: exact all the same
    ("XMARGIN_MIN_PROFIT_USD_WAD", "123456789012.123456789usd", "min_profit_usd_wad", 123456789012123456789 * 10**9),
    ("XMARGIN_MIN_PROFIT_USD_WAD", "1_000_000_000_000_000_001", "min_profit_usd_wad", 10**18 + 1),
])
def test_money_values_are_parsed_exactly(var, raw, field, expected):
    value = getattr(load({var: raw}), field)
    assert value == expected and type(value) is int


@pytest.mark.parametrize(("env", "needle"), [
    ({"XMARGIN_REPLACEMENT_BUMP_WAD": "10%"}, "XMARGIN_REPLACEMENT_BUMP_WAD=100000000000000000: must be at least 12.5%"),
    ({"XMARGIN_FIXED_TIP_WEI": "0.5wei"}, "XMARGIN_FIXED_TIP_WEI='0.5wei' is not an amount of wei"),
    ({"XMARGIN_LOOKBACK_BLOCKS": "twelve"}, "XMARGIN_LOOKBACK_BLOCKS='twelve' is not an integer"),
    ({"XMARGIN_POLL_INTERVAL_S": "nan"}, "XMARGIN_POLL_INTERVAL_S='nan' is not a number"),
    ({"XMARGIN_POLL_INTERVAL_S": "0"}, "XMARGIN_POLL_INTERVAL_S=0.0: must be > 0 seconds"),
    ({"XMARGIN_DRY_RUN": "maybe"}, "XMARGIN_DRY_RUN='maybe' is not a boolean"),
    ({"XMARGIN_GAS_STRATEGY": "yolo"}, "must be one of fixed, profit_share"),
    ({"XMARGIN_LOG_CHUNK_MIN_BLOCKS": "5000"}, "XMARGIN_LOG_CHUNK_INITIAL_BLOCKS=2000: must lie between"),
    ({"XMARGIN_PROFIT_SHARE_WAD": "150%"}, "XMARGIN_PROFIT_SHARE_WAD"),
    ({"XMARGIN_METRICS_PORT": "70000"}, "XMARGIN_METRICS_PORT=70000: must be 1..65535 or 'off'"),
    ({"XMARGIN_FIXED_TIP_WEI": "600gwei"}, "must not exceed max_fee_cap_wei"),
    ({"XMARGIN_LENS_BATCH_SIZE": "201"}, "XMARGIN_LENS_BATCH_SIZE=201: must be at most 200 (the Lens's limit)"),
])
def test_bad_values_raise_one_actionable_line(env, needle):
    with pytest.raises(BotConfigError) as info:
        load(env)
    message = str(info.value)
    assert needle in message
    assert "\n" not in message


def test_config_error_types():
    with pytest.raises(BotConfigError) as info:
        load({"XMARGIN_STUCK_AFTER_BLOCKS": "0"})
    assert isinstance(info.value, BotError)
    assert isinstance(info.value, ProtocolConfigError)
    assert isinstance(info.value, ValueError)


def test_no_floats_on_money_and_unknown_settings_rejected():
    with pytest.raises(BotConfigError, match="min_profit_usd_wad=1.5.*must be a USD amount"):
        load(min_profit_usd_wad=1.5)
    with pytest.raises(BotConfigError, match="must be an integer"):
        load(lookback_blocks=True)
    with pytest.raises(BotConfigError, match="unknown bot setting 'lookback'"):
        load(lookback=3)


def test_frozen_and_replace_validates():
    cfg = load()
    with pytest.raises(dataclasses.FrozenInstanceError):
        cfg.dry_run = True  # type: ignore[misc]
    assert cfg.replace(dry_run=True).dry_run is True
    with pytest.raises(BotConfigError, match="replacement_bump_wad"):
        cfg.replace(replacement_bump_wad=MIN_REPLACEMENT_BUMP_WAD - 1)


def test_rpc_url_with_api_key_is_never_shown():
    secret = "https://eth-mainnet.example.com/v2/SeCrEtApIkEy123"
    cfg = load(rpc_url=secret)
    assert "SeCrEtApIkEy123" not in repr(cfg)
    assert cfg.summary()["rpc_url"] == "https://eth-mainnet.example.com/…"
    with pytest.raises(BotConfigError) as info:
        load({"XMARGIN_RPC_URL": "wss://node.example.com/SeCrEtApIkEy123"})
    assert "SeCrEtApIkEy123" not in str(info.value)
    assert "XMARGIN_RPC_URL" in str(info.value)
    assert redact_url("http://127.0.0.1:8545") == "http://127.0.0.1:8545"
    assert redact_url("memory") == "memory"
