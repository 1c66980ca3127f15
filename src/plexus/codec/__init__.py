"""Sans-IO wire codecs: HTTP/1.1 (over httptools) and protocol sniffing. No I/O here."""

from plexus.codec.sniff import Sniffed, sniff_http

__all__ = ["Sniffed", "sniff_http"]
