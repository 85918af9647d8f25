"""Signed contributions (SPEC §13.7): EIP-191 `personal_sign` over a text naming the dataset and
the file's SHA-256, kept beside the file as `FILE.sig.json`. Pure: bytes and keys in, records out.

The signature binds the file to its signer: in a dataset declared `contributors: "signed"`, a
source without a valid signature is quarantined whole (`unsigned_source`) and a row naming
another contributor than the signer is quarantined (`contributor_not_signer`).
"""

from __future__ import annotations

import hashlib
import re
from typing import Any

from eth_hash.auto import keccak

from pipeline.core.records import ADDRESS, HEX64, INTEGER, TEXT, RecordKind, tagged_json
from pipeline.errors import FormatError

SIDECAR_SUFFIX = ".sig.json"
MAX_SIDECAR_BYTES = 4096
_SIGNATURE = re.compile(r"0x[0-9a-f]{130}")
_SECP256K1_HALF_N = 0x7FFFFFFFFFFFFFFFFFFFFFFFFFFFFFFF5D576E7357A4501DDFE92F46681B20A0

CONTRIBUTION = RecordKind("anchorlake.contribution/1", {
    "dataset": TEXT, "sha256": HEX64, "bytes": INTEGER, "signer": ADDRESS,
    "signature": lambda v: isinstance(v, str) and _SIGNATURE.fullmatch(v) is not None})


def message(dataset: str, sha256: str) -> bytes:
    """The text a contributor signs for a file of `dataset` with this SHA-256."""
    return f"anchorlake contribution\ndataset: {dataset}\nsha256: {sha256}".encode()


def _digest(text: bytes) -> bytes:
    """EIP-191 version 0x45 (`personal_sign`): keccak256 of the prefixed message."""
    return bytes(keccak(b"\x19Ethereum Signed Message:\n" + str(len(text)).encode() + text))


def sign(private_key: str, dataset: str, sha256: str, size: int) -> dict[str, Any]:
    """The sidecar record for a file: its dataset, SHA-256, size, signer and signature."""
    from eth_keys import keys

    try:
        key = keys.PrivateKey(bytes.fromhex(private_key.removeprefix("0x")))
    except (ValueError, TypeError) as e:
        raise FormatError("ANCHORLAKE_CONTRIBUTOR_KEY", "(key)", f"not a private key: {type(e).__name__}") from None
    signed = key.sign_msg_hash(_digest(message(dataset, sha256)))
    signature = signed.r.to_bytes(32, "big") + signed.s.to_bytes(32, "big") + bytes([signed.v + 27])
    return {"format": CONTRIBUTION.format, "dataset": dataset, "sha256": sha256, "bytes": size,
            "signer": key.public_key.to_checksum_address().lower(), "signature": "0x" + signature.hex()}


def sign_file(private_key: str, dataset: str, data: bytes) -> dict[str, Any]:
    """The sidecar record signing the file with bytes `data` for `dataset`."""
    return sign(private_key, dataset, hashlib.sha256(data).hexdigest(), len(data))


def recover(dataset: str, sha256: str, signature: str) -> str:
    """The lowercase address that signed the file; ValueError for a malformed or high-s signature."""
    from eth_keys import keys
    from eth_keys.exceptions import BadSignature, ValidationError

    if _SIGNATURE.fullmatch(signature) is None:
        raise ValueError("the signature is not 0x and 65 bytes of lowercase hex")
    raw = bytes.fromhex(signature[2:])
    r, s, v = int.from_bytes(raw[:32], "big"), int.from_bytes(raw[32:64], "big"), raw[64]
    if v not in (27, 28) or not 0 < s <= _SECP256K1_HALF_N or r == 0:
        raise ValueError("the signature's v, r or s is out of range")
    try:
        public = keys.Signature(vrs=(v - 27, r, s)).recover_public_key_from_msg_hash(_digest(message(dataset, sha256)))
    except (BadSignature, ValidationError) as e:
        raise ValueError(f"the signature does not recover a key: {e}") from None
    return public.to_checksum_address().lower()


def holds(dataset: str, sha256: str, signature: object, signer: object) -> bool:
    """Whether `signature` signs the file with this SHA-256 for `dataset` and is `signer`'s; False
    for a malformed signature."""
    if not isinstance(signature, str):
        return False
    try:
        return recover(dataset, sha256, signature) == signer
    except ValueError:
        return False


def check_sidecar(raw: bytes, where: str, dataset: str, sha256: str, size: int) -> dict[str, Any]:
    """The sidecar `raw` if it signs exactly this file of this dataset; FormatError saying why not."""
    if len(raw) > MAX_SIDECAR_BYTES:
        raise FormatError(where, "(file)", f"over {MAX_SIDECAR_BYTES} bytes")
    data = tagged_json(raw, where, CONTRIBUTION.format)
    CONTRIBUTION.check(data, where)
    for field, expected in (("dataset", dataset), ("sha256", sha256), ("bytes", size)):
        if data[field] != expected:
            raise FormatError(where, field, f"signs {data[field]!r}, the file is {expected!r}")
    try:
        signer = recover(dataset, sha256, data["signature"])
    except ValueError as e:
        raise FormatError(where, "signature", str(e)) from None
    if signer != data["signer"]:
        raise FormatError(where, "signature", f"was made by {signer}, not the signer it names")
    return data
