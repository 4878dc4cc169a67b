"""API keys: who may call the gateway, which models each key sees, and its own limits.

Keys come from a file — the Kubernetes Secret the operator mounts, or ``VGATE_API_KEYS_FILE``
outside a cluster — one key per line, or its SHA-256 (``sha256:<hex>``) so the file itself need
not hold secrets. Options after the key narrow it down::

    # key or sha256:<hex>      options (all optional)
    sk-team-a-1f9c...          id=team-a models=Qwen/Qwen2.5-1.5B-Instruct-AWQ rpm=600 tpm=200000
    sha256:9f86d081884c7d65... id=batch rpm=60 rpm_burst=10 priority=low
    sk-ops-77d2...             id=ops priority=high weight=2 deadline_ms=5000
    sk-app-0b1e...             id=app max_priority=high

Only digests are held in memory. A presented key is hashed and compared with every known
digest by :func:`hmac.compare_digest`, so the time taken says nothing about how close a guess
was. The file is re-read when it changes (a Secret update lands without a restart); a file
that fails to parse keeps the previous keys in force.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import logging
import os
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from vgate_gateway.errors import OpenAIError
from vgate_gateway.protocol import Priority

log = logging.getLogger(__name__)

#: Longest key accepted; anything longer is refused before hashing.
MAX_KEY_LENGTH = 256
_HASH_PREFIX = "sha256:"
_INT_OPTIONS = ("rpm", "tpm", "rpm_burst", "tpm_burst", "deadline_ms")
_OPTIONS = "id, models, rpm, tpm, rpm_burst, tpm_burst, priority, max_priority, weight, deadline_ms"
#: The most a key's weight may differ from another's (and the least it may be).
MAX_WEIGHT = 1000.0
PRIORITIES = {p.label: p for p in Priority}


@dataclass(frozen=True)
class ApiKey:
    """One configured key, without the key itself."""

    #: Short, non-secret name for logs and metric labels.
    key_id: str
    digest: bytes
    #: Models this key may use; ``None`` means every served model.
    models: frozenset[str] | None = None
    #: Per-key limits; ``None`` falls back to the gateway-wide setting.
    rpm: int | None = None
    tpm: int | None = None
    rpm_burst: int | None = None
    tpm_burst: int | None = None
    #: The class of its requests in a model's queue; a request may lower it by a header.
    priority: Priority = Priority.NORMAL
    #: The most urgent class a request of this key may ask for (default: ``priority``).
    max_priority: Priority | None = None
    #: Its share of a saturated fleet against other keys of its class.
    weight: float = 1.0
    #: A deadline for its requests that send none (milliseconds to reach a worker).
    deadline_ms: int | None = None

    @property
    def ceiling(self) -> Priority:
        """The most urgent class this key's requests may ask for."""
        return min(self.priority, self.max_priority) if self.max_priority is not None else self.priority

    def allows(self, model: str) -> bool:
        return self.models is None or model in self.models


#: The caller when the gateway serves without keys.
ANONYMOUS = ApiKey(key_id="anonymous", digest=b"")


class KeyFileError(ValueError):
    """The keys file cannot be used; the message names the line."""


def digest_of(key: str) -> bytes:
    return hashlib.sha256(key.encode("ascii")).digest()


def parse_keys(text: str, source: str = "keys file") -> list[ApiKey]:
    """The keys of a keys file; raises :class:`KeyFileError` naming the first bad line."""
    keys: list[ApiKey] = []
    seen: set[bytes] = set()
    for number, raw in enumerate(text.splitlines(), start=1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        where = f"{source} line {number}"
        secret, *options = line.split()
        digest = _line_digest(secret, where)
        if digest in seen:
            raise KeyFileError(f"{where}: the same key appears twice")
        seen.add(digest)
        keys.append(_with_options(digest, options, where))
    return keys


def _line_digest(secret: str, where: str) -> bytes:
    if secret.startswith(_HASH_PREFIX):
        hexdigest = secret[len(_HASH_PREFIX) :]
        try:
            digest = bytes.fromhex(hexdigest)
        except ValueError:
            digest = b""
        if len(digest) != 32:
            raise KeyFileError(f"{where}: 'sha256:' must be followed by 64 hex digits")
        return digest
    if not _plain_ascii(secret) or len(secret) > MAX_KEY_LENGTH:
        raise KeyFileError(f"{where}: a key must be printable ASCII, at most {MAX_KEY_LENGTH} characters")
    return digest_of(secret)


def _with_options(digest: bytes, options: Iterable[str], where: str) -> ApiKey:
    fields: dict[str, object] = {"key_id": "key-" + digest.hex()[:8]}
    for option in options:
        name, sep, value = option.partition("=")
        if not sep or not value:
            raise KeyFileError(f"{where}: option {option!r} must be name=value")
        if name == "id":
            fields["key_id"] = value
        elif name == "models":
            fields["models"] = frozenset(m for m in value.split(",") if m)
        elif name in _INT_OPTIONS:
            if not value.isdigit() or int(value) < 1:
                raise KeyFileError(f"{where}: {name} must be a positive integer")
            fields[name] = int(value)
        elif name in ("priority", "max_priority"):
            if value not in PRIORITIES:
                raise KeyFileError(f"{where}: {name} must be one of {', '.join(PRIORITIES)}")
            fields[name] = PRIORITIES[value]
        elif name == "weight":
            fields[name] = _weight(value, where)
        else:
            raise KeyFileError(f"{where}: unknown option {name!r} ({_OPTIONS})")
    return ApiKey(digest=digest, **fields)  # type: ignore[arg-type]


def _weight(value: str, where: str) -> float:
    try:
        weight = float(value)
    except ValueError:
        weight = 0.0
    if not 1 / MAX_WEIGHT <= weight <= MAX_WEIGHT:
        raise KeyFileError(f"{where}: weight must be a number from {1 / MAX_WEIGHT:g} to {MAX_WEIGHT:g}")
    return weight


def _plain_ascii(value: str) -> bool:
    return value.isascii() and value.isprintable() and " " not in value


def bearer_token(authorization: bytes | None) -> str:
    """The key in an ``Authorization: Bearer <key>`` header, or a 401."""
    if not authorization:
        raise invalid_key("You didn't provide an API key. Send it as 'Authorization: Bearer <key>'.")
    if len(authorization) > MAX_KEY_LENGTH + 16:
        raise invalid_key("Incorrect API key provided.")
    try:
        text = authorization.decode("ascii")
    except UnicodeDecodeError:
        raise invalid_key("Incorrect API key provided.") from None
    scheme, _, token = text.strip().partition(" ")
    token = token.strip()
    if scheme.lower() != "bearer" or not token:
        raise invalid_key("You didn't provide an API key. Send it as 'Authorization: Bearer <key>'.")
    if len(token) > MAX_KEY_LENGTH or not _plain_ascii(token):
        raise invalid_key("Incorrect API key provided.")
    return token


def invalid_key(message: str) -> OpenAIError:
    return OpenAIError(
        401,
        message,
        code="invalid_api_key",
        type_="invalid_request_error",
        headers={"www-authenticate": 'Bearer realm="vgate"'},
    )


class KeyStore:
    """The keys in force, reloaded from ``path`` when it changes; no path: the gateway is open."""

    def __init__(self, path: Path | None, reload_interval_s: float) -> None:
        self.path = path
        self.reload_interval_s = reload_interval_s
        self._keys: tuple[ApiKey, ...] = ()
        self._stamp: tuple[int, int, int] | None = None
        if path is not None:
            self._keys = tuple(parse_keys(path.read_text(encoding="utf-8"), str(path)))
            self._stamp = _stamp(path)

    @property
    def enabled(self) -> bool:
        return self.path is not None

    def __len__(self) -> int:
        return len(self._keys)

    def all(self) -> tuple[ApiKey, ...]:
        return self._keys

    def authenticate(self, authorization: bytes | None) -> ApiKey:
        """The key presented in ``authorization``, or a 401 :class:`OpenAIError`."""
        if not self.enabled:
            return ANONYMOUS
        presented = digest_of(bearer_token(authorization))
        found: ApiKey | None = None
        for key in self._keys:  # no early exit: every digest is compared
            if hmac.compare_digest(key.digest, presented):
                found = key
        if found is None:
            raise invalid_key("Incorrect API key provided.")
        return found

    def reload_if_changed(self) -> bool:
        """Re-read the file if it changed; keep the old keys if it is unreadable or invalid."""
        if self.path is None:
            return False
        try:
            stamp = _stamp(self.path)
            if stamp == self._stamp:
                return False
            keys = parse_keys(self.path.read_text(encoding="utf-8"), str(self.path))
        except (OSError, UnicodeDecodeError, KeyFileError) as exc:
            log.error("API keys not reloaded, the previous %d stay in force: %s", len(self._keys), exc)
            return False
        self._keys, self._stamp = tuple(keys), stamp
        log.info("API keys reloaded from %s: %d keys", self.path, len(keys))
        return True

    async def watch(self) -> None:
        """Poll the file for changes until cancelled (Secret volumes are updated by a symlink swap)."""
        while True:
            await asyncio.sleep(self.reload_interval_s)
            self.reload_if_changed()


def _stamp(path: Path) -> tuple[int, int, int]:
    st = os.stat(path)  # follows the Secret volume's ..data symlink
    return (st.st_ino, st.st_mtime_ns, st.st_size)
