"""Small tagged records anchorlake writes beside the data: each kind's writer beside its
validating reader. Pure: dicts in, bytes out, and back.

Every record carries a `format` tag; `load` checks the tag and the type of every declared field
and raises FormatError naming the file and the field. Fields not declared are kept as they are.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from pipeline.errors import FormatError

_HEX64 = re.compile(r"[0-9a-f]{64}")
_0XHEX64 = re.compile(r"0x[0-9a-f]{64}")
_ADDRESS = re.compile(r"0x[0-9a-f]{40}")
_DECIMAL = re.compile(r"0|[1-9][0-9]*")

Check = Callable[[Any], bool]


def _integer(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


def _text(pattern: re.Pattern[str]) -> Check:
    return lambda value: isinstance(value, str) and pattern.fullmatch(value) is not None


INTEGER: Check = _integer
NUMBER: Check = lambda value: isinstance(value, (int, float)) and not isinstance(value, bool)  # noqa: E731
TEXT: Check = lambda value: isinstance(value, str)  # noqa: E731
LIST: Check = lambda value: isinstance(value, list)  # noqa: E731
OBJECT: Check = lambda value: isinstance(value, dict)  # noqa: E731
HEX64 = _text(_HEX64)  # a SHA-256 or Merkle root, lowercase hex
HASH = _text(_0XHEX64)  # a transaction, block or dataset id hash, 0x-prefixed
ADDRESS = _text(_ADDRESS)  # lowercase 0x address
DECIMAL = _text(_DECIMAL)  # an unsigned integer too large for JSON numbers (token base units)

_NAMES = {INTEGER: "a whole number >= 0", NUMBER: "a number", TEXT: "a string", LIST: "a list",
          OBJECT: "an object", HEX64: "64 lowercase hex characters", HASH: "0x and 64 lowercase hex characters",
          ADDRESS: "a lowercase 0x address", DECIMAL: "a decimal string"}


def tagged_json(raw: bytes, source: str, fmt: str | tuple[str, ...]) -> dict[str, Any]:
    """Parse a JSON object carrying the format tag `fmt` (or one of them); FormatError naming
    `source` otherwise."""
    try:
        data = json.loads(raw)
    except (ValueError, UnicodeDecodeError) as e:
        raise FormatError(source, "(file)", f"invalid JSON: {e}") from None
    except RecursionError:
        raise FormatError(source, "(file)", "JSON nested too deeply") from None
    formats = (fmt,) if isinstance(fmt, str) else fmt
    if not isinstance(data, dict) or data.get("format") not in formats:
        raise FormatError(source, "format", f"expected {' or '.join(map(repr, formats))}")
    return data


@dataclass(frozen=True)
class RecordKind:
    """One kind of tagged record: its format tag, required fields and optional fields."""

    format: str
    fields: Mapping[str, Check]
    optional: Mapping[str, Check] | None = None

    def dump(self, data: Mapping[str, Any]) -> bytes:
        """The record as JSON bytes with its format tag; checked like `load` checks it."""
        body = {"format": self.format, **{k: v for k, v in data.items() if k != "format"}}
        self.check(body, f"({self.format} being written)")
        return json.dumps(body, indent=1).encode()

    def load(self, raw: bytes, source: str) -> dict[str, Any]:
        """Parse and validate; raise FormatError naming `source` and the field at fault."""
        data = tagged_json(raw, source, self.format)
        self.check(data, source)
        return data

    def check(self, data: Any, source: str) -> None:
        if not isinstance(data, dict) or data.get("format") != self.format:
            raise FormatError(source, "format", f"expected {self.format!r}")
        for name, check in self.fields.items():
            if not check(data.get(name)):
                raise FormatError(source, name, f"missing or not {_NAMES.get(check, 'valid')}")
        for name, check in (self.optional or {}).items():
            if name in data and not check(data[name]):
                raise FormatError(source, name, f"not {_NAMES.get(check, 'valid')}")


ANCHOR = RecordKind("anchorlake.anchor/1", {
    "chain_id": INTEGER, "contract": ADDRESS, "dataset_id": HASH, "seq": INTEGER, "root": HEX64,
    "manifest_sha256": HEX64, "tx_hash": HASH, "block_number": INTEGER, "block_hash": HASH,
    "confirmations": INTEGER})

REWARDS_PUBLICATION = RecordKind("anchorlake.rewards-publication/1", {
    "chain_id": INTEGER, "contract": ADDRESS, "seq": INTEGER, "root": HEX64, "cumulative_total": DECIMAL,
    "tx_hash": HASH, "block_number": INTEGER})

SOURCES = RecordKind("anchorlake.sources/1", {"dataset": TEXT, "seq": INTEGER, "sources": LIST, "skipped": LIST})
SEAL = RecordKind("anchorlake.seal/1", {"dataset": TEXT, "seq": INTEGER, "manifest_sha256": HEX64, "mac": HEX64})
FAILED_PLAN = RecordKind("anchorlake.failed-batch/1", {"dataset": TEXT, "seq": INTEGER, "reason": TEXT,
                                                       "sources": LIST, "skipped": LIST})

RECEIPTS_INDEX = RecordKind("anchorlake.receipts-index/4", {"dataset": TEXT, "seq": INTEGER, "receipts": INTEGER,
                                                            "offsets": TEXT, "files": LIST},
                            {"anchor_block_hash": HASH})  # /4: the files are gzip, a member per receipt

LEASE = RecordKind("anchorlake.lease/1", {"owner": TEXT, "expires_at": NUMBER})

TX_INTENT = RecordKind("anchorlake.tx-intent/1", {
    "what": TEXT, "chain_id": INTEGER, "from": ADDRESS, "nonce": INTEGER, "attempts": LIST})

DEPLOYMENT = RecordKind("anchorlake.deployment/1", {"chain_id": INTEGER}, {
    "BatchAnchor": ADDRESS, "RewardDistributor": ADDRESS, "RewardToken": ADDRESS})
