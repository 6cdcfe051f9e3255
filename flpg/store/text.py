"""Text that PostgreSQL will store: what app code says, made safe and bounded.

App code (ServerApps, ClientApps) is tenant code: the exception messages, log
lines and reasons it produces may hold characters PostgreSQL rejects in `text`
and `jsonb` (NUL, unpaired surrogates) and may be of any length. Every such text
passes through `storable` before it reaches a query, so recording one tenant's
output can never fail a statement that carries other rows too.
"""

from __future__ import annotations

import re

REASON_LIMIT = 2000
"""Characters kept of a run's or a message's failure reason."""

LINE_LIMIT = 16384
"""Characters kept of one log line."""

_SURROGATE = re.compile("[\ud800-\udfff]")


def storable(text: str, limit: int) -> str:
    """`text` as PostgreSQL accepts it, at most about `limit` characters.

    NUL becomes the four characters `\\x00` (visible, still faithful to read);
    an unpaired surrogate (from undecodable bytes) becomes U+FFFD. A longer text is
    cut to `limit` characters followed by a note saying how many were cut.
    """
    if "\x00" in text:
        text = text.replace("\x00", "\\x00")
    text = _SURROGATE.sub("\ufffd", text)
    if len(text) > limit:
        cut = len(text) - limit
        text = f"{text[:limit]} [... {cut} more characters cut]"
    return text
