"""Pipelined request/answer streams: read requests on one thread, answer in order on another.

gRPC's synchronous server hands a stream handler an iterator of requests and consumes an
iterator of answers. Answering each request before reading the next would cap a stream at
one envelope per commit round trip; instead a reader thread turns each request into a
Ticket (resolved later by the chain) and the answer generator waits on the tickets in
order, so many envelopes are in flight per stream while the answers keep their order.
"""

from __future__ import annotations

import logging
import queue
import threading
from collections.abc import Callable, Iterable, Iterator
from typing import TypeVar

from node.orderer.ticket import Outcome, Ticket

_log = logging.getLogger(__name__)

Req = TypeVar("Req")
Resp = TypeVar("Resp")
Item = TypeVar("Item")

_END = object()


def ordered_answers(
    requests: Iterable[Req],
    dispatch: Callable[[Req], Item],
    answer: Callable[[Item], Resp],
    *,
    max_in_flight: int = 8192,
    on_error: Callable[[BaseException], None] | None = None,
) -> Iterator[Resp]:
    """Yield ``answer(dispatch(r))`` for each request ``r``, in order, pipelined.

    ``answer`` blocks on the ticket (with its own bound); ``max_in_flight`` bounds the
    tickets read ahead of the answers (back-pressure on the client).
    """
    pending: queue.Queue[object] = queue.Queue(maxsize=max_in_flight)
    stop = threading.Event()

    def reader() -> None:
        try:
            for req in requests:
                if stop.is_set():
                    break
                pending.put(dispatch(req))
        except Exception as exc:  # noqa: BLE001 -- a cancelled stream ends the reader
            if on_error is not None:
                on_error(exc)
        finally:
            pending.put(_END)

    thread = threading.Thread(target=reader, name="stream-reader", daemon=True)
    thread.start()
    try:
        while True:
            item = pending.get()
            if item is _END:
                return
            yield answer(item)  # type: ignore[arg-type]
    finally:
        stop.set()
        # Unblock the reader if it waits on a full queue.
        for _ in range(40):
            if not thread.is_alive():
                break
            try:
                pending.get_nowait()
            except queue.Empty:
                thread.join(0.05)


def immediate(outcome: Outcome, tx_id: str = "") -> Ticket:
    """A ticket that is already answered (validation failures)."""
    return Ticket.done(outcome, tx_id)
