"""The security headers every answer carries, the app's (appended by `RequestContext`,
so they cost no middleware layer of their own) and the protocol's own 400/408/431."""

from __future__ import annotations

# A JSON API: nothing in an answer may run, frame, sniff or leak the referrer; nothing
# may be cached by a proxy (a counter read is stale the moment it is stored).
SECURITY_HEADERS: tuple[tuple[bytes, bytes], ...] = (
    (b"x-content-type-options", b"nosniff"),
    (b"referrer-policy", b"no-referrer"),
    (b"content-security-policy", b"default-src 'none'; frame-ancestors 'none'"),
    (b"x-frame-options", b"DENY"),
    (b"cache-control", b"no-store"),
)
