"""Bounded logging of repeated refusals between orderers.

An orderer a config update removed (or whose certificate it rotated) that never learnt of
it keeps dialling the others: each refuses its Step and ForwardBatch streams NOT_AN_ORDERER
(PERMISSION_DENIED) at once, and it dials again. Logged per refusal, that was a warning line
per stream, about ten a second on every orderer, for as long as it ran. :class:`EveryInterval`
bounds such a line per key (a caller, a peer): the first occurrence is logged at once, later
ones at most once per interval with how many occurred since the last line;
:class:`NonMemberRefusals` is the servers' refusal of a non-member (both Cluster services).
"""

from __future__ import annotations

import hashlib
import logging
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Hashable
from typing import NoReturn

import grpc
from rxchain.v1 import identity_pb2

from node.errors import RxError, abort_with
from node.orderer.metrics import OrdererMetrics

_log = logging.getLogger(__name__)

LOG_INTERVAL_S = 60.0  # at most one line per caller (or peer) and interval after the first
MAX_KEYS = 1024  # callers (or peers) remembered; the least recently seen is forgotten first


class EveryInterval:
    """Which occurrences of a repeated event to log, per key: the first at once, then at most
    one per ``interval_s`` (``clock``) telling how many occurred since the last line. A key
    quiet for an interval is logged at once again. The occurrences after the last line of a
    key that then stops are not told by a line (count them in a metric). At most ``max_keys``
    keys are remembered (the least recently seen forgotten: its next occurrence is logged
    as a first one), whatever a caller makes up."""

    def __init__(
        self,
        interval_s: float = LOG_INTERVAL_S,
        clock: Callable[[], float] = time.monotonic,
        max_keys: int = MAX_KEYS,
    ) -> None:
        self._interval_s = interval_s
        self._clock = clock
        self._max_keys = max_keys
        self._lock = threading.Lock()
        # key -> [when its last line was logged, occurrences not logged since]
        self._keys: OrderedDict[Hashable, list[float]] = OrderedDict()

    @property
    def interval_s(self) -> float:
        """The interval between two lines of one key."""
        return self._interval_s

    def note(self, key: Hashable) -> int:
        """Count one occurrence of ``key``: 0 when it is not to be logged now, else the number
        of occurrences the line tells, this one included (1: the first, or the first after a
        quiet interval; more: a summary of those since the last line)."""
        now = self._clock()
        with self._lock:
            entry = self._keys.get(key)
            if entry is None:
                self._keys[key] = [now, 0]
                while len(self._keys) > self._max_keys:
                    self._keys.popitem(last=False)
                return 1
            self._keys.move_to_end(key)
            if now - entry[0] < self._interval_s:
                entry[1] += 1
                return 0
            told = int(entry[1]) + 1
            entry[0], entry[1] = now, 0
            return told


class NonMemberRefusals:
    """The refusal of a caller that is no orderer of the configuration in force, shared by
    the Cluster services (Step, Forward, ForwardBatch): counted (``consensus_dropped``
    reason non_member, every one), logged per caller certificate as :class:`EveryInterval`
    lets, and aborted PERMISSION_DENIED NOT_AN_ORDERER."""

    def __init__(
        self,
        metrics: OrdererMetrics,
        interval_s: float = LOG_INTERVAL_S,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._metrics = metrics
        self._lines = EveryInterval(interval_s, clock)

    def refuse(
        self, context: grpc.ServicerContext, ident: identity_pb2.Identity | None, stream: str
    ) -> NoReturn:
        """Refuse the stream ``stream`` of the caller presenting ``ident`` (None: no client
        certificate)."""
        self._metrics.consensus_dropped.labels(reason="non_member").inc()
        if ident is None:
            caller, cert = "(no client certificate)", "-"
        else:
            caller, cert = ident.org, hashlib.sha256(ident.cert_der).hexdigest()[:16]
        told = self._lines.note(cert)
        interval_s = int(self._lines.interval_s)
        if told == 1:
            _log.warning("event=non_member_refused stream=%s caller=%r cert=%s refused=%d interval_s=%d: "
                         "the caller is no orderer of the configuration in force (an orderer removed "
                         "or whose certificate was rotated, still running?); its further refusals are "
                         "told in one line per interval", stream, caller, cert, told, interval_s)
        elif told > 1:
            _log.warning("event=non_member_refused stream=%s caller=%r cert=%s refused=%d interval_s=%d: "
                         "refused again, this many times since the last line", stream, caller, cert, told,
                         interval_s)
        abort_with(context, RxError("NOT_AN_ORDERER", "caller is not an orderer of the "
                                    "current configuration", grpc.StatusCode.PERMISSION_DENIED))
