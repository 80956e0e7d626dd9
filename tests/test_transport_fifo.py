"""ByteFifo behaves like paramiko's array buffer, and a channel reading through it loses nothing."""

from __future__ import annotations

import threading

import pytest
from hypothesis import given
from hypothesis import strategies as st

from spoolmig.transport._fifo import ByteFifo
from spoolmig.transport.ssh import _ChunkPipe

ops = st.lists(st.one_of(
    st.tuples(st.just("append"), st.binary(max_size=40)),
    st.tuples(st.just("peek"), st.one_of(st.none(), st.integers(0, 120))),
    st.tuples(st.just("del"), st.one_of(st.none(), st.integers(0, 120))),
), max_size=60)


@given(ops)
def test_fifo_matches_a_bytearray(steps: list[tuple[str, object]]) -> None:
    fifo, model = ByteFifo(), bytearray()
    for op, arg in steps:
        if op == "append":
            fifo.append(arg)  # type: ignore[arg-type]
            model.extend(arg)  # type: ignore[arg-type]
        elif op == "peek":
            assert fifo.peek(arg) == bytes(model[:arg])  # type: ignore[misc]
        else:
            del fifo[:arg]  # type: ignore[misc]
            del model[:arg]  # type: ignore[misc]
        assert len(fifo) == len(model)
    assert fifo.peek() == bytes(model)


def test_fifo_whole_single_chunk_is_not_copied() -> None:
    fifo = ByteFifo()
    data = b"x" * 1000
    fifo.append(data)
    assert fifo.peek() is data
    assert fifo.peek(10_000) is data


def test_fifo_refuses_other_deletions() -> None:
    fifo = ByteFifo()
    fifo.append(b"abc")
    with pytest.raises(TypeError):
        del fifo[1:2]


@given(st.lists(st.binary(min_size=1, max_size=300), max_size=40), st.lists(st.integers(1, 500), min_size=1))
def test_chunk_pipe_reads_back_what_was_fed(chunks: list[bytes], sizes: list[int]) -> None:
    """Through paramiko's own BufferedPipe read/feed/close logic, with our buffer underneath."""
    pipe = _ChunkPipe()
    for c in chunks:
        pipe.feed(c)
    pipe.close()
    out, i = bytearray(), 0
    while True:
        got = pipe.read(sizes[i % len(sizes)], timeout=1)
        i += 1
        if not got:
            break
        assert len(got) <= sizes[(i - 1) % len(sizes)]
        out += got
    assert bytes(out) == b"".join(chunks)


def test_chunk_pipe_hands_out_the_first_packet_as_it_came() -> None:
    """Asked for more than is waiting, a read takes the oldest packet whole: no join, no copy."""
    pipe = _ChunkPipe()
    packets = [bytes([i]) * 40_000 for i in range(5)]
    for p in packets:
        pipe.feed(p)
    assert pipe.read(2 << 20, timeout=1) is packets[0]
    assert pipe.read(10_000, timeout=1) == packets[1][:10_000]  # a smaller read still takes a part
    assert pipe.read(2 << 20, timeout=1) == packets[1][10_000:]
    assert [pipe.read(2 << 20, timeout=1) for _ in range(3)] == packets[2:]
    assert len(pipe) == 0


def test_chunk_pipe_wakes_a_waiting_reader() -> None:
    pipe = _ChunkPipe()
    got: list[bytes] = []
    reader = threading.Thread(target=lambda: got.append(pipe.read(100, timeout=5)))
    reader.start()
    pipe.feed(b"hello")
    reader.join(5)
    assert got == [b"hello"]
    assert pipe.read_ready() is False
    assert len(pipe) == 0
