"""Salts (SPEC §4): 16 random bytes per committed row, as 32 hex characters, so no one can find a
record from its leaf hash by guessing it. A test-only seed (config.salt_seed) pins each salt to
HMAC-SHA256(seed, "<source index>:<line>"), so runs on two engines commit the same bytes; a run
that could anchor anywhere but a local test setup refuses the seed."""

from __future__ import annotations

import hashlib
import hmac
import os
from collections.abc import Sequence

from pipeline import config


def salt_hex(source: int, lines: Sequence[int]) -> bytes:
    """The salts of rows `lines` of source `source`, 32 hex characters each, one after another."""
    seed = config.salt_seed()
    if seed is None:
        return os.urandom(16 * len(lines)).hex().encode()
    return b"".join(hmac.new(seed, b"%d:%d" % (source, line), hashlib.sha256).hexdigest()[:32].encode()
                    for line in lines)
