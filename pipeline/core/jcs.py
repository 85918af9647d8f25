"""RFC 8785 JSON Canonicalization Scheme (JCS), for the value types anchorlake commits.

Pure: takes Python values, returns text. Supported values are those `json.loads` yields
(dict with str keys, list, str, int, float, bool, None). Tested against the independent
`rfc8785` package and the RFC's own vectors.
"""

from __future__ import annotations

import json
import math
from typing import Any

from pipeline.errors import BadInput

# Integers beyond 2**53 - 1 cannot round-trip through an IEEE 754 double, which is what a JCS
# number is; rejecting them keeps every verifier (JS included) computing the same bytes.
MAX_SAFE_INTEGER = 2**53 - 1

_encode_string = json.JSONEncoder(ensure_ascii=False).encode


def canonical_string(value: str) -> str:
    """JCS string: escapes only '"', '\\' and control characters (lowercase \\u00xx)."""
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        raise BadInput("string holds a lone surrogate; it has no UTF-8 form") from None
    return _encode_string(value)


def canonical_number(value: int | float) -> str:
    """ECMAScript Number.prototype.toString of a finite double (RFC 8785 §3.2.2.3)."""
    if isinstance(value, bool):
        raise BadInput("a bool is not a number")
    if isinstance(value, int):
        if abs(value) > MAX_SAFE_INTEGER:
            raise BadInput(f"integer {value} is outside the IEEE 754 safe range")
        return str(value)
    if not math.isfinite(value):
        raise BadInput(f"{value!r} has no JSON form")
    if value == 0:
        return "0"
    sign = "-" if value < 0 else ""
    text = repr(abs(value))  # shortest round-trip digits, like ECMAScript
    mantissa, _, exp_text = text.partition("e")
    whole, _, frac = mantissa.partition(".")
    digits = (whole + frac).lstrip("0")
    # n: position of the decimal point relative to the first significant digit.
    n = len(whole) + (int(exp_text) if exp_text else 0)
    n -= len(whole + frac) - len((whole + frac).lstrip("0"))
    digits = digits.rstrip("0") or "0"
    k = len(digits)
    if k <= n <= 21:
        out = digits + "0" * (n - k)
    elif 0 < n <= 21:
        out = digits[:n] + "." + digits[n:]
    elif -6 < n <= 0:
        out = "0." + "0" * (-n) + digits
    else:
        exp = n - 1
        exp_sign = "+" if exp >= 0 else "-"
        head = digits[0] + ("." + digits[1:] if k > 1 else "")
        out = f"{head}e{exp_sign}{abs(exp)}"
    return sign + out


def _utf16_key(key: str) -> bytes:
    return key.encode("utf-16-be", "surrogatepass")


def canonicalize(value: Any) -> str:
    """Serialize `value` per RFC 8785. Raises BadInput for values JSON cannot carry."""
    if value is None:
        return "null"
    if value is True:
        return "true"
    if value is False:
        return "false"
    if isinstance(value, str):
        return canonical_string(value)
    if isinstance(value, (int, float)):
        return canonical_number(value)
    if isinstance(value, (list, tuple)):
        return "[" + ",".join(canonicalize(item) for item in value) + "]"
    if isinstance(value, dict):
        for key in value:
            if not isinstance(key, str):
                raise BadInput(f"object key {key!r} is not a string")
        items = sorted(value.items(), key=lambda kv: _utf16_key(kv[0]))
        return "{" + ",".join(canonical_string(k) + ":" + canonicalize(v) for k, v in items) + "}"
    raise BadInput(f"a {type(value).__name__} has no JSON form")


def canonical_bytes(value: Any) -> bytes:
    """UTF-8 bytes of the JCS serialization."""
    return canonicalize(value).encode("utf-8")
