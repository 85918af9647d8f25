"""The commit seal: an HMAC over a batch's manifest hash, written by the pipeline's own commit just
before the manifest, with a key that never enters the lake (Settings.seal_key). Whoever can write
the lake can write a manifest; only a manifest carrying the seal is ever anchored or paid. Pure."""

from __future__ import annotations

import hashlib
import hmac

DOMAIN = b"anchorlake seal/1"


def mac(key: bytes, dataset: str, seq: int, manifest_sha256: str) -> str:
    message = b"\n".join((DOMAIN, dataset.encode("utf-8"), str(seq).encode(), manifest_sha256.encode()))
    return hmac.new(key, message, hashlib.sha256).hexdigest()


def holds(key: bytes, dataset: str, seq: int, manifest_sha256: str, given: str) -> bool:
    return hmac.compare_digest(mac(key, dataset, seq, manifest_sha256), given)
