"""One error tree for anchorlake.

Each error carries the CLI exit code it maps to (SPEC §10) and whether a retry can help
(Airflow retries transient errors; terminal ones fail the task at once).
"""

from __future__ import annotations

import re
from urllib.parse import urlsplit


class AnchorlakeError(Exception):
    """Root of every error anchorlake raises on purpose."""

    exit_code: int = 1
    transient: bool = False


class CheckFailed(AnchorlakeError):
    """A proof, checksum, root or on-chain value does not match. Exit 1."""

    exit_code = 1


class RootMismatchError(CheckFailed):
    """A recomputed root differs from the expected one."""

    def __init__(self, expected: str, calculated: str, what: str = "root") -> None:
        super().__init__(f"{what} mismatch: expected {expected}, calculated {calculated}")
        self.expected = expected
        self.calculated = calculated


class ConflictError(CheckFailed):
    """What is stored (on chain or in the lake) contradicts what we were about to write."""


class BadInput(AnchorlakeError, ValueError):
    """Bad usage or malformed input (a file, an argument, a declaration). Exit 2."""

    exit_code = 2


class FormatError(BadInput):
    """A file anchorlake reads is not of the format it claims; names the file and the field."""

    def __init__(self, source: str, field: str, problem: str) -> None:
        super().__init__(f"{source}: {problem}" if field == "(file)" else f"{source}: {field}: {problem}")
        self.source = source
        self.field = field
        self.problem = problem


class NotFound(BadInput, LookupError):
    """A named object (dataset, batch, key, receipt) does not exist."""


class AlreadyExists(AnchorlakeError, FileExistsError):
    """A create-once object exists already (a manifest, a deployment)."""

    exit_code = 1


class ServiceUnavailable(AnchorlakeError, ConnectionError):
    """S3 or the chain RPC cannot be reached. Exit 3; a retry may help."""

    exit_code = 3
    transient = True


class ChainError(AnchorlakeError):
    """The chain refused what we sent (revert, missing role, no funds, wrong chain)."""

    exit_code = 1


_URL = re.compile(r"\b(?:https?|wss?)://[^\s'\"<>]+", re.IGNORECASE)


def redact_url(url: str) -> str:
    """An http(s)/ws(s) URL safe to show: credentials, path and query dropped, since RPC and S3
    providers put API keys there (`https://user:pw@host/v3/KEY` -> `https://***@host/…`)."""
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError:  # a malformed URL shows nothing but its scheme
        return url.split(":", 1)[0] + "://…"
    if parts.scheme.lower() not in ("http", "https", "ws", "wss") or not parts.hostname:
        return url
    host = parts.hostname if port is None else f"{parts.hostname}:{port}"
    hidden = "***@" if parts.username or parts.password else ""
    rest = "/…" if parts.path.strip("/") or parts.query or parts.fragment else ""
    return f"{parts.scheme}://{hidden}{host}{rest}"


def redact(text: str) -> str:
    """`text` with every http(s)/ws(s) URL in it redacted (see redact_url)."""
    return _URL.sub(lambda m: redact_url(m.group(0)), text)


def scrub(text: str, url: str) -> str:
    """`text` redacted, and with the secret parts of `url` (credentials, path, query) removed
    wherever they appear on their own: a node's error message may quote the path holding an API key."""
    try:
        parts = urlsplit(url)
        secrets = [parts.username, parts.password, parts.path.strip("/"), parts.query]
    except ValueError:
        secrets = [url]
    text = redact(text)
    for secret in sorted(filter(None, secrets), key=len, reverse=True):
        if len(secret) >= 3:
            text = text.replace(secret, "…")
    return text
