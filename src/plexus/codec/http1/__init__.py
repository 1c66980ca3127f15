"""HTTP/1.1 codec: httptools (llhttp) behind sans-IO decoders with the checks a proxy needs."""

from plexus.codec.http1.connection import (
    NEED_DATA,
    Data,
    EndOfMessage,
    Http1ServerCodec,
    Request,
    Upgrade,
)
from plexus.codec.http1.encode import encode_chunk, encode_request_head, local_reply, status_line
from plexus.codec.http1.heads import RequestHead, ResponseHead
from plexus.codec.http1.limits import Http1Limits
from plexus.codec.http1.request_decoder import RequestDecoder, RequestSink
from plexus.codec.http1.response_decoder import ResponseDecoder, ResponseSink

__all__ = [
    "NEED_DATA",
    "Data",
    "EndOfMessage",
    "Http1Limits",
    "Http1ServerCodec",
    "Request",
    "RequestDecoder",
    "RequestHead",
    "RequestSink",
    "ResponseDecoder",
    "ResponseHead",
    "ResponseSink",
    "Upgrade",
    "encode_chunk",
    "encode_request_head",
    "local_reply",
    "status_line",
]
