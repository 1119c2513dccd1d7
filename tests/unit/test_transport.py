"""The TMC WebSocket transport against a real websockets server on loopback: a frame over
the limit is skipped and stood in for, the connection goes on; fragments still add up."""

from __future__ import annotations

import asyncio
import contextlib
import secrets
from collections.abc import AsyncIterator, Awaitable, Callable

import pytest
import websockets.frames as frames_module
from websockets.asyncio.client import connect
from websockets.asyncio.server import ServerConnection, serve
from websockets.exceptions import ConnectionClosed

from bridge.sources.tmc import transport

LIMIT = 64 * 1024


@contextlib.asynccontextmanager
async def _client_of(
    send: Callable[[ServerConnection], Awaitable[None]],
) -> AsyncIterator[list[bytes | str]]:
    async def handler(ws: ServerConnection) -> None:
        await send(ws)
        await ws.wait_closed()

    async with serve(handler, "127.0.0.1", 0) as server:
        port = server.sockets[0].getsockname()[1]
        received: list[bytes | str] = []
        async with connect(
            f"ws://127.0.0.1:{port}/",
            max_size=None,
            create_connection=transport.connection_class(LIMIT),
        ) as ws:
            try:
                while True:
                    received.append(await asyncio.wait_for(ws.recv(), 5))
            except (ConnectionClosed, TimeoutError):
                pass
            yield received


async def test_a_frame_over_the_limit_is_skipped_and_the_connection_goes_on() -> None:
    big = b"\x02\x02" + bytes(range(256)) * (4 * LIMIT // 256)

    async def send(ws: ServerConnection) -> None:
        await ws.send(b"before")
        await ws.send(big)
        await ws.send(b"x" * LIMIT)  # exactly at the limit: delivered whole
        await ws.send(b"after")
        await ws.close()

    async with _client_of(send) as received:
        assert received[0] == b"before"
        cut = transport.oversized(received[1])  # type: ignore[arg-type]
        assert cut is not None
        size, head = cut
        assert size == len(big) and head == big[: len(head)] and len(head) == LIMIT
        assert received[2:] == [b"x" * LIMIT, b"after"]


async def test_a_fragmented_message_over_the_limit_still_closes_with_1009() -> None:
    closed: list[int | None] = []

    async def send(ws: ServerConnection) -> None:
        async def fragments() -> AsyncIterator[bytes]:
            for _ in range(4):
                yield b"y" * (LIMIT // 2)

        try:
            await ws.send(fragments())
            await ws.wait_closed()
        finally:
            closed.append(ws.close_code)

    async with _client_of(send) as received:
        assert received == []
    assert closed == [1009]


def test_only_the_stand_in_is_recognised() -> None:
    assert transport.oversized(b"\x02\x02\x00\x00") is None
    assert transport.oversized(transport.OVERSIZED_MAGIC + (5).to_bytes(8, "little") + b"ab") == (
        5,
        b"ab",
    )


@pytest.mark.parametrize("size", [LIMIT + 1, 3 * LIMIT + 17])
async def test_sizes_just_over_the_limit(size: int) -> None:
    async def send(ws: ServerConnection) -> None:
        await ws.send(b"\x02" * size)
        await ws.send(b"next")
        await ws.close()

    async with _client_of(send) as received:
        assert transport.oversized(received[0]) == (size, b"\x02" * LIMIT)  # type: ignore[arg-type]
        assert received[1] == b"next"


@pytest.mark.parametrize("size", [0, 1, 125, 126, 65535, 65536])
def test_masked_frames_are_what_websockets_writes(
    size: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Each frame is the library's own serialisation given the same masking key."""
    payloads = [bytes(range(256)) * (size // 256) + b"x" * (size % 256), b"\x02\x02ab"]
    keys = bytes(range(1, 9))
    monkeypatch.setattr(secrets, "token_bytes", lambda n: keys[:n])
    joined = transport.masked_binary_frames(payloads)
    expected = b""
    for i, payload in enumerate(payloads):
        key = keys[4 * i : 4 * i + 4]
        monkeypatch.setattr(secrets, "token_bytes", lambda _n, key=key: key)
        expected += frames_module.Frame(frames_module.Opcode.BINARY, payload).serialize(
            mask=True, extensions=[]
        )
    assert joined == expected


async def test_send_all_delivers_each_frame_as_one_message_in_order() -> None:
    got: list[bytes] = []
    done = asyncio.Event()
    frames = [f"confirm {i}".encode() * (i % 40) for i in range(300)]

    async def handler(ws: ServerConnection) -> None:
        async for message in ws:
            assert isinstance(message, bytes)
            got.append(message)
            if len(got) == len(frames):
                done.set()

    async with serve(handler, "127.0.0.1", 0) as server:
        port = server.sockets[0].getsockname()[1]
        async with connect(
            f"ws://127.0.0.1:{port}/", create_connection=transport.connection_class(LIMIT)
        ) as ws:
            await transport.send_all(ws, frames[:1])
            await transport.send_all(ws, frames[1:])
            await asyncio.wait_for(done.wait(), 10)
    assert got == frames
