"""Comparing a presented secret (an API key, the link token) with the expected one."""

from __future__ import annotations

import hmac


def same_secret(presented: str | None, expected: str) -> bool:
    """Constant-time equality; any bytes a client put in a header (non-UTF-8 included) are just a mismatch."""
    if presented is None:
        return False
    # aiohttp hands undecodable header bytes over as surrogates; they must compare unequal, not raise.
    return hmac.compare_digest(presented.encode("utf-8", "surrogateescape"), expected.encode())
