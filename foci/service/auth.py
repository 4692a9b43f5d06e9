"""API credentials: salted SHA-256 API keys and user passwords in a small JSON file.

The file looks like::

    {"api_keys": [{"name": "ci", "salt": "…", "sha256": "…"}],
     "users":    [{"user": "ana", "salt": "…", "sha256": "…"}]}

``sha256`` is the hex SHA-256 of ``salt + secret`` (both UTF-8). Secrets themselves are never stored.

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
import os
import secrets
import sys
import tempfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

DEFAULT_AUTH_FILE = "auth.json"
_SALT_BYTES = 16
_KEY_BYTES = 32
_LOOPBACK_NAMES = frozenset({"localhost", "localhost.localdomain", "ip6-localhost", "ip6-loopback"})


class AuthError(ValueError):
    """An unusable credentials file, or a refusal to serve a non-loopback address without credentials."""


def hash_secret(secret: str, salt: str | None = None) -> tuple[str, str]:
    """``(salt, sha256_hex)`` of a key or password; a fresh random salt when none is given."""
    if not isinstance(secret, str) or not secret:
        raise AuthError("a key or password must be a non-empty string")
    salt = secrets.token_hex(_SALT_BYTES) if salt is None else salt
    return salt, hashlib.sha256((salt + secret).encode("utf-8")).hexdigest()


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
    """One stored secret: who it belongs to, its salt and its salted SHA-256."""

    name: str
    salt: str
    sha256: str

    def matches(self, secret: str) -> bool:
        """Constant-time comparison of ``secret`` against the stored hash."""
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
        values = [entry.get(key) for key in (name_key, "salt", "sha256")]
        if not all(isinstance(value, str) and value for value in values):
            raise AuthError(f"{where} needs non-empty strings {name_key!r}, 'salt' and 'sha256'")
        name, salt, digest = values
        if len(digest) != 64 or any(char not in "0123456789abcdefABCDEF" for char in digest):
            raise AuthError(f"{where}: 'sha256' must be 64 hex digits")
        result.append(Credential(name, salt, digest))
    return tuple(result)


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
    """The credentials a server accepts. With none, every request is allowed (loopback only)."""

    api_keys: tuple[Credential, ...] = ()
    users: tuple[Credential, ...] = ()

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
            config = cls(_credentials(path, data, "api_keys", "name"), _credentials(path, data, "users", "user"))
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
        """The user name when ``user``/``password`` match a stored user, or None (constant time per entry)."""
        found = None
        for credential in self.users:
            same_user = hmac.compare_digest(credential.name.encode("utf-8"), user.encode("utf-8"))
            if credential.matches(password) and same_user and found is None:
                found = credential.name
        return found

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
            return f"user:{name}" if name is not None else None
        return None


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
    """Store (or replace) a user's salted password hash in ``path``."""
    if ":" in user or not user:
        raise AuthError("a user name must be non-empty and may not contain ':'")
    data = read_auth_file(path)
    salt, digest = hash_secret(password)
    data["users"] = [entry for entry in data["users"] if entry.get("user") != user]
    data["users"].append({"user": user, "salt": salt, "sha256": digest})
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
