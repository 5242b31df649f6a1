"""Length-prefixed pickle frames: how relay's processes talk over their pipes.

A frame is a 4-byte big-endian length and a pickle. Pipes carry bytes, not messages; the length
says where one message ends. Pickle, because both ends are this package in the same interpreter
version, and it is the cheapest way Python has to move tuples of str, bytes and floats.
"""

from __future__ import annotations

import pickle
import struct

import trio

HEADER = struct.Struct(">I")
READ_SIZE = 1 << 20


def encode(value) -> bytes:
    data = pickle.dumps(value, protocol=pickle.HIGHEST_PROTOCOL)
    return HEADER.pack(len(data)) + data


class FrameReader:
    """Frames from a trio stream; ``receive()`` raises EOFError when the stream ends between
    frames (the other process closed its end or exited)."""

    def __init__(self, stream: trio.abc.ReceiveStream):
        self.stream = stream
        self._buffer = bytearray()
        self._size: int | None = None

    async def receive(self):
        buffer = self._buffer
        while True:
            if self._size is None and len(buffer) >= HEADER.size:
                self._size = HEADER.unpack_from(buffer)[0]
            if self._size is not None and len(buffer) >= HEADER.size + self._size:
                end = HEADER.size + self._size
                frame = bytes(buffer[HEADER.size : end])
                del buffer[:end]
                self._size = None
                return pickle.loads(frame)
            data = await self.stream.receive_some(READ_SIZE)
            if not data:
                raise EOFError
            buffer += data
