"""HMAC-SHA256 webhook signatures as Apten sends them (apten-api.md §5.2).

`X-Signature-SHA256` is the hex HMAC-SHA256 of the raw request body, keyed with the webhook
secret. Always sign and verify the bytes as received: re-serialised JSON need not match.
"""

from __future__ import annotations

import hashlib
import hmac

SIGNATURE_HEADER = "X-Signature-SHA256"
_PREFIX = "sha256="


def sign(body: bytes, secret: str) -> str:
    """The lower-case hex signature Apten would send for `body`."""
    return hmac.new(secret.encode("utf-8"), body, hashlib.sha256).hexdigest()


def verify(body: bytes, signature: str | None, secret: str) -> bool:
    """True when `signature` matches `body`, compared in constant time.

    Tolerates surrounding whitespace, upper-case hex and an optional `sha256=` prefix, none of
    which Apten documents but all of which proxies and other senders produce.
    """
    if not signature or not secret:
        return False
    candidate = signature.strip().lower()
    if candidate.startswith(_PREFIX):
        candidate = candidate[len(_PREFIX) :].strip()
    # Bytes, not str: compare_digest rejects non-ASCII str, and a header may contain anything.
    return hmac.compare_digest(sign(body, secret).encode("ascii"), candidate.encode("utf-8", "replace"))
