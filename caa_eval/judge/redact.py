"""Keep the judge's API key out of logs, error messages and stored replies.

The openai/httpx debug logs (`caa-eval -v`) print request headers, and a misbehaving server can echo the
Authorization header back as its reply; both would otherwise put the key into files and terminals.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator

__all__ = ["MIN_SECRET_LEN", "redact", "redacted_logs"]

MIN_SECRET_LEN = 8  # shorter keys ("local", "x") are dummies for local servers; scrubbing them would mangle text


def redact(text: str | None, secret: str | None) -> str | None:
    """`text` with every occurrence of the key replaced by `[redacted]`.

    Args:
        text: any text that may contain the key.
        secret: the API key (dummies shorter than MIN_SECRET_LEN are left alone).
    """
    if text is None or not secret or len(secret) < MIN_SECRET_LEN:
        return text
    return text.replace(secret, "[redacted]")


class _RedactFilter(logging.Filter):
    def __init__(self, secret: str):
        super().__init__()
        self.secret = secret

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        if self.secret in message:
            record.msg, record.args = message.replace(self.secret, "[redacted]"), None
        return True


@contextlib.contextmanager
def redacted_logs(secret: str | None) -> Iterator[None]:
    """Scrub the API key from every log record (including openai/httpx debug logs under -v).

    Args:
        secret: the API key; None or a short dummy installs nothing.
    """
    if not secret or len(secret) < MIN_SECRET_LEN:
        yield
        return
    handlers = [*logging.getLogger().handlers, logging.lastResort]
    flt = _RedactFilter(secret)
    for h in handlers:
        if h is not None:
            h.addFilter(flt)
    try:
        yield
    finally:
        for h in handlers:
            if h is not None:
                h.removeFilter(flt)
