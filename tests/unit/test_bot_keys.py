"""Key loading: keystore + password file / env, or XMARGIN_PRIVATE_KEY; secrets never shown."""

from __future__ import annotations

import logging
import os
import stat
import traceback

import pytest
from eth_account import Account

from bot.errors import BotError, KeyLoadError
from bot.keys import PASSWORD_ENV, PRIVATE_KEY_ENV, load_account, write_keystore

# A fixed test key (never funded anywhere) and a password, to look for in every output.
KEY_HEX = "4c0883a69102937d6231471b5dbb6204fe5129617082792ae468d01a3f362318"
PASSWORD = "correct horse battery staple"
ADDRESS = Account.from_key(KEY_HEX).address
FAST = {"iterations": 2**10}  # a cheap scrypt for tests; the default is slow on purpose


def secrets_absent(*texts: str) -> bool:
    joined = "\n".join(texts).lower()  # case-insensitive: a key may be shown upper-case
    return KEY_HEX not in joined and PASSWORD.lower() not in joined


def everything_shown(exc: BaseException, caplog: pytest.LogCaptureFixture) -> str:
    """The message, repr, full traceback with chained exceptions, and every log line."""
    tb = "".join(traceback.format_exception(type(exc), exc, exc.__traceback__))
    logs = "\n".join(r.getMessage() + repr(r.args) for r in caplog.records)
    return "\n".join([str(exc), repr(exc), tb, logs])


@pytest.fixture
def keystore(tmp_path):
    path = tmp_path / "liquidator.json"
    write_keystore(path, KEY_HEX, PASSWORD, **FAST)
    return path


def test_keystore_with_password_file_and_env(keystore, tmp_path, caplog):
    caplog.set_level(logging.DEBUG)
    pfile = tmp_path / "password.txt"
    pfile.write_text(PASSWORD + "\n")  # one trailing newline, as `echo` writes it
    account = load_account(str(keystore), str(pfile))
    assert account.address == ADDRESS
    assert load_account(keystore, environ={PASSWORD_ENV: PASSWORD}).address == ADDRESS
    assert load_account(keystore, password_env="MY_PW", environ={"MY_PW": PASSWORD}).address == ADDRESS
    assert secrets_absent(repr(account), str(account), caplog.text)
    assert ADDRESS in caplog.text  # the address, not the key, is logged


def test_wrong_password_is_one_line_and_never_shows_secrets(keystore, caplog):
    caplog.set_level(logging.DEBUG)
    with pytest.raises(KeyLoadError) as info:
        load_account(keystore, environ={PASSWORD_ENV: "wrong " + PASSWORD})
    assert str(info.value) == f"wrong keystore password for {keystore}"
    assert isinstance(info.value, BotError) and isinstance(info.value, ValueError)
    assert info.value.__cause__ is None
    shown = everything_shown(info.value, caplog)
    assert secrets_absent(shown) and "wrong " + PASSWORD not in shown


def test_write_keystore_refuses_overwrite_and_is_private(keystore):
    assert stat.S_IMODE(os.stat(keystore).st_mode) == 0o600
    assert KEY_HEX not in keystore.read_text()
    with pytest.raises(KeyLoadError, match="already exists"):
        write_keystore(keystore, KEY_HEX, PASSWORD, **FAST)
    assert write_keystore(keystore, KEY_HEX, "another password", overwrite=True, **FAST) == ADDRESS
    with pytest.raises(KeyLoadError, match="empty password"):
        write_keystore(keystore.with_name("x.json"), KEY_HEX, "", **FAST)


@pytest.mark.parametrize(("content", "needle"), [
    ("{not json", "is not valid JSON (line 1): export it again"),
    ('["a list"]', "has no 'crypto' section"),
    ('{"crypto": {"kdf": "scrypt"}, "version": 3}', "is not a valid v3 keystore"),
])
def test_malformed_keystores(tmp_path, content, needle, caplog):
    path = tmp_path / "bad.json"
    path.write_text(content)
    with pytest.raises(KeyLoadError) as info:
        load_account(path, environ={PASSWORD_ENV: PASSWORD})
    assert needle in str(info.value) and str(path) in str(info.value)
    assert "\n" not in str(info.value)
    assert secrets_absent(everything_shown(info.value, caplog))


def test_missing_files_and_password(tmp_path, keystore):
    with pytest.raises(KeyLoadError, match=r"keystore .*nope\.json not found: check the path"):
        load_account(tmp_path / "nope.json", environ={PASSWORD_ENV: PASSWORD})
    with pytest.raises(KeyLoadError, match=f"needs a password: set {PASSWORD_ENV} or give a password file"):
        load_account(keystore, environ={})
    with pytest.raises(KeyLoadError, match="password file .*missing.txt not found"):
        load_account(keystore, tmp_path / "missing.txt")
    empty = tmp_path / "empty.txt"
    empty.write_text("\n")
    with pytest.raises(KeyLoadError, match="is empty"):
        load_account(keystore, empty)
    with pytest.raises(KeyLoadError, match="is a directory"):
        load_account(tmp_path, environ={PASSWORD_ENV: PASSWORD})


@pytest.mark.parametrize("raw", [KEY_HEX, "0x" + KEY_HEX, "  0x" + KEY_HEX.upper() + "\n"])
def test_private_key_from_environment(raw, caplog):
    caplog.set_level(logging.DEBUG)
    account = load_account(environ={PRIVATE_KEY_ENV: raw})
    assert account.address == ADDRESS
    assert secrets_absent(caplog.text, repr(account))


@pytest.mark.parametrize("raw", [
    KEY_HEX[:-2],                 # 31 bytes
    KEY_HEX[:-1] + "g",           # not hex
    "0" * 64,                     # zero is not a key
    "f" * 64,                     # beyond the curve order
    KEY_HEX + "00",               # 33 bytes
])
def test_malformed_private_key_is_one_line_without_the_value(raw, caplog):
    caplog.set_level(logging.DEBUG)
    with pytest.raises(KeyLoadError) as info:
        load_account(environ={PRIVATE_KEY_ENV: raw})
    message = str(info.value)
    assert message.startswith(PRIVATE_KEY_ENV) and "\n" not in message
    shown = everything_shown(info.value, caplog)
    assert raw.lower() not in shown.lower()
    assert info.value.__context__ is None or raw not in str(info.value.__context__)


def test_no_key_at_all():
    with pytest.raises(KeyLoadError, match=f"no signing key: set {PRIVATE_KEY_ENV} or give a keystore"):
        load_account(environ={})


def test_mismatched_address_field_is_refused(keystore):
    import json

    data = json.loads(keystore.read_text())
    data["address"] = "00" * 20
    keystore.write_text(json.dumps(data))
    with pytest.raises(KeyLoadError, match="does not match its address field"):
        load_account(keystore, environ={PASSWORD_ENV: PASSWORD})
