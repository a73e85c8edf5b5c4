"""Pipelined request/answer streams: read requests on one thread, answer in order on another.

gRPC's synchronous server hands a stream handler an iterator of requests and consumes an
iterator of answers. Answering each request before reading the next would cap a stream at
one envelope per commit round trip; instead a reader thread turns each request into a
Ticket (resolved later by the chain) and the answer generator waits on the tickets in
order, so many envelopes are in flight per stream while the answers keep their order.
"""

from __future__ import annotations

import contextlib
import logging
import queue
import threading
from collections.abc import Callable, Iterable, Iterator
from typing import TypeVar, cast

import grpc
from google.protobuf.message import Message

from node.errors import RxError, abort_with
from node.orderer.ticket import Outcome, Ticket
from node.stream_caps import StreamSlot

_log = logging.getLogger(__name__)

Req = TypeVar("Req")
Resp = TypeVar("Resp")
Item = TypeVar("Item")
Out = TypeVar("Out")

_END = object()
_WAKE = object()  # a refused stream's answer generator is woken (node.stream_caps)


def _interruptible(pending: queue.Queue[object], slot: StreamSlot | None) -> None:
    """Have a refusal of ``slot``'s call wake the answer generator waiting on ``pending``."""
    if slot is None:
        return

    def wake() -> None:
        # (full: the generator is not waiting; it checks the slot before each answer)
        with contextlib.suppress(queue.Full):
            pending.put_nowait(_WAKE)

    slot.on_refused(wake)


def _end_reader(pending: queue.Queue[object], thread: threading.Thread, slot: StreamSlot | None) -> None:
    """Unblock the reader if it waits on a full queue, waiting a little for it to end -- not
    for a refused call: its reader waits for the client's requests until the call ends, which
    is after the generator returns (its status, with the reason, must not wait)."""
    tries = 1 if slot is not None and slot.refused is not None else 40
    for _ in range(tries):
        if not thread.is_alive():
            break
        try:
            while True:
                pending.get_nowait()
        except queue.Empty:
            if tries > 1:
                thread.join(0.05)


class _ReadAhead:
    """The bytes of requests a stream read and has not answered yet, at most ``max_bytes``
    (the first request is always taken, whatever it weighs)."""

    def __init__(self, max_bytes: int, stop: threading.Event) -> None:
        self._max = max_bytes
        self._stop = stop
        self._room = threading.Condition()
        self._held = 0

    def take(self, n: int) -> bool:
        """Wait until ``n`` more bytes fit; False once the stream stops."""
        with self._room:
            while self._held and self._held + n > self._max:
                if self._stop.is_set():
                    return False
                self._room.wait(0.1)
            self._held += n
        return True

    def give(self, n: int) -> None:
        """``n`` bytes were answered."""
        if n:
            with self._room:
                self._held -= n
                self._room.notify()

    def wake(self) -> None:
        """Wake a reader waiting in :meth:`take` (the stream stopped)."""
        with self._room:
            self._room.notify_all()


def ordered_answers(
    requests: Iterable[Req],
    dispatch: Callable[[Req], Item],
    answer: Callable[[Item], Resp],
    *,
    max_in_flight: int = 8192,
    on_error: Callable[[BaseException], None] | None = None,
    weigh: Callable[[Req], int] | None = None,
    max_bytes: int = 0,
    slot: StreamSlot | None = None,
) -> Iterator[Resp]:
    """Yield ``answer(dispatch(r))`` for each request ``r``, in order, pipelined.

    ``answer`` blocks on the ticket (with its own bound); ``max_in_flight`` bounds the
    tickets read ahead of the answers (back-pressure on the client); with ``weigh``,
    ``max_bytes`` also bounds their bytes (a request is read ahead only while the ones not yet
    answered weigh less; the first is always taken): a client that sends and never reads its
    answers held ``max_in_flight`` requests of any size each (8192 envelopes of 1 MiB).
    With ``slot`` (the call's stream slot), the stream ends with the refusal (an RxError) once
    the sweeper refuses its caller (node.stream_caps), woken if it waits for a request.
    """
    pending: queue.Queue[object] = queue.Queue(maxsize=max_in_flight)
    stop = threading.Event()
    budget = _ReadAhead(max_bytes, stop)

    def reader() -> None:
        try:
            for req in requests:
                if stop.is_set():
                    break
                n = weigh(req) if weigh is not None and max_bytes > 0 else 0
                if n and not budget.take(n):
                    break
                pending.put((n, dispatch(req)))
        except Exception as exc:  # noqa: BLE001 -- a cancelled stream ends the reader
            if on_error is not None:
                on_error(exc)
        finally:
            pending.put(_END)

    thread = threading.Thread(target=reader, name="stream-reader", daemon=True)
    thread.start()
    _interruptible(pending, slot)
    try:
        while True:
            if slot is not None:
                slot.check()
            entry = pending.get()
            if entry is _WAKE:
                continue
            if entry is _END:
                return
            n, item = cast("tuple[int, Item]", entry)
            resp = answer(item)
            budget.give(n)
            yield resp
    finally:
        stop.set()
        budget.wake()
        _end_reader(pending, thread, slot)


def refusal_ends(context: grpc.ServicerContext, slot: StreamSlot | None, answers: Iterator[Out]) -> Iterator[Out]:
    """``answers`` (given ``slot``: :func:`ordered_answers`), the call aborted PERMISSION_DENIED
    with the reason once the stream caps' sweeper refused its caller (node.stream_caps)."""
    try:
        yield from answers
    except RxError as err:
        if slot is None or err is not slot.refused:
            raise
        abort_with(context, err)


def stream_error_logger(log: logging.Logger, what: str) -> Callable[[BaseException], None]:
    """An ``on_error`` for a request stream: a cancelled call at debug level, anything else
    (a bug worth seeing) as an error with its traceback."""

    def on_error(exc: BaseException) -> None:
        if isinstance(exc, grpc.RpcError):
            log.debug("event=stream_ended stream=%s error=%r", what, str(exc))
        else:
            log.error("event=stream_reader_failed stream=%s", what, exc_info=exc)

    return on_error


def immediate(outcome: Outcome, tx_id: str = "") -> Ticket:
    """A ticket that is already answered (validation failures)."""
    return Ticket.done(outcome, tx_id)


def coalesced_answers(
    requests: Iterable[Req],
    dispatch: Callable[[Req], list[Item]],
    answer: Callable[[Item], Resp],
    ready: Callable[[Item], bool],
    pack: Callable[[list[Resp]], Out],
    *,
    max_in_flight: int = 1024,
    max_per_message: int = 4096,
    on_error: Callable[[BaseException], None] | None = None,
    weigh: Callable[[Req], int] | None = None,
    max_bytes: int = 0,
    answer_bytes: Callable[[], int] | None = None,
    slot: StreamSlot | None = None,
) -> Iterator[Out]:
    """Batched form of :func:`ordered_answers`: each request carries several items.

    ``dispatch`` turns one request into its items (e.g. tickets); the answers keep the
    order of the items. One answer message holds the answers of the oldest request (waited
    for) plus those of the following requests whose items are all ``ready`` already, up to
    ``max_per_message`` answers, so a busy stream needs fewer answer messages than
    requests. A request with no items still gets its own (empty) answer message unless it
    is merged into the one before it. ``max_in_flight`` bounds requests read ahead; with
    ``weigh``, ``max_bytes`` also bounds their bytes (a request is read ahead only while the
    ones not yet answered weigh less; the first is always taken). With ``answer_bytes``, the
    answers of one message weigh at most ``answer_bytes()`` (``ByteSize``; read per message):
    more go out in several messages, in order (the receiver's gRPC bound refuses a larger one
    as a whole; one larger answer goes alone). ``slot``: as for :func:`ordered_answers`.
    """
    pending: queue.Queue[object] = queue.Queue(maxsize=max_in_flight)
    stop = threading.Event()
    budget = _ReadAhead(max_bytes, stop)

    def reader() -> None:
        try:
            for req in requests:
                if stop.is_set():
                    break
                n = weigh(req) if weigh is not None and max_bytes > 0 else 0
                if n and not budget.take(n):
                    break
                pending.put((n, dispatch(req)))
        except Exception as exc:  # noqa: BLE001 -- a cancelled stream ends the reader
            if on_error is not None:
                on_error(exc)
        finally:
            pending.put(_END)

    def answers_of(entry: object) -> list[Resp]:
        n, items = cast("tuple[int, list[Item]]", entry)
        out = [answer(item) for item in items]
        budget.give(n)
        return out

    def all_ready(entry: object) -> bool:
        return all(ready(i) for i in cast("tuple[int, list[Item]]", entry)[1])

    thread = threading.Thread(target=reader, name="batch-stream-reader", daemon=True)
    thread.start()
    _interruptible(pending, slot)
    carry: object = None
    try:
        while True:
            if slot is not None:
                slot.check()
            first = carry if carry is not None else pending.get()
            carry = None
            if first is _WAKE:
                continue
            if first is _END:
                return
            out = answers_of(first)
            while len(out) < max_per_message:
                try:
                    nxt = pending.get_nowait()
                except queue.Empty:
                    break
                if nxt is _WAKE:
                    continue
                if nxt is _END or not all_ready(nxt):
                    carry = nxt
                    break
                out.extend(answers_of(nxt))
            if answer_bytes is None:
                yield pack(out)
            else:
                yield from _split(out, answer_bytes(), pack)
    finally:
        stop.set()
        budget.wake()
        _end_reader(pending, thread, slot)


def _split(answers: list[Resp], budget: int, pack: Callable[[list[Resp]], Out]) -> Iterator[Out]:
    """``answers`` packed in order into messages of at most ``budget`` answer bytes each (an
    empty list still makes one message)."""
    chunk: list[Resp] = []
    size = 0
    for resp in answers:
        n = cast(Message, resp).ByteSize()
        if chunk and size + n > budget:
            yield pack(chunk)
            chunk, size = [], 0
        chunk.append(resp)
        size += n
    yield pack(chunk)
