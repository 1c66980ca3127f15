"""Reason codes for refused HTTP/1.1 input, beside the shared ones of ``plexus.core.reasons``.

Each refusal is a ``ProtocolError`` with a reason (for the counter and log) and the status to answer with.
"""

from __future__ import annotations

from typing import Final

from plexus.core import reasons
from plexus.core.errors import ProtocolError

BAD_REQUEST: Final = reasons.DOWNSTREAM_PROTOCOL_ERROR  # 400: the bytes break HTTP/1.1
HEADERS_TOO_LARGE: Final = reasons.REQUEST_HEADERS_TOO_LARGE  # 431
BODY_TOO_LARGE: Final = reasons.REQUEST_BODY_TOO_LARGE  # 413
NOT_IMPLEMENTED: Final = reasons.NOT_IMPLEMENTED  # 501: a transfer coding or method we do not proxy
URI_TOO_LONG: Final = "request_uri_too_long"  # 414
BAD_VERSION: Final = "http_version_not_supported"  # 505
AMBIGUOUS_FRAMING: Final = "ambiguous_framing"  # 400: Content-Length with Transfer-Encoding, duplicates
BAD_TRANSFER_ENCODING: Final = "bad_transfer_encoding"  # 501: a coding other than exactly "chunked"


def bad_request(message: str, reason: str = BAD_REQUEST) -> ProtocolError:
    return ProtocolError(reason, message, 400)


def too_large(message: str) -> ProtocolError:
    return ProtocolError(HEADERS_TOO_LARGE, message, 431)
