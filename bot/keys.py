"""Loading the liquidator's signing key without ever showing it.

The key comes from an encrypted keystore (Web3 Secret Storage v3, as geth and ``eth_account``
write it) whose password is read from a file or an environment variable, or else from the
environment variable ``XMARGIN_PRIVATE_KEY``. Errors are one :class:`~bot.errors.KeyLoadError`
line; neither the key nor the password ever appears in a message, a ``repr``, a log record or a
chained exception (errors are raised outside the ``except`` block that caught the library's
exception, so no ``__context__`` carries library text either).
"""

from __future__ import annotations

import json
import logging
import os
import stat
from collections.abc import Mapping
from pathlib import Path

from eth_account import Account
from eth_account.signers.local import LocalAccount

from .errors import KeyLoadError

log = logging.getLogger(__name__)

PRIVATE_KEY_ENV = "XMARGIN_PRIVATE_KEY"
PASSWORD_ENV = "XMARGIN_KEYSTORE_PASSWORD"
_HEX = frozenset("0123456789abcdefABCDEF")


def load_account(
    keystore: str | os.PathLike[str] | None = None,
    password_file: str | os.PathLike[str] | None = None,
    password_env: str = PASSWORD_ENV,
    *,
    environ: Mapping[str, str] | None = None,
) -> LocalAccount:
    """The liquidator's account.

    With ``keystore``: decrypt it with the password from ``password_file`` (one trailing newline
    is ignored) or, without a file, from the environment variable ``password_env``. Without
    ``keystore``: the hex private key in ``XMARGIN_PRIVATE_KEY``. ``environ`` defaults to
    ``os.environ``. Raises :class:`KeyLoadError` with one line saying what to fix.
    """
    env = os.environ if environ is None else environ
    if keystore is None:
        raw = env.get(PRIVATE_KEY_ENV, "")
        if not raw.strip():
            raise KeyLoadError(
                f"no signing key: set {PRIVATE_KEY_ENV} or give a keystore (--keystore) with its password"
            )
        account = _account_from_hex(raw, PRIVATE_KEY_ENV)
        log.info("loaded liquidator account %s from %s", account.address, PRIVATE_KEY_ENV)
        return account

    path = Path(keystore)
    password = _read_password(path, password_file, password_env, env)
    data = _read_keystore(path)
    key: bytes | None = None
    wrong_password = False
    malformed: str | None = None
    try:
        key = bytes(Account.decrypt(data, password))
    except ValueError as exc:  # eth-keyfile's "MAC mismatch" is a ValueError subclass
        if "mac mismatch" in str(exc).lower():
            wrong_password = True
        else:
            malformed = type(exc).__name__
    except (KeyError, TypeError, AttributeError, NotImplementedError) as exc:
        malformed = f"{type(exc).__name__} {exc}" if isinstance(exc, KeyError) else type(exc).__name__
    if wrong_password:
        raise KeyLoadError(f"wrong keystore password for {path}")
    if malformed is not None or key is None:
        raise KeyLoadError(f"keystore {path} is not a valid v3 keystore ({malformed}): export it again")
    account = _account_from_bytes(key, f"keystore {path}")
    expected = data.get("address")
    if isinstance(expected, str) and expected.lower().removeprefix("0x") != account.address.lower()[2:]:
        raise KeyLoadError(f"keystore {path} decrypts to a key that does not match its address field: export it again")
    _warn_if_readable(path)
    log.info("loaded liquidator account %s from keystore %s", account.address, path)
    return account


def write_keystore(
    path: str | os.PathLike[str],
    private_key: str | bytes,
    password: str,
    *,
    kdf: str = "scrypt",
    iterations: int | None = None,
    overwrite: bool = False,
) -> str:
    """Encrypt ``private_key`` with ``password`` into a v3 keystore at ``path`` (mode 0600).

    ``iterations`` is the scrypt ``n`` (a power of two) or the pbkdf2 round count; the library
    default is slow on purpose, tests pass a small value. Refuses to overwrite an existing file
    unless ``overwrite``. Returns the checksummed address.
    """
    if isinstance(private_key, bytes):
        account = _account_from_bytes(private_key, "the private key")
    else:
        account = _account_from_hex(private_key, "the private key")
    target = Path(path)
    if target.exists() and not overwrite:
        raise KeyLoadError(f"{target} already exists: choose another path or remove it first")
    if not password:
        raise KeyLoadError("refusing to write a keystore with an empty password: choose a password")
    data = Account.encrypt(account.key, password, kdf=kdf, iterations=iterations)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_name(target.name + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as fh:
        json.dump(data, fh)
    tmp.replace(target)
    log.info("wrote keystore for %s to %s", account.address, target)
    return account.address


# ---------------------------------------------------------------------- helpers


def _read_password(path: Path, password_file: str | os.PathLike[str] | None, password_env: str,
                   env: Mapping[str, str]) -> str:
    if password_file is not None:
        pfile = Path(password_file)
        try:
            text = pfile.read_text(encoding="utf-8")
        except FileNotFoundError:
            raise KeyLoadError(f"password file {pfile} not found: give the file that holds the password of {path}") from None
        except (OSError, UnicodeDecodeError) as exc:
            raise KeyLoadError(f"cannot read password file {pfile} ({type(exc).__name__}): check its permissions") from None
        if text.endswith("\r\n"):
            text = text[:-2]
        elif text.endswith("\n"):
            text = text[:-1]
        if not text:
            raise KeyLoadError(f"password file {pfile} is empty: write the password of {path} into it")
        return text
    password = env.get(password_env, "")
    if not password:
        raise KeyLoadError(f"keystore {path} needs a password: set {password_env} or give a password file")
    return password


def _read_keystore(path: Path) -> dict:
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise KeyLoadError(f"keystore {path} not found: check the path") from None
    except IsADirectoryError:
        raise KeyLoadError(f"keystore {path} is a directory: give the keystore JSON file inside it") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise KeyLoadError(f"cannot read keystore {path} ({type(exc).__name__}): check its permissions") from None
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise KeyLoadError(f"keystore {path} is not valid JSON (line {exc.lineno}): export it again") from None
    if not isinstance(data, dict) or not ({"crypto", "Crypto"} & data.keys()):
        raise KeyLoadError(f"keystore {path} has no 'crypto' section: it is not a v3 keystore")
    return data


def _account_from_hex(raw: str, source: str) -> LocalAccount:
    text = raw.strip()
    if text[:2] in ("0x", "0X"):
        text = text[2:]
    if len(text) != 64 or not _HEX.issuperset(text):
        raise KeyLoadError(f"{source} is not a private key: give 64 hex digits (32 bytes), with or without 0x")
    return _account_from_bytes(bytes.fromhex(text), source)


def _account_from_bytes(key: bytes, source: str) -> LocalAccount:
    account: LocalAccount | None = None
    if len(key) == 32:
        try:
            account = Account.from_key(key)
        except (ValueError, TypeError):
            account = None  # zero or beyond the curve order; reported below, outside this block
    if account is None:
        raise KeyLoadError(f"{source} is not a valid secp256k1 private key: check it")
    return account


def _warn_if_readable(path: Path) -> None:
    try:
        mode = path.stat().st_mode
    except OSError:
        return
    if mode & (stat.S_IRGRP | stat.S_IROTH):
        log.warning("keystore %s is readable by other users (mode %o): run chmod 600 %s", path, mode & 0o777, path)
