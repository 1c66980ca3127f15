"""Hessian 2.0 strings, and nothing else: read routing strings with hard caps, write error messages.

Hessian 2.0 serialization spec, §3 grammar and §4.12 string::

    string ::= x52 b1 b0 <utf8-data> string  # 'R': non-final chunk of b1b0 characters
           ::= 'S' b1 b0 <utf8-data>         # final chunk, 0-65535 characters
           ::= [x00-x1f] <utf8-data>         # compact: 0-31 characters
           ::= [x30-x33] b0 <utf8-data>      # compact: (tag - 0x30) * 256 + b0, 0-1023 characters
    null   ::= 'N'

Lengths count 16-bit characters (UTF-16 code units), never bytes. What the reference implementation
(Caucho's and Dubbo's hessian-lite ``Hessian2Output.printString``) actually writes for a character outside
the BMP is its two surrogates, each as its own 3-byte sequence (CESU-8): 6 bytes, 2 units; its reader
(``parseUTF8Char``) refuses 4-byte sequences. Other writers (python-hessian, some Go and C++ ports) differ,
so this reader accepts both spellings of a supplementary character: a CESU-8 surrogate pair (2 units,
possibly split across chunks) and a 4-byte UTF-8 sequence (counted as 2 units). It refuses overlong forms,
stray continuation bytes, unpaired surrogates and truncation. The writer emits CESU-8, as Java expects.

Nothing here allocates by a declared length before checking it against the caps: a chunk's declared
character count is checked against ``max_units`` before any byte of it is read.
"""

from __future__ import annotations

from typing import Final

from plexus.codec import rpc

NULL: Final = 0x4E  # 'N'
_CHUNK: Final = 0x52  # 'R'
_FINAL: Final = 0x53  # 'S'
_WRITE_CHUNK_UNITS: Final = 0x8000  # what Hessian2Output uses for 'R' chunks of long strings

Buffer = bytes | bytearray


def _error(reason: str, message: str) -> rpc.RpcProtocolError:
    return rpc.rpc_error(reason, message)


def _scan_units(buf: Buffer, pos: int, end: int, units: int) -> tuple[int, bool]:
    """Byte end of ``units`` UTF-16 units of UTF-8/CESU-8 starting at ``pos``; and whether surrogates appear.

    Only the lead bytes are trusted here, to find the extent; the strict decode afterwards checks the rest.
    """
    stop = pos + units
    if stop <= end and buf[pos:stop].isascii():
        return stop, False  # the common case: an ASCII routing string
    seen = 0
    surrogates = False
    while seen < units:
        if pos >= end:
            raise _error(rpc.HESSIAN_TRUNCATED, f"string data ends after {seen} of {units} characters")
        lead = buf[pos]
        if lead < 0x80:
            pos += 1
            seen += 1
            continue
        if 0xC2 <= lead <= 0xDF:
            size, width = 2, 1
        elif 0xE0 <= lead <= 0xEF:
            size, width = 3, 1
            if lead == 0xED and pos + 1 < end and buf[pos + 1] >= 0xA0:
                surrogates = True  # CESU-8 surrogate half
        elif 0xF0 <= lead <= 0xF4:
            size, width = 4, 2
        else:
            raise _error(rpc.HESSIAN_INVALID_UTF8, f"byte 0x{lead:02x} cannot start a UTF-8 character")
        if seen + width > units:
            raise _error(rpc.HESSIAN_INVALID_UTF8, "a supplementary character straddles the chunk's length")
        if pos + size > end:
            raise _error(rpc.HESSIAN_TRUNCATED, "string data ends inside a UTF-8 character")
        pos += size
        seen += width
    return pos, surrogates


def _decode(data: bytes, surrogates: bool) -> str:
    try:
        if not surrogates:
            return data.decode("utf-8")
        # CESU-8: pass the surrogate halves through, then pair them (strict: a lone half fails).
        return data.decode("utf-8", "surrogatepass").encode("utf-16-le", "surrogatepass").decode("utf-16-le")
    except UnicodeError as exc:
        raise _error(rpc.HESSIAN_INVALID_UTF8, f"invalid UTF-8 in string: {exc}") from None


def read_string(
    buf: Buffer,
    pos: int,
    end: int,
    *,
    max_units: int = rpc.MAX_HESSIAN_STRING,
    max_chunks: int = rpc.MAX_HESSIAN_CHUNKS,
    allow_null: bool = False,
) -> tuple[str | None, int]:
    """Read one Hessian2 string (or ``N`` when ``allow_null``) at ``buf[pos:end]``: (value, next position).

    Raises ``RpcProtocolError`` with a ``hessian_*`` reason on anything else, on more than ``max_units``
    UTF-16 units in total or more than ``max_chunks`` chunks.
    """
    if pos < end:
        # Fast path: a short ASCII string in compact form, which is what routing strings nearly always are.
        tag = buf[pos]
        stop = pos + 1 + tag
        if tag <= 0x1F and tag <= max_units and stop <= end:
            chunk = buf[pos + 1 : stop]
            if chunk.isascii():
                return chunk.decode("ascii"), stop
    pieces: list[bytes] = []
    total = 0
    chunks = 0
    surrogates = False
    while True:
        if pos >= end:
            raise _error(rpc.HESSIAN_TRUNCATED, "string expected, data ended")
        tag = buf[pos]
        final = True
        if tag <= 0x1F:
            units = tag
            pos += 1
        elif 0x30 <= tag <= 0x33:
            if pos + 2 > end:
                raise _error(rpc.HESSIAN_TRUNCATED, "string length ends early")
            units = ((tag - 0x30) << 8) | buf[pos + 1]
            pos += 2
        elif tag in (_FINAL, _CHUNK):
            if pos + 3 > end:
                raise _error(rpc.HESSIAN_TRUNCATED, "string length ends early")
            units = (buf[pos + 1] << 8) | buf[pos + 2]
            final = tag == _FINAL
            pos += 3
        elif tag == NULL and allow_null and chunks == 0:
            return None, pos + 1
        else:
            where = "after a non-final chunk" if chunks else "where a string must be"
            raise _error(rpc.HESSIAN_NOT_STRING, f"tag 0x{tag:02x} {where}")
        chunks += 1
        if chunks > max_chunks:
            raise _error(rpc.HESSIAN_TOO_DEEP, f"string has more than {max_chunks} chunks")
        total += units
        if total > max_units:
            raise _error(rpc.HESSIAN_STRING_TOO_LONG, f"string longer than {max_units} characters")
        stop, has_surrogates = _scan_units(buf, pos, end, units)
        surrogates = surrogates or has_surrogates
        pieces.append(bytes(buf[pos:stop]))
        pos = stop
        if final:
            break
    data = pieces[0] if len(pieces) == 1 else b"".join(pieces)
    return _decode(data, surrogates), pos


def utf16_units(value: str) -> int:
    """The length Hessian declares for ``value``: a character outside the BMP counts twice."""
    if value.isascii():
        return len(value)
    return len(value) + sum(1 for ch in value if ord(ch) > 0xFFFF)


def _cesu8(value: str) -> bytes:
    if value.isascii():
        return value.encode("ascii")
    # Split into UTF-16 units and write each on its own, as Java's printString does.
    units = value.encode("utf-16-le", "surrogatepass")
    out = bytearray()
    for i in range(0, len(units), 2):
        out += chr(units[i] | (units[i + 1] << 8)).encode("utf-8", "surrogatepass")
    return bytes(out)


def encode_string(value: str | None) -> bytes:
    """The Hessian2 encoding of ``value`` (``N`` for None), in its shortest form, CESU-8 like Java."""
    if value is None:
        return b"N"
    if any(0xD800 <= ord(ch) <= 0xDFFF for ch in value):
        raise ValueError("string holds an unpaired surrogate, which Hessian readers refuse")
    units = value.encode("utf-16-le", "surrogatepass") if not value.isascii() else b""
    count = len(units) // 2 if units else len(value)
    if count <= 0x1F:
        return bytes((count,)) + _cesu8(value)
    if count <= 0x3FF:
        return bytes((0x30 | (count >> 8), count & 0xFF)) + _cesu8(value)
    out = bytearray()
    start = 0
    while count - start > _WRITE_CHUNK_UNITS:
        stop = start + _WRITE_CHUNK_UNITS
        if units and 0xD8 <= units[stop * 2 - 1] <= 0xDB:
            stop -= 1  # as Hessian2Output does: a chunk never ends on a high surrogate
        out += bytes((_CHUNK, (stop - start) >> 8, (stop - start) & 0xFF))
        out += _units_cesu8(value, units, start, stop)
        start = stop
    rest = count - start
    out += bytes((_FINAL, rest >> 8, rest & 0xFF))
    out += _units_cesu8(value, units, start, count)
    return bytes(out)


def _units_cesu8(value: str, units: bytes, start: int, stop: int) -> bytes:
    if not units:
        return value[start:stop].encode("ascii")
    out = bytearray()
    for i in range(start * 2, stop * 2, 2):
        out += chr(units[i] | (units[i + 1] << 8)).encode("utf-8", "surrogatepass")
    return bytes(out)
