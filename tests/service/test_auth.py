"""API credentials: the file format, loopback rules, header checks, the key tool, and 401s over real HTTP."""

from __future__ import annotations

import base64
import json
import subprocess
import sys
from pathlib import Path

import httpx
import pytest

from foci.service import auth as auth_module
from foci.service.auth import AuthConfig, AuthError, add_api_key, add_user, hash_secret, is_loopback
from tests.service.test_api import StubEngine, run_api


def _basic(user: str, password: str) -> str:
    return "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()


def test_hash_secret_is_salted_sha256() -> None:
    salt, digest = hash_secret("s3cret", "abc")
    import hashlib

    assert (salt, digest) == ("abc", hashlib.sha256(b"abcs3cret").hexdigest())
    first, second = hash_secret("s3cret"), hash_secret("s3cret")
    assert first[0] != second[0] and first[1] != second[1]  # fresh random salts
    with pytest.raises(AuthError):
        hash_secret("")


@pytest.mark.parametrize(("host", "loopback"), [
    ("127.0.0.1", True), ("127.8.9.10", True), ("::1", True), ("[::1]", True), ("localhost", True),
    ("LOCALHOST", True), ("0.0.0.0", False), ("::", False), ("192.168.1.5", False), ("example.org", False),
    ("", False),
])
def test_loopback_hosts(host: str, loopback: bool) -> None:
    assert is_loopback(host) is loopback


def test_loopback_without_file_needs_no_auth() -> None:
    config = AuthConfig.load(None, listen_host="127.0.0.1")
    assert not config.enabled
    assert config.authenticate({}) == "anonymous"


@pytest.mark.parametrize("host", ["0.0.0.0", "::", "192.168.1.5"])
def test_public_host_without_credentials_refuses(host: str, tmp_path: Path) -> None:
    with pytest.raises(AuthError, match=f"refusing to listen on {host} without credentials; create"):
        AuthConfig.load(None, listen_host=host)
    empty = tmp_path / "auth.json"
    empty.write_text(json.dumps({"api_keys": [], "users": []}))
    with pytest.raises(AuthError, match="add-key"):
        AuthConfig.load(empty, listen_host=host)


def test_missing_or_malformed_file_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(AuthError, match="does not exist"):
        AuthConfig.load(tmp_path / "nope.json", listen_host="127.0.0.1")
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    with pytest.raises(AuthError, match="not valid JSON"):
        AuthConfig.load(bad, listen_host="127.0.0.1")
    bad.write_text(json.dumps({"api_keys": [{"name": "x", "salt": "s", "sha256": "zz"}]}))
    with pytest.raises(AuthError, match=r"api_keys\[0\]: 'sha256' must be 64 hex digits"):
        AuthConfig.load(bad, listen_host="127.0.0.1")
    bad.write_text(json.dumps({"users": [{"user": "ana"}]}))
    with pytest.raises(AuthError, match=r"users\[0\] needs non-empty strings"):
        AuthConfig.load(bad, listen_host="127.0.0.1")


def test_keys_and_users_in_every_header_form(tmp_path: Path) -> None:
    path = tmp_path / "auth.json"
    key = add_api_key(path, "ci")
    add_user(path, "ana", "pa:ss word")
    stored = json.loads(path.read_text())
    assert key not in path.read_text() and "pa:ss word" not in path.read_text()
    assert [entry["name"] for entry in stored["api_keys"]] == ["ci"]
    assert path.stat().st_mode & 0o777 == 0o600

    config = AuthConfig.load(path, listen_host="0.0.0.0")
    assert config.enabled
    assert config.authenticate({"Authorization": f"Bearer {key}"}) == "key:ci"
    assert config.authenticate({"authorization": f"bearer {key}"}) == "key:ci"
    assert config.authenticate({"X-API-Key": key}) == "key:ci"
    assert config.authenticate({"Authorization": _basic("ana", "pa:ss word")}) == "user:ana"
    for headers in ({}, {"Authorization": "Bearer nope"}, {"X-API-Key": key + "x"}, {"Authorization": key},
                    {"Authorization": _basic("ana", "wrong")}, {"Authorization": _basic("bob", "pa:ss word")},
                    {"Authorization": "Basic !!!notbase64"}, {"Authorization": "Basic " + base64.b64encode(
                        b"no-colon").decode()}, {"Authorization": "Bearer "}):
        assert config.authenticate(headers) is None, headers
    with pytest.raises(AuthError, match="already has"):
        add_api_key(path, "ci")


def test_key_tool_runs_without_foci(tmp_path: Path) -> None:
    """The helper works as a plain script with the standard library only (isolated mode, no foci on the path)."""
    script = Path(auth_module.__file__)
    path = tmp_path / "keys.json"
    run = subprocess.run([sys.executable, "-I", str(script), "--file", str(path), "add-key", "laptop"],
                         cwd=tmp_path, capture_output=True, text=True, timeout=30, check=True)
    key = run.stdout.strip()
    assert len(key) >= 40
    subprocess.run([sys.executable, "-I", str(script), "--file", str(path), "add-user", "ana"], input="pw\n",
                   cwd=tmp_path, capture_output=True, text=True, timeout=30, check=True)
    listing = subprocess.run([sys.executable, "-I", str(script), "--file", str(path), "list"], cwd=tmp_path,
                             capture_output=True, text=True, timeout=30, check=True).stdout
    assert listing.splitlines() == ["key\tlaptop", "user\tana"]
    config = AuthConfig.load(path, listen_host="0.0.0.0")
    assert config.check_key(key) == "laptop" and config.check_user("ana", "pw") == "ana"
    assert auth_module.main(["--file", str(path), "remove", "laptop"]) == 0
    assert auth_module.main(["--file", str(path), "remove", "laptop"]) == 1
    assert AuthConfig.load(path, listen_host="127.0.0.1").check_key(key) is None


# ------------------------------------------------------------------------------------------ over HTTP
def test_http_requests_need_the_right_credentials(tmp_path: Path) -> None:
    path = tmp_path / "auth.json"
    key = add_api_key(path, "ci")
    add_user(path, "ana", "secret")
    config = AuthConfig.load(path, listen_host="127.0.0.1")
    with run_api(tmp_path, StubEngine(tmp_path / "out"), with_worker=False, auth=config) as api, \
            httpx.Client(base_url=api.url, timeout=10) as client:
        missing = client.get("/v1/health")
        assert missing.status_code == 401
        assert "Bearer" in missing.headers["www-authenticate"]
        assert missing.json()["detail"] == "missing or invalid credentials"
        assert client.get("/v1/health", headers={"Authorization": "Bearer wrong"}).status_code == 401
        assert client.get("/v1/health", headers={"X-API-Key": "wrong"}).status_code == 401
        assert client.get("/v1/health", headers={"Authorization": "Basic %%%"}).status_code == 401
        assert client.get("/v1/jobs", auth=("ana", "nope")).status_code == 401
        assert client.post("/v1/jobs", json={"task": {}}).status_code == 401
        assert client.get("/v1/jobs/x/events").status_code == 401
        assert client.get("/v1/images/x.png").status_code == 401
        assert client.post("/v1/metadata", content=b"x", headers={"Content-Type": "image/png"}).status_code == 401
        assert client.get("/v1/health", headers={"Authorization": f"Bearer {key}"}).status_code == 200
        assert client.get("/v1/health", headers={"X-API-Key": key}).status_code == 200
        health = client.get("/v1/health", auth=("ana", "secret"))
        assert health.status_code == 200 and health.json()["auth"] is True
        created = client.post("/v1/jobs", json={"task": {"prompt": "x"}}, headers={"X-API-Key": key})
        assert created.status_code == 201
        # the schema stays readable, and it documents the three schemes
        schema = client.get("/openapi.json").json()
        assert {"HTTPBearer", "APIKeyHeader", "HTTPBasic"} <= set(schema["components"]["securitySchemes"])


def test_open_server_without_credentials(tmp_path: Path) -> None:
    with run_api(tmp_path, StubEngine(tmp_path / "out"), with_worker=False) as api, \
            httpx.Client(base_url=api.url, timeout=10) as client:
        assert client.get("/v1/health").status_code == 200
        assert client.get("/v1/health", headers={"Authorization": "Basic %%%"}).status_code == 200
        assert "securitySchemes" not in client.get("/openapi.json").json().get("components", {})


# ------------------------------------------------------------------------------------------ passwords
def test_passwords_are_stored_with_scrypt(tmp_path: Path) -> None:
    import hashlib

    path = tmp_path / "auth.json"
    add_user(path, "ana", "secret")
    (entry,) = json.loads(path.read_text())["users"]
    assert set(entry) == {"user", "kdf", "n", "r", "p", "salt", "hash"} and entry["kdf"] == "scrypt"
    assert (entry["n"], entry["r"], entry["p"]) == (2**14, 8, 1)
    expected = hashlib.scrypt(b"secret", salt=entry["salt"].encode(), n=2**14, r=8, p=1, dklen=32).hex()
    assert entry["hash"] == expected
    assert entry["hash"] != hashlib.sha256((entry["salt"] + "secret").encode()).hexdigest()
    config = AuthConfig.load(path, listen_host="127.0.0.1")
    assert config.check_user("ana", "secret") == "ana"
    assert config.check_user("ana", "secret") == "ana"  # remembered: no second scrypt
    assert config.check_user("ana", "Secret") is None and config.check_user("bob", "secret") is None


def test_old_sha256_users_are_migrated_on_first_successful_login(tmp_path: Path) -> None:
    path = tmp_path / "auth.json"
    salt, digest = hash_secret("old password", "abcd")
    key = add_api_key(path, "ci")
    data = json.loads(path.read_text())
    data["users"] = [{"user": "ana", "salt": salt, "sha256": digest}, {"user": "bob", "salt": "s", "sha256": "0" * 64}]
    path.write_text(json.dumps(data))
    config = AuthConfig.load(path, listen_host="127.0.0.1")
    assert config.authenticate({"Authorization": _basic("ana", "wrong")}) is None
    assert json.loads(path.read_text())["users"][0] == {"user": "ana", "salt": salt, "sha256": digest}
    assert config.authenticate({"Authorization": _basic("ana", "old password")}) == "user:ana"
    migrated = json.loads(path.read_text())
    assert migrated["users"][0]["user"] == "ana" and migrated["users"][0]["kdf"] == "scrypt"
    assert "sha256" not in migrated["users"][0]
    assert migrated["users"][1] == {"user": "bob", "salt": "s", "sha256": "0" * 64}  # untouched
    assert migrated["api_keys"] == data["api_keys"]  # keys stay salted SHA-256
    reloaded = AuthConfig.load(path, listen_host="127.0.0.1")
    assert reloaded.users[0].kdf == "scrypt"
    assert reloaded.authenticate({"Authorization": _basic("ana", "old password")}) == "user:ana"
    assert reloaded.authenticate({"Authorization": _basic("ana", "wrong")}) is None
    assert reloaded.authenticate({"X-API-Key": key}) == "key:ci"
    assert reloaded.authenticate({"Authorization": _basic("anyone", key)}) == "key:ci"  # browsers with a key


def test_malformed_scrypt_entries_are_clear_errors(tmp_path: Path) -> None:
    path = tmp_path / "auth.json"
    good = {"user": "ana", "kdf": "scrypt", "n": 16384, "r": 8, "p": 1, "salt": "s", "hash": "0" * 64}
    for change, message in (({"kdf": "md5"}, "unknown 'kdf'"), ({"n": 1000}, "power of two"),
                            ({"n": 2**24}, "power of two"), ({"hash": "xyz"}, "64 hex digits"),
                            ({"r": "8"}, "positive integers"), ({"salt": ""}, "non-empty strings")):
        path.write_text(json.dumps({"users": [{**good, **change}]}))
        with pytest.raises(AuthError, match=message):
            AuthConfig.load(path, listen_host="127.0.0.1")
