"""API credentials: API keys and user passwords in a small JSON file.

The file looks like::

    {"api_keys": [{"name": "ci", "salt": "…", "sha256": "…"}],
     "users":    [{"user": "ana", "kdf": "scrypt", "n": 16384, "r": 8, "p": 1, "salt": "…", "hash": "…"}]}

An API key's ``sha256`` is the hex SHA-256 of ``salt + key`` (both UTF-8): keys are random and long, one round is
enough. A password's ``hash`` is the hex scrypt (standard library ``hashlib.scrypt``, 32 bytes) of the password
with the UTF-8 ``salt`` and the stored cost parameters. Users stored by older versions as a salted SHA-256
(``salt`` + ``sha256``) still log in, and are rewritten with scrypt on their first successful login. Secrets
themselves are never stored. A successful password check is remembered in memory (keyed by a per-process HMAC of
user and password), so the cost is paid once per client rather than on every request.

This module uses only the standard library, so keys can be managed without installing Foci::

    python foci/service/auth.py --file auth.json add-key laptop      # prints a new random key once
    python foci/service/auth.py --file auth.json add-user ana        # asks for a password
    python foci/service/auth.py --file auth.json list
    python foci/service/auth.py --file auth.json remove laptop
"""

from __future__ import annotations

import argparse
import base64
import binascii
import getpass
import hashlib
import hmac
import ipaddress
import json
import logging
import os
import secrets
import sys
import tempfile
import threading
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

DEFAULT_AUTH_FILE = "auth.json"
_SALT_BYTES = 16
_KEY_BYTES = 32
_LOOPBACK_NAMES = frozenset({"localhost", "localhost.localdomain", "ip6-localhost", "ip6-loopback"})
SCRYPT_N, SCRYPT_R, SCRYPT_P = 2**14, 8, 1  # the "interactive login" cost: 16 MiB, tens of milliseconds
_SCRYPT_MAX_N = 2**20
_VERIFIED_LIMIT = 256
_log = logging.getLogger(__name__)


class AuthError(ValueError):
    """An unusable credentials file, or a refusal to serve a non-loopback address without credentials."""


def hash_secret(secret: str, salt: str | None = None) -> tuple[str, str]:
    """``(salt, sha256_hex)`` of a key or password; a fresh random salt when none is given."""
    if not isinstance(secret, str) or not secret:
        raise AuthError("a key or password must be a non-empty string")
    salt = secrets.token_hex(_SALT_BYTES) if salt is None else salt
    return salt, hashlib.sha256((salt + secret).encode("utf-8")).hexdigest()


def hash_password(password: str, salt: str | None = None, *, n: int = SCRYPT_N, r: int = SCRYPT_R,
                  p: int = SCRYPT_P) -> dict[str, object]:
    """The stored form of a user password: ``{"kdf": "scrypt", "n", "r", "p", "salt", "hash"}``."""
    if not isinstance(password, str) or not password:
        raise AuthError("a password must be a non-empty string")
    salt = secrets.token_hex(_SALT_BYTES) if salt is None else salt
    return {"kdf": "scrypt", "n": n, "r": r, "p": p, "salt": salt, "hash": _scrypt(password, salt, n, r, p)}


def _scrypt(secret: str, salt: str, n: int, r: int, p: int) -> str:
    return hashlib.scrypt(secret.encode("utf-8"), salt=salt.encode("utf-8"), n=n, r=r, p=p, dklen=32,
                          maxmem=256 * n * r + (1 << 20)).hex()


def is_loopback(host: str) -> bool:
    """True for 127.0.0.0/8, ::1 and the usual names of localhost; False for 0.0.0.0, :: and anything else."""
    host = host.strip().strip("[]").lower()
    if host in _LOOPBACK_NAMES:
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


@dataclass(frozen=True)
class Credential:
    """One stored secret: who it belongs to, its salt and its hash (``kdf`` "sha256": one salted SHA-256 round,
    as for API keys and users of older versions; "scrypt" with ``cost`` = (n, r, p) for passwords)."""

    name: str
    salt: str
    sha256: str  # the hex digest, whatever the kdf
    kdf: str = "sha256"
    cost: tuple[int, int, int] = (SCRYPT_N, SCRYPT_R, SCRYPT_P)

    def matches(self, secret: str) -> bool:
        """Constant-time comparison of ``secret`` against the stored hash."""
        if self.kdf == "scrypt":
            digest = _scrypt(secret or "\0", self.salt, *self.cost)
        else:
            _, digest = hash_secret(secret or "\0", self.salt)
        return hmac.compare_digest(digest, self.sha256.lower())


def _credentials(path: Path, data: Mapping[str, object], section: str, name_key: str) -> tuple[Credential, ...]:
    entries = data.get(section, [])
    if not isinstance(entries, list):
        raise AuthError(f"{path}: {section!r} must be a list")
    result = []
    for index, entry in enumerate(entries):
        where = f"{path}: {section}[{index}]"
        if not isinstance(entry, dict):
            raise AuthError(f"{where} must be an object with {name_key!r}, 'salt' and 'sha256'")
        if section == "users" and entry.get("kdf") is not None:
            result.append(_scrypt_credential(entry, where))
            continue
        values = [entry.get(key) for key in (name_key, "salt", "sha256")]
        if not all(isinstance(value, str) and value for value in values):
            raise AuthError(f"{where} needs non-empty strings {name_key!r}, 'salt' and 'sha256'")
        name, salt, digest = values
        if not _is_hex64(digest):
            raise AuthError(f"{where}: 'sha256' must be 64 hex digits")
        result.append(Credential(name, salt, digest))
    return tuple(result)


def _scrypt_credential(entry: Mapping[str, object], where: str) -> Credential:
    if entry.get("kdf") != "scrypt":
        raise AuthError(f"{where}: unknown 'kdf' {entry.get('kdf')!r}; expected 'scrypt'")
    name, salt, digest = (entry.get(key) for key in ("user", "salt", "hash"))
    if not all(isinstance(value, str) and value for value in (name, salt, digest)):
        raise AuthError(f"{where} needs non-empty strings 'user', 'salt' and 'hash'")
    if not _is_hex64(str(digest)):
        raise AuthError(f"{where}: 'hash' must be 64 hex digits")
    cost = tuple(entry.get(key) for key in ("n", "r", "p"))
    if not all(isinstance(value, int) and not isinstance(value, bool) and value > 0 for value in cost):
        raise AuthError(f"{where}: 'n', 'r' and 'p' must be positive integers")
    n, r, p = (int(value) for value in cost)  # type: ignore[arg-type]
    if n < 2 or n & (n - 1) or n > _SCRYPT_MAX_N or r * p > 64:
        raise AuthError(f"{where}: scrypt cost out of range (n a power of two up to {_SCRYPT_MAX_N}, r*p <= 64)")
    return Credential(str(name), str(salt), str(digest), "scrypt", (n, r, p))


def _is_hex64(text: str) -> bool:
    return len(text) == 64 and all(char in "0123456789abcdefABCDEF" for char in text)


def read_auth_file(path: Path) -> dict[str, list[dict[str, str]]]:
    """The raw JSON object of a credentials file (empty sections when the file does not exist)."""
    if not path.exists():
        return {"api_keys": [], "users": []}
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except OSError as error:
        raise AuthError(f"cannot read {path}: {error.strerror or error}") from error
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        raise AuthError(f"{path} is not valid JSON: {error}") from error
    if not isinstance(data, dict):
        raise AuthError(f"{path} must hold a JSON object with 'api_keys' and/or 'users'")
    data.setdefault("api_keys", [])
    data.setdefault("users", [])
    return data


def write_auth_file(path: Path, data: Mapping[str, object]) -> None:
    """Write the credentials file atomically, readable by its owner only."""
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, temporary = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(handle, "w", encoding="utf-8") as stream:
            json.dump(data, stream, indent=2)
            stream.write("\n")
        os.chmod(temporary, 0o600)
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise


@dataclass(frozen=True)
class AuthConfig:
    """The credentials a server accepts. With none, every request is allowed (loopback only).

    ``path`` is the file they came from: users still stored with SHA-256 are rewritten there with scrypt on their
    first successful login.
    """

    api_keys: tuple[Credential, ...] = ()
    users: tuple[Credential, ...] = ()
    path: Path | None = None
    _verified: dict[bytes, str] = field(default_factory=dict, compare=False, repr=False)
    _verified_key: bytes = field(default_factory=lambda: secrets.token_bytes(32), compare=False, repr=False)
    _lock: threading.Lock = field(default_factory=threading.Lock, compare=False, repr=False)

    @property
    def enabled(self) -> bool:
        """True when requests must carry a key or a user/password."""
        return bool(self.api_keys or self.users)

    @classmethod
    def load(cls, path: Path | None, *, listen_host: str) -> AuthConfig:
        """Read ``path`` (None: no file) for a server listening on ``listen_host``.

        A loopback host without credentials serves everyone on this machine; any other host without credentials
        raises :class:`AuthError`, as does a named file that is missing or malformed.
        """
        config = cls()
        if path is not None:
            path = Path(path).expanduser()
            if not path.is_file():
                raise AuthError(f"credentials file {path} does not exist; create it with "
                                f"`python -m foci.service.auth --file {path} add-key NAME`")
            data = read_auth_file(path)
            config = cls(_credentials(path, data, "api_keys", "name"), _credentials(path, data, "users", "user"),
                         path)
        if not config.enabled and not is_loopback(listen_host):
            target = path or Path(DEFAULT_AUTH_FILE)
            raise AuthError(
                f"refusing to listen on {listen_host} without credentials; create {target} with "
                f"`python -m foci.service.auth --file {target} add-key NAME` (or add-user USER) and pass it to "
                "the server, or listen on 127.0.0.1")
        return config

    def check_key(self, key: str) -> str | None:
        """The name of the API key equal to ``key``, or None. Every stored key is compared (constant time)."""
        found = None
        for credential in self.api_keys:
            if credential.matches(key) and found is None:
                found = credential.name
        return found

    def check_user(self, user: str, password: str) -> str | None:
        """The user name when ``user``/``password`` match a stored user, or None.

        Only the named user's hash is computed (a dummy one for an unknown user, so both take as long); a user
        still stored with SHA-256 is migrated to scrypt on success.
        """
        token = hmac.new(self._verified_key, f"{user}\0{password}".encode(), hashlib.sha256).digest()
        with self._lock:
            known = self._verified.get(token)
        if known is not None:
            return known
        credential = None
        for candidate in self.users:
            if hmac.compare_digest(candidate.name.encode("utf-8"), user.encode("utf-8")):
                credential = candidate
        if credential is None:
            _DUMMY_USER.matches(password)
            return None
        if not credential.matches(password):
            return None
        if credential.kdf != "scrypt":
            self._migrate(credential, password)
        with self._lock:
            if len(self._verified) >= _VERIFIED_LIMIT:
                self._verified.clear()
            self._verified[token] = credential.name
        return credential.name

    def _migrate(self, credential: Credential, password: str) -> None:
        """Rewrite a SHA-256 user entry of the credentials file with scrypt (logged, never raised)."""
        if self.path is None:
            return
        with self._lock:
            try:
                data = read_auth_file(self.path)
                users = data["users"]
                for index, entry in enumerate(users):
                    if (isinstance(entry, dict) and entry.get("user") == credential.name
                            and entry.get("salt") == credential.salt and entry.get("sha256") == credential.sha256):
                        users[index] = {"user": credential.name, **hash_password(password)}
                        write_auth_file(self.path, data)
                        _log.info("user %r: password hash upgraded to scrypt in %s", credential.name, self.path)
                        return
            except (AuthError, OSError) as error:
                _log.warning("could not upgrade the password hash of %r in %s: %s", credential.name, self.path,
                             error)

    def authenticate(self, headers: Mapping[str, str]) -> str | None:
        """Who sent a request with these headers (``key:NAME`` or ``user:NAME``), or None when it may not pass.

        Accepted: ``Authorization: Bearer <key>``, ``X-API-Key: <key>``, ``Authorization: Basic <user:password>``.
        Header names are matched case-insensitively. Without configured credentials everyone passes as
        ``anonymous``.
        """
        if not self.enabled:
            return "anonymous"
        lowered = {name.lower(): value for name, value in headers.items()}
        api_key = lowered.get("x-api-key")
        if api_key:
            name = self.check_key(api_key.strip())
            return f"key:{name}" if name is not None else None
        scheme, _, value = (lowered.get("authorization") or "").strip().partition(" ")
        value = value.strip()
        if scheme.lower() == "bearer" and value:
            name = self.check_key(value)
            return f"key:{name}" if name is not None else None
        if scheme.lower() == "basic" and value:
            try:
                decoded = base64.b64decode(value, validate=True).decode("utf-8")
            except (binascii.Error, UnicodeDecodeError):
                return None
            user, separator, password = decoded.partition(":")
            if not separator:
                return None
            name = self.check_user(user, password)
            if name is not None:
                return f"user:{name}"
            key_name = self.check_key(password)  # a browser with only an API key: any user name, the key as password
            return f"key:{key_name}" if key_name is not None else None
        return None


_DUMMY_USER = Credential("", "dummy-salt", "0" * 64, "scrypt")


# ------------------------------------------------------------------------------------ key management
def add_api_key(path: Path, name: str, key: str | None = None) -> str:
    """Store a new API key called ``name`` (random when not given) in ``path``; return the key to hand out."""
    data = read_auth_file(path)
    if any(entry.get("name") == name for entry in data["api_keys"]):
        raise AuthError(f"{path} already has an API key called {name!r}; remove it first")
    key = key or secrets.token_urlsafe(_KEY_BYTES)
    salt, digest = hash_secret(key)
    data["api_keys"].append({"name": name, "salt": salt, "sha256": digest})
    write_auth_file(path, data)
    return key


def add_user(path: Path, user: str, password: str) -> None:
    """Store (or replace) a user's scrypt password hash in ``path``."""
    if ":" in user or not user:
        raise AuthError("a user name must be non-empty and may not contain ':'")
    data = read_auth_file(path)
    stored = hash_password(password)
    data["users"] = [entry for entry in data["users"] if entry.get("user") != user]
    data["users"].append({"user": user, **stored})
    write_auth_file(path, data)


def remove_credential(path: Path, name: str) -> bool:
    """Remove the API key or user called ``name``; False when there was none."""
    data = read_auth_file(path)
    keys = [entry for entry in data["api_keys"] if entry.get("name") != name]
    users = [entry for entry in data["users"] if entry.get("user") != name]
    if len(keys) == len(data["api_keys"]) and len(users) == len(data["users"]):
        return False
    data["api_keys"], data["users"] = keys, users
    write_auth_file(path, data)
    return True


def main(argv: Sequence[str] | None = None) -> int:
    """Manage the credentials file from the command line (standard library only)."""
    parser = argparse.ArgumentParser(prog="foci-auth", description="Manage Foci API keys and users.")
    parser.add_argument("--file", default=DEFAULT_AUTH_FILE, help=f"credentials file (default {DEFAULT_AUTH_FILE})")
    sub = parser.add_subparsers(dest="command", required=True)
    key = sub.add_parser("add-key", help="create a random API key and print it (shown only once)")
    key.add_argument("name")
    user = sub.add_parser("add-user", help="add or replace a user for HTTP Basic authentication")
    user.add_argument("user")
    user.add_argument("--password", default=None, help="the password (default: ask, or read stdin when piped)")
    sub.add_parser("list", help="names of the stored keys and users")
    remove = sub.add_parser("remove", help="remove a key or user by name")
    remove.add_argument("name")
    args = parser.parse_args(argv)
    path = Path(args.file).expanduser()
    try:
        if args.command == "add-key":
            print(add_api_key(path, args.name))
        elif args.command == "add-user":
            password = args.password
            if password is None:
                password = getpass.getpass("password: ") if sys.stdin.isatty() else sys.stdin.readline().rstrip("\n")
            add_user(path, args.user, password)
        elif args.command == "list":
            data = read_auth_file(path)
            for entry in data["api_keys"]:
                print(f"key\t{entry.get('name')}")
            for entry in data["users"]:
                print(f"user\t{entry.get('user')}")
        elif not remove_credential(path, args.name):
            print(f"foci-auth: error: no key or user called {args.name!r} in {path}", file=sys.stderr)
            return 1
    except AuthError as error:
        print(f"foci-auth: error: {error}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
