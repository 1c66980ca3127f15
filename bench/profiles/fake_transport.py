"""An asyncio transport that keeps what a protocol object writes, for the in-process harnesses of this folder
(http1_inproc.py, grpc-inproc.py): a proxy's reads and writes with no sockets and no system calls."""

from __future__ import annotations

from typing import Any


class FakeTransport:
    """What a protocol object writes, kept until taken."""

    def __init__(self) -> None:
        self.chunks: list[bytes] = []

    def write(self, data: bytes) -> None:
        self.chunks.append(data)

    def is_closing(self) -> bool:
        return False

    def get_extra_info(self, *args: Any, **kwargs: Any) -> None:
        return None

    def pause_reading(self) -> None:
        pass

    def resume_reading(self) -> None:
        pass

    def close(self) -> None:
        pass

    def abort(self) -> None:
        pass

    def take(self) -> bytes:
        data = b"".join(self.chunks)
        self.chunks.clear()
        return data
