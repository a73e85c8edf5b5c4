"""Caps on long-lived RPCs, so that idle streams cannot take every gRPC worker thread.

gRPC's synchronous server runs each call on a thread of a fixed pool (``extra.grpc_workers``)
for as long as the call lasts. A follow stream (Gateway.Events, PeerDeliver.Deliver,
AtomicBroadcast.Deliver), a Gateway.Transact, TransactBatch, Endorser.ProcessProposals or
orderer AtomicBroadcast.Broadcast / BroadcastBatch stream (also a reader thread of its own)
or a CommitStatus wait holds its thread while it
waits, so one client opening enough of them would leave none for Health, Endorse, Broadcast
or Cluster calls. :class:`StreamCaps` bounds them per caller certificate and in total; a call over a
cap is refused at once with ``TOO_MANY_STREAMS`` (gRPC RESOURCE_EXHAUSTED).

Node certificates (a peer or orderer the configuration in force names, with that role:
``node.identity.caller.node_certificates``) have ``max_node_streams`` more slots that no client
certificate may take: clients (doctors' and pharmacists' apps, patients' devices, integrators)
filling ``max_streams`` left no slot for a peer's Deliver (no block reached it) nor for another
organisation's peer following or endorsing. A node takes a slot of the reserve first, then any
free one (the clients then hold fewer than ``max_streams``) -- but one node holds at most half
the reserve (``node_share``, at least 1): its slots beyond its share count against
``max_streams`` as clients' do, and are refused once those are full. One node (its default
``max_streams_per_node`` as large as the reserve) filled the whole reserve, and every other
node's stream was refused.

:class:`ClusterCaps` bounds an orderer's Cluster streams from the other orderers (Step, Forward,
ForwardBatch), per orderer and method and in total, counted only once the caller is known to be
an orderer (a non-member is refused NOT_AN_ORDERER before) and its certificate passes the check
the sweeper applies to the open ones (below; :meth:`ClusterCaps.refusal`). An orderer opening one
more stream of a method than its cap has its oldest one of that method ended instead of the new
one refused -- ABORTED ``STREAM_REPLACED`` by its handler, woken as a refused call's is and
cancelled ``GRACE_S`` later if still open (cancelled at once when nothing checks its caller;
it was always cancelled, its caller seeing CANCELLED, not why): an orderer that restarted, or
whose connection died unseen (the server never writes on a Step stream, so a half-open
connection lingers), dials again while its old stream still holds its slot, and refusing it
would cut it off from Raft until the old one is noticed dead (as etcd's rafthttp attaches a
peer's new stream in place of its old one).

A slot remembers its call and its caller's TLS certificate. Given ``recheck`` (the node's
``CallerCheck.check``: the MSP in force, the node's clock), a sweeper thread of the caps checks
every open slot's caller again every ``SWEEP_S`` and at once when told the config in force changed
(:meth:`StreamCaps.recheck_now`), and ends the calls of the callers it no longer admits (revoked,
expired, of an organisation removed: the MSP's reason; node certificates alike; logged
``stream_caller_refused``). A handler idle while its stream read nothing (Broadcast,
BroadcastBatch, ProcessProposals, Transact) or waiting for a block or a commit (Deliver,
PeerDeliver, Events, CommitStatus) never checked its caller again, and held its gRPC worker and
slot for as long as its connection lived. Their handlers now end such a call themselves
(admitted ``ends_itself``): the sweeper flags the slot with the refusal and wakes the handler
(:meth:`StreamSlot.on_refused`: a stream's answer generator waiting for its reader) or the
handler sees it within the half second it polls at (:meth:`StreamSlot.live`), and the call ends
``context.abort(PERMISSION_DENIED, "<REASON>: ...")`` with the reason trailer -- what a new call
of that caller gets. gRPC offers no abort from another thread (only ``cancel``, whose client
sees CANCELLED without a reason), so a refused call its handler has not ended ``GRACE_S`` later
is cancelled (``stream_refused_cancelled``), as is at once one admitted without
``ends_itself``. The thread runs only while slots it may refuse are open, and ends with
:meth:`StreamCaps.close` (the node's stop).

An orderer's Cluster streams are checked by the same sweeper (:meth:`ClusterCaps.watch_with`,
:meth:`StreamCaps.watch`: not counted under the caps above), with a check of their own: still
an orderer of the config in force for that method, its certificate admitted by the MSP
(``node.orderer.transport.cluster_recheck``). A removed orderer, or one whose certificate was
revoked or expired, kept its idle streams and their slots. The same check refuses a new stream
at accept (PERMISSION_DENIED, the reason; logged ``cluster_stream_refused``): after the sweeper
refused an orderer's stream, its next one got in and held its slot until the next sweep. Open
streams end themselves, Step too: its
messages are read on a reader thread of the stream's own while its handler waits to be woken
(node.orderer.transport.ClusterService.step; blocked reading them itself, it was cancelled).

node.yaml ``extra`` keys (integers, peers and orderers; the last two orderers only):

``max_streams``
    long-lived calls client certificates hold at once, all together; default half of
    ``grpc_workers`` (the other half for the nodes' streams and for unary, endorsement and
    cluster calls); must be less than ``grpc_workers``.
``max_streams_per_caller``
    long-lived calls one client certificate may hold; default half of ``max_streams``; at
    most ``max_streams``.
``max_node_streams``
    long-lived calls only node certificates may hold, beyond ``max_streams``; default half of
    ``max_streams`` (at least 1), at most what ``grpc_workers`` leaves (``grpc_workers - 1 -
    max_streams``, on an orderer ``- max_cluster_streams`` too); 0 reserves none. When neither
    key is set and that leaves nothing (an orderer of 4-34 workers: the default Cluster cap takes
    what half the pool leaves), the clients' default ``max_streams`` is one less and the reserve
    gets that slot -- one node stream kept under a flood of client streams, not a consortium's
    (``node_reserve_short`` tells); 3 workers (1 client, 1 Cluster, 1 free) leave none. ``max_streams +
    max_node_streams`` (on an orderer ``+ max_cluster_streams``) must be less than
    ``grpc_workers``: the worst case, every client and node slot held, must leave the other
    orderers' Cluster streams (Raft) the workers of their cap and unary calls one at least --
    an orderer whose node.yaml over-committed its pool so was refused nothing and, under a flood
    of client streams, its Raft streams waited for a worker (no heartbeat: elections, no
    ordering). ``NODE_STREAMS_PER_PEER`` per peer of the config in force and one per other
    orderer is what the nodes hold on an orderer at worst (``reserve_need``); an orderer whose
    reserve is shorter logs ``node_reserve_short`` at start and when a config adds nodes.
``max_streams_per_node``
    long-lived calls one node certificate may hold; default ``max_streams_per_caller``; at
    most ``max_streams + max_node_streams``.
``max_cluster_streams``
    Cluster streams (Step, Forward, ForwardBatch) an orderer holds at once from the other
    orderers, all together; default an eighth of ``grpc_workers``, at least 16 (at most what
    ``max_streams`` -- and ``max_node_streams`` when set -- leave, at least 1; the default
    reserve gets what is left after it: an orderer's default 128 workers are then 64 for
    clients, 32 for nodes, 16 for the other orderers and 16 for unary calls; 32 workers 15, 1,
    15 and 1); less than ``grpc_workers`` less ``max_streams``.
``max_cluster_streams_per_orderer``
    Cluster streams of one method one orderer may hold (its next one replaces its oldest);
    default 2 (its stream and a reconnect); at most ``max_cluster_streams``.
"""

from __future__ import annotations

import hashlib
import logging
import threading
import time
from collections.abc import Callable, Mapping
from typing import Any

import grpc
from rxchain.v1 import identity_pb2

from node.crypto.tls import peer_identity
from node.errors import RxError

_log = logging.getLogger(__name__)

TOO_MANY_STREAMS = "TOO_MANY_STREAMS"
# What one peer holds on an orderer at worst: its Deliver (every peer's, once the other orderers
# are down) and its Broadcast stream (every peer's on the leader)
NODE_STREAMS_PER_PEER = 2
STREAM_REPLACED = "STREAM_REPLACED"  # a newer Cluster stream of its orderer took its slot (ABORTED)
REFUSED_LOG_INTERVAL_S = 60.0  # at most one cluster_stream_refused line per orderer and method after the first
SWEEP_S = 1.0  # how often the open slots' callers are checked again (a certificate's expiry)
# how long the handler of a refused call that ends itself has to end it with the reason before
# the sweeper cancels it (its loops poll every 0.5 s at most)
GRACE_S = 2.0

Recheck = Callable[[identity_pb2.Identity], object]


def reserve_need(peers: int, orderers: int) -> int:
    """The node streams an orderer serves at worst in a consortium of ``peers`` peers and
    ``orderers`` orderers: each peer's Deliver and Broadcast stream, each other orderer's
    Deliver (onboarding, catching up). A ``max_node_streams`` below it lets a flood of client
    streams (every client slot held) refuse some of them TOO_MANY_STREAMS -- a peer then gets no
    block, or cannot submit."""
    return NODE_STREAMS_PER_PEER * peers + max(0, orderers - 1)


def reserve_short(caps: StreamCaps, peers: int, orderers: int, node: str) -> int:
    """How many node streams an orderer's reserve (``caps.nodes``) is short of what the
    consortium's ``peers`` peers and ``orderers`` orderers hold at worst (:func:`reserve_need`),
    0 if none; logged ``node_reserve_short`` (warning) when short. A warning, not a refusal: a
    config update adds peers while the orderers run (their node.yaml unchanged), and refusing
    the restart of an orderer because the consortium grew would take ordering down for a risk
    that bites only under a flood of client streams; node streams also take any free client slot."""
    need = reserve_need(peers, orderers)
    short = max(0, need - caps.nodes)
    if short:
        _log.warning("event=node_reserve_short node=%s reserve=%d need=%d peers=%d orderers=%d: "
                     "extra.max_node_streams is short of the Deliver and Broadcast streams of every "
                     "peer and the other orderers' Deliver: under a flood of client streams some of "
                     "them would be refused TOO_MANY_STREAMS; raise max_node_streams (and grpc_workers "
                     "by as much)", node, caps.nodes, need, peers, orderers)
    return short


class StreamSlot:
    """One admitted call; :meth:`release` (idempotent) gives the slot back. A slot admitted for
    a call (:meth:`StreamCaps.admit`) remembers it and its caller's certificate (``caller``), for
    the sweeper (module doc)."""

    def __init__(self, caps: StreamCaps, key: bytes, node: bool = False, what: str = "",
                 context: grpc.ServicerContext | None = None,
                 caller: identity_pb2.Identity | None = None) -> None:
        self._caps = caps
        self._key = key
        self._node = node
        self.what = what
        self.context = context
        self.caller = caller
        self.refused: RxError | None = None  # why the sweeper refused the call
        self.refused_at = 0.0  # (time.monotonic) when
        self.ends_itself = False  # its handler ends it with ``refused`` (module doc)
        self.cancelled = False  # the sweeper cancelled it (the fallback)
        self.recheck: Recheck | None = None  # its own check (a watched call: StreamCaps.watch)
        self.counted = True  # held under the caps (a watched call is not)
        self._wakers: list[Callable[[], None]] = []
        self._released = False
        self._lock = threading.Lock()

    def release(self) -> None:
        """Give the slot back (only the first call counts)."""
        with self._lock:
            if self._released:
                return
            self._released = True
        self._caps._release(self)

    def check(self) -> None:
        """Raise the refusal (an RxError with status PERMISSION_DENIED and the MSP's reason) once
        the sweeper refused the call's caller: its handler ends the call with it."""
        err = self.refused
        if err is not None:
            raise err

    def live(self, is_active: Callable[[], bool]) -> Callable[[], bool]:
        """``is_active`` that raises the refusal (:meth:`check`) first: a handler's loop polling
        it ends its call with the reason once the caller is refused."""

        def active() -> bool:
            self.check()
            return is_active()

        return active

    def on_refused(self, wake: Callable[[], None]) -> None:
        """Call ``wake`` (once) when the call is refused -- at once if it was already: it wakes
        a handler waiting on something of the node's, which then ends the call (:meth:`check`)."""
        with self._lock:
            if self.refused is None:
                self._wakers.append(wake)
                return
        wake()

    def refuse(self, err: RxError) -> bool:
        """Refuse the call (its caller is no longer admitted: ``err``), once; False if it was
        released or refused already. A call whose handler ends it itself (``ends_itself``) is
        flagged and its handler woken: its client gets PERMISSION_DENIED with the reason, as a
        new call would; the sweeper cancels it if it is still open ``GRACE_S`` later. Any other
        call is cancelled at once. Its handler then ends (its requests end, ``is_active`` turns
        False) and gRPC's termination callback gives the slot back."""
        wakers = self._flag(err)
        if wakers is None:
            return False
        org = self.caller.org if self.caller is not None else ""
        _log.warning("event=stream_caller_refused call=%s org=%s cert=%s node=%d reason=%s detail=%r "
                     "ends=%s: the config in force no longer admits the caller of this open call",
                     self.what, org, self._key.hex()[:16], int(self._node), err.reason, err.message,
                     "refused" if self.ends_itself else "cancelled")
        self._end(wakers)
        return True

    def end_with(self, err: RxError) -> bool:
        """End the call with ``err`` as :meth:`refuse` does (its handler woken to end it with
        ``err``, cancelled ``GRACE_S`` later if still open; cancelled at once without
        ``ends_itself``), for another cause than its caller's refusal (e.g. a newer stream of
        the same orderer took its slot: ClusterCaps); not logged here. False if it was released
        or ended already."""
        wakers = self._flag(err)
        if wakers is None:
            return False
        if self.ends_itself:
            self._caps._regrace()  # (the sweeper times the fallback from now, not its next sweep)
        self._end(wakers)
        return True

    def _flag(self, err: RxError) -> list[Callable[[], None]] | None:
        """Flag the call ended with ``err``, once: the wakers to call, or None if it was
        released or flagged already."""
        with self._lock:
            if self._released or self.refused is not None or self.context is None:
                return None
            self.refused = err
            self.refused_at = time.monotonic()
            wakers, self._wakers = self._wakers, []
        return wakers

    def _end(self, wakers: list[Callable[[], None]]) -> None:
        if not self.ends_itself:
            self._cancel()
            return
        for wake in wakers:
            wake()

    def _cancel(self) -> None:
        self.cancelled = True
        if self.context is not None:
            self.context.cancel()  # type: ignore[no-untyped-call]

    def __enter__(self) -> StreamSlot:
        return self

    def __exit__(self, *_: object) -> None:
        self.release()


class StreamCaps:
    """Counts long-lived calls per caller and in total (thread-safe); node certificates
    (``is_node``) have ``nodes`` slots beyond ``total`` (module doc)."""

    def __init__(
        self, total: int, per_caller: int, nodes: int = 0, per_node: int | None = None,
        is_node: Callable[[bytes], bool] | None = None, recheck: Recheck | None = None,
        sweep_s: float = SWEEP_S,
    ) -> None:
        """``recheck``: the node's check of a caller (``CallerCheck.check``: raises RxError with
        status PERMISSION_DENIED for a caller the config in force refuses now); with it, the
        open calls of refused callers are cancelled, checked every ``sweep_s`` (module doc)."""
        if total < 1 or not 1 <= per_caller <= total:
            raise RxError("BAD_CONFIG", f"stream caps need 1 <= max_streams_per_caller ({per_caller}) "
                                        f"<= max_streams ({total})")
        per_node = per_caller if per_node is None else per_node
        if nodes < 0 or not 1 <= per_node <= total + nodes:
            raise RxError("BAD_CONFIG", f"stream caps need 0 <= max_node_streams ({nodes}) and "
                                        f"1 <= max_streams_per_node ({per_node}) <= max_streams + "
                                        f"max_node_streams ({total + nodes})")
        self.total = total
        self.per_caller = per_caller
        self.nodes = nodes
        self.per_node = per_node
        self._is_node = is_node
        self._recheck = recheck
        self._sweep_s = sweep_s
        self._lock = threading.Lock()
        self._wake = threading.Condition(self._lock)
        # one node's share of the reserve: the rest stays for the others (module doc)
        self.node_share = max(1, nodes // 2) if nodes else 0
        self._held = 0
        self._clients = 0  # of _held, by client certificates
        self._beyond = 0  # of _held, nodes' slots beyond their share of the reserve
        self._by_caller: dict[bytes, int] = {}
        self._by_node: dict[bytes, int] = {}  # node certificates' slots
        self._open: dict[StreamSlot, None] = {}  # slots the sweeper checks, oldest first
        self._sweeper: threading.Thread | None = None
        self._poked = False
        self._regraced = False  # a call was ended outside a sweep: the next wait is shorter
        self._closed = False

    @classmethod
    def from_extra(
        cls, extra: Mapping[str, Any], workers: int, is_node: Callable[[bytes], bool] | None = None,
        recheck: Recheck | None = None, cluster: int = 0,
    ) -> StreamCaps:
        """The caps of a node whose gRPC pool has ``workers`` threads, from node.yaml
        ``extra`` (``max_streams``, ``max_streams_per_caller``, ``max_node_streams``,
        ``max_streams_per_node``; see the module doc); ``is_node`` tells node certificates
        (none: every caller is a client); ``recheck`` checks the open calls' callers again.
        ``cluster``: the workers the other orderers' Cluster streams may hold (an orderer's
        ``max_cluster_streams``; 0 on a peer): clients, nodes and those together must leave a
        worker (the worst-case split, module doc)."""
        if workers < 2:
            raise RxError("BAD_CONFIG", f"extra.grpc_workers must be at least 2, not {workers}")
        total = int(extra.get("max_streams", workers // 2))
        if not 1 <= total < workers:
            raise RxError("BAD_CONFIG", f"extra.max_streams must be between 1 and grpc_workers - 1 "
                                        f"({workers - 1}), not {total}")
        per_caller = int(extra.get("max_streams_per_caller", max(1, total // 2)))
        room = workers - 1 - total - cluster
        if (room == 0 and 1 <= per_caller < total and "max_streams" not in extra
                and "max_node_streams" not in extra):
            # the default split left the nodes no slot of their own (an orderer of 4-34 workers:
            # the default Cluster cap takes what half the pool leaves): a flood of client streams
            # then refused every peer's Deliver and Broadcast. The clients' default share gives
            # the reserve one (one client's cap unchanged); 3 workers cannot (module doc).
            total, room = total - 1, 1
        if not 1 <= per_caller <= total:
            raise RxError("BAD_CONFIG", f"extra.max_streams_per_caller must be between 1 and "
                                        f"max_streams ({total}), not {per_caller}")
        if room < 0:  # (only with cluster: max_streams < workers above)
            raise RxError("BAD_CONFIG", f"extra.max_streams ({total}) and max_cluster_streams ({cluster}) must "
                                        f"together be less than grpc_workers ({workers}): clients holding all "
                                        f"their streams would leave the other orderers' Cluster streams (Raft) "
                                        f"fewer gRPC workers than their cap and none for unary calls; lower "
                                        f"max_streams or max_cluster_streams, or raise grpc_workers")
        nodes = int(extra.get("max_node_streams", min(max(1, total // 2), room)))
        if not 0 <= nodes <= room:
            within = "max_streams - max_cluster_streams" if cluster else "max_streams"
            raise RxError("BAD_CONFIG", f"extra.max_node_streams must be between 0 and grpc_workers - 1 - "
                                        f"{within} ({room}), not {nodes}: clients and nodes holding all their "
                                        f"streams would leave "
                                        + ("the other orderers' Cluster streams (Raft) fewer gRPC workers than "
                                           "their cap and " if cluster else "")
                                        + "no gRPC worker for unary calls")
        per_node = int(extra.get("max_streams_per_node", per_caller))
        if not 1 <= per_node <= total + nodes:
            raise RxError("BAD_CONFIG", f"extra.max_streams_per_node must be between 1 and max_streams + "
                                        f"max_node_streams ({total + nodes}), not {per_node}")
        return cls(total, per_caller, nodes, per_node, is_node, recheck)

    @staticmethod
    def key_of(cert_der: bytes) -> bytes:
        """The per-caller key of a client certificate."""
        return hashlib.sha256(cert_der).digest()

    def held(self, key: bytes | None = None) -> int:
        """Calls held now (by ``key``'s caller, or in total)."""
        with self._lock:
            return self._held if key is None else self._by_caller.get(key, 0)

    def acquire(self, key: bytes, what: str, node: bool = False) -> StreamSlot:
        """A slot for ``key``'s caller (``node``: a node certificate's), or RxError
        TOO_MANY_STREAMS naming the cap hit."""
        with self._lock:
            mine = self._by_caller.get(key, 0)
            if node:
                if mine >= self.per_node:
                    raise RxError(TOO_MANY_STREAMS, f"{what}: this node already holds {mine} long-lived "
                                                    f"calls (limit {self.per_node} per node)")
                if self._held >= self.total + self.nodes:
                    raise RxError(TOO_MANY_STREAMS, f"{what}: the node already serves {self._held} "
                                                    f"long-lived calls (limit {self.total + self.nodes} "
                                                    f"with the nodes' {self.nodes})")
                beyond = self._by_node.get(key, 0) >= self.node_share
                if beyond and self._clients + self._beyond >= self.total:
                    # (one node filled the whole reserve: the others' Deliver got no slot)
                    raise RxError(TOO_MANY_STREAMS, f"{what}: this node already holds {self.node_share} of the "
                                                    f"nodes' {self.nodes} reserved long-lived calls (its share) "
                                                    f"and no other slot is free")
                if beyond:
                    self._beyond += 1
                self._by_node[key] = self._by_node.get(key, 0) + 1
            else:
                if mine >= self.per_caller:
                    raise RxError(TOO_MANY_STREAMS, f"{what}: this client already holds {mine} long-lived "
                                                    f"calls (limit {self.per_caller} per client)")
                # the nodes' reserve stays free: clients hold at most ``total`` together
                if self._clients >= self.total:
                    raise RxError(TOO_MANY_STREAMS, f"{what}: client certificates already hold {self._clients} "
                                                    f"long-lived calls (limit {self.total})")
                if self._clients + self._beyond >= self.total:  # nodes took client slots
                    raise RxError(TOO_MANY_STREAMS, f"{what}: client certificates hold {self._clients} "
                                                    f"long-lived calls and nodes {self._beyond} beyond their "
                                                    f"reserve (limit {self.total})")
                if self._held >= self.total + self.nodes:  # nodes took client slots too
                    raise RxError(TOO_MANY_STREAMS, f"{what}: the node already serves {self._held} "
                                                    f"long-lived calls (limit {self.total + self.nodes})")
                self._clients += 1
            self._by_caller[key] = mine + 1
            self._held += 1
        return StreamSlot(self, key, node, what)

    def admit(self, context: grpc.ServicerContext, cert_der: bytes, what: str,
              ends_itself: bool = False) -> StreamSlot:
        """:meth:`acquire` for the caller of ``context``; the slot is also released when the
        RPC terminates (a response generator may be dropped without being closed). The caller
        is checked again while it holds the slot (module doc) when its TLS certificate is
        ``cert_der`` (none: only on an insecure test server). ``ends_itself``: the handler
        ends the call itself once it is refused (:meth:`StreamSlot.check`, woken through
        :meth:`StreamSlot.on_refused` or polling), with the reason; otherwise it is cancelled."""
        node = bool(cert_der) and self._is_node is not None and self._is_node(cert_der)
        slot = self.acquire(self.key_of(cert_der), what, node)
        slot.ends_itself = ends_itself
        if not context.add_callback(slot.release):  # the RPC already ended
            slot.release()
            return slot
        ident = peer_identity(context) if self._recheck is not None and cert_der else None
        if ident is not None and ident.cert_der == cert_der:
            self._track(slot, context, ident)
        return slot

    def watch(self, context: grpc.ServicerContext, caller: identity_pb2.Identity, what: str, recheck: Recheck,
              ends_itself: bool = False) -> StreamSlot:
        """Have the sweeper check the caller of a call these caps do not count (an orderer's
        Cluster stream, counted by :class:`ClusterCaps`) with ``recheck`` while it lasts,
        refusing it as it refuses a counted call's (``ends_itself``: see :meth:`admit`). The
        returned slot ends with the call (or :meth:`StreamSlot.release`)."""
        slot = StreamSlot(self, self.key_of(caller.cert_der), True, what)
        slot.counted = False
        slot.recheck = recheck
        slot.ends_itself = ends_itself
        if not context.add_callback(slot.release):  # the RPC already ended
            slot.release()
            return slot
        self._track(slot, context, caller)
        return slot

    def _track(self, slot: StreamSlot, context: grpc.ServicerContext, caller: identity_pb2.Identity) -> None:
        """Have the sweeper check ``slot``'s caller while it is held (started if not running)."""
        with slot._lock:
            slot.context, slot.caller = context, caller
            if slot._released:
                return
            with self._lock:
                if self._closed:
                    return
                self._open[slot] = None
                if self._sweeper is None:  # (it ends once no slot is left to check)
                    self._sweeper = threading.Thread(target=self._sweep_loop, name="stream-sweeper", daemon=True)
                    self._sweeper.start()

    def recheck_now(self) -> None:
        """Check the open calls' callers again now (call it when the config in force changed:
        a certificate revoked or an organisation removed ends their streams at once)."""
        with self._wake:
            self._poked = True
            self._wake.notify_all()

    def _regrace(self) -> None:
        """A slot was flagged outside a sweep (:meth:`StreamSlot.end_with`): have the sweeper
        time its fallback cancel from now (it slept up to ``sweep_s``), without a sweep."""
        with self._wake:
            self._regraced = True
            self._wake.notify_all()

    @property
    def sweeper(self) -> threading.Thread | None:
        """The sweeper thread while it runs (module doc)."""
        with self._lock:
            return self._sweeper

    def close(self, wait_s: float = 1.0) -> None:
        """Stop the sweeper (the node stops: its server cancels every call), waiting up to
        ``wait_s`` for its thread to end (a sweep under way finishes); no later slot is checked
        again."""
        with self._wake:
            self._closed = True
            self._open.clear()
            self._wake.notify_all()
            sweeper = self._sweeper
        if sweeper is not None and sweeper is not threading.current_thread():
            sweeper.join(wait_s)

    def sweep(self) -> int:
        """Check every open slot's caller again with ``recheck`` and refuse the calls of those it
        refuses (:meth:`StreamSlot.refuse`); how many were refused. One certificate is checked
        once per sweep however many slots it holds. ``recheck`` failing otherwise than with
        PERMISSION_DENIED (e.g. no config readable), or raising another exception than RxError
        (a bug; logged), refuses nothing of that caller's and the sweep goes on with the next.
        A call refused earlier that its handler has not ended ``GRACE_S`` later is cancelled."""
        with self._lock:
            slots = [s for s in self._open if s.refused is None]
            overdue = [s for s in self._open if s.refused is not None and not s.cancelled
                       and time.monotonic() - s.refused_at >= GRACE_S]
        for slot in overdue:
            _log.warning("event=stream_refused_cancelled call=%s grace_s=%.1f: the handler of a refused "
                         "call did not end it; it is cancelled", slot.what, GRACE_S)
            slot._cancel()
        verdicts: dict[tuple[str, str, bytes], RxError | None] = {}
        refused = 0
        crashed: list[BaseException] = []
        for slot in slots:
            caller = slot.caller
            check = slot.recheck or self._recheck
            if caller is None or check is None:  # (never tracked without them)
                continue
            # a watched call's check is its own (e.g. an orderer's: of its raft id and method)
            key = (slot.what if slot.recheck is not None else "", caller.org, caller.cert_der)
            if key not in verdicts:
                try:
                    verdicts[key] = _refusal(check, caller)
                except Exception as exc:  # noqa: BLE001 - one caller's check must not stop the others'
                    # (it ended the sweep there, every sweep: the callers after it went unchecked)
                    verdicts[key] = None
                    crashed.append(exc)
            err = verdicts[key]
            if err is not None and slot.refuse(err):
                refused += 1
        if crashed:  # one line a sweep, however many callers
            _log.error("event=stream_recheck_failed callers=%d error=%r: their open calls could not be "
                       "checked again and are left open", len(crashed), crashed[0], exc_info=crashed[0])
        return refused

    def _next_wait(self) -> float:
        """(under the lock) How long the sweeper may sleep: ``sweep_s``, less while a refused
        call awaits its fallback cancel."""
        wait = self._sweep_s
        now = time.monotonic()
        for s in self._open:
            if s.refused is not None and not s.cancelled:
                wait = min(wait, max(0.0, s.refused_at + GRACE_S - now) + 0.01)
        return wait

    def _sweep_loop(self) -> None:
        """The sweeper: :meth:`sweep` every ``sweep_s`` or when poked, until no slot is open."""
        while True:
            with self._wake:
                woken = self._wake.wait_for(lambda: self._poked or self._closed or self._regraced,
                                            timeout=self._next_wait())
                if not self._open or self._closed:
                    self._sweeper = None
                    return
                regraced_only = woken and not self._poked
                self._poked = self._regraced = False
                if regraced_only:  # only a fallback to time: the wait is worked out again
                    continue
            try:
                self.sweep()
            except Exception:  # noqa: BLE001 - a bug must not stop the checks of later sweeps
                _log.exception("event=stream_sweep_failed open=%d", len(self._open))

    def _release(self, slot: StreamSlot) -> None:
        with self._lock:
            self._open.pop(slot, None)
            if not slot.counted:
                return
            key = slot._key
            left = self._by_caller.get(key, 0) - 1
            if left > 0:
                self._by_caller[key] = left
            else:
                self._by_caller.pop(key, None)
            self._held = max(0, self._held - 1)
            if not slot._node:
                self._clients = max(0, self._clients - 1)
                return
            had = self._by_node.get(key, 0)
            if had > 1:
                self._by_node[key] = had - 1
            else:
                self._by_node.pop(key, None)
            if had > self.node_share:
                self._beyond = max(0, self._beyond - 1)


def _refusal(check: Recheck, caller: identity_pb2.Identity) -> RxError | None:
    """Why ``check`` refuses ``caller`` now (an RxError with status PERMISSION_DENIED), or None."""
    try:
        check(caller)
    except RxError as err:
        return err if err.grpc_code == grpc.StatusCode.PERMISSION_DENIED else None
    return None


class ClusterSlot:
    """One admitted Cluster stream; :meth:`release` (idempotent) gives the slot back, unless a
    newer stream of the same orderer and method took it over (and cancelled this one)."""

    def __init__(self, caps: ClusterCaps, key: tuple[int, str], context: grpc.ServicerContext) -> None:
        self._caps = caps
        self.key = key
        self.context = context
        self.watched: StreamSlot | None = None  # its caller checked again (ClusterCaps.watch_with)
        self.will_watch = False  # watched once admitted (its handler ends it itself)
        self.replaced: RxError | None = None  # a newer stream took its slot (ended with this)
        self.lock = threading.Lock()  # (watched and replaced: a replacement may come before the watch)

    def release(self) -> None:
        """Give the slot back (only the first call counts)."""
        self._caps._release(self)


class ClusterCaps:
    """Counts the other orderers' Cluster streams per orderer and method and in total
    (thread-safe); one over an orderer's cap replaces its oldest of that method (module doc)."""

    def __init__(self, total: int, per_orderer: int) -> None:
        if total < 1 or not 1 <= per_orderer <= total:
            raise RxError("BAD_CONFIG", f"cluster stream caps need 1 <= max_cluster_streams_per_orderer "
                                        f"({per_orderer}) <= max_cluster_streams ({total})")
        self.total = total
        self.per_orderer = per_orderer
        self._lock = threading.Lock()
        self._held = 0
        self._open: dict[tuple[int, str], list[ClusterSlot]] = {}  # oldest first
        self._sweeper: StreamCaps | None = None
        self._recheck: Callable[[int, str, identity_pb2.Identity], object] | None = None
        # (orderer, method) -> [when its last cluster_stream_refused line was logged, refusals since]
        self._refused_lines: dict[tuple[int, str], list[float]] = {}

    def watch_with(self, sweeper: StreamCaps, recheck: Callable[[int, str, identity_pb2.Identity], object]) -> None:
        """Have ``sweeper`` (the node's :class:`StreamCaps`) check each held stream's orderer again
        while it lasts with ``recheck(raft_id, method, caller)`` (raising RxError PERMISSION_DENIED
        once the config in force no longer admits it on that stream: no longer an orderer,
        its certificate revoked or expired): a refused orderer's streams end and give their slots
        back (module doc)."""
        self._sweeper, self._recheck = sweeper, recheck

    @classmethod
    def from_extra(cls, extra: Mapping[str, Any], workers: int) -> ClusterCaps:
        """The caps of an orderer whose gRPC pool has ``workers`` threads, from node.yaml
        ``extra`` (``max_cluster_streams``, ``max_cluster_streams_per_orderer``; module doc)."""
        if workers < 2:
            raise RxError("BAD_CONFIG", f"extra.grpc_workers must be at least 2, not {workers}")
        # a small pool keeps room for a consortium's usual few orderers (their Step and forward
        # streams, and a reconnect each): refused, Raft between them would stop -- within what
        # the clients' max_streams (and a max_node_streams set) leave (the worst-case split:
        # StreamCaps.from_extra's cluster); the default reserve gets the rest. (Halving what the
        # clients leave gave 16 workers 3 Cluster slots, 32 workers 7: a 3-orderer leader's two
        # Step and two ForwardBatch streams did not fit, one follower's refused TOO_MANY_STREAMS
        # for good -- where the pool had held 15 and 16; a short reserve bites only under a
        # flood of client streams, and is told: node_reserve_short.)
        left = workers - 1 - int(extra.get("max_streams", workers // 2)) - int(extra.get("max_node_streams", 0))
        total = int(extra.get("max_cluster_streams", max(1, workers // 8, min(16, left))))
        if not 1 <= total < workers:
            raise RxError("BAD_CONFIG", f"extra.max_cluster_streams must be between 1 and grpc_workers - 1 "
                                        f"({workers - 1}), not {total}")
        per_orderer = int(extra.get("max_cluster_streams_per_orderer", min(2, total)))
        if not 1 <= per_orderer <= total:
            raise RxError("BAD_CONFIG", f"extra.max_cluster_streams_per_orderer must be between 1 and "
                                        f"max_cluster_streams ({total}), not {per_orderer}")
        return cls(total, per_orderer)

    def held(self, orderer: int | None = None) -> int:
        """Streams held now (by raft id ``orderer``'s orderer, or in total)."""
        with self._lock:
            if orderer is None:
                return self._held
            return sum(len(slots) for (rid, _), slots in self._open.items() if rid == orderer)

    def admit(self, context: grpc.ServicerContext, orderer: int, method: str,
              caller: identity_pb2.Identity | None = None, ends_itself: bool = False) -> ClusterSlot:
        """A slot for a ``method`` stream of the orderer of raft id ``orderer`` (known a member),
        released when the RPC terminates. Over its cap for ``method`` (or over the total, while
        it holds one of ``method``) its oldest stream of ``method`` is ended and gives its
        slot to this one; over the total otherwise, RxError TOO_MANY_STREAMS. With ``caller`` (its
        TLS identity) and :meth:`watch_with`, the caller is first checked as the sweeper checks
        it (:meth:`refusal`: an RxError PERMISSION_DENIED with the reason, before any slot is
        taken), then again while the stream lasts (``ends_itself``: its handler ends it once
        refused, :meth:`StreamCaps.admit`). A replaced stream is ended ABORTED
        ``STREAM_REPLACED`` by its handler, woken as a refused one is (cancelled if it does not
        within ``GRACE_S``; at once if not watched)."""
        if caller is not None:
            err = self.refusal(orderer, method, caller)
            if err is not None:
                raise err
        key = (orderer, method)
        slot = ClusterSlot(self, key, context)
        sweeper, recheck = self._sweeper, self._recheck
        slot.will_watch = sweeper is not None and recheck is not None and caller is not None and ends_itself
        with self._lock:
            mine = self._open.setdefault(key, [])
            replaced = None
            if len(mine) >= self.per_orderer or (self._held >= self.total and mine):
                replaced = mine.pop(0)
            elif self._held >= self.total:
                if not mine:
                    del self._open[key]
                raise RxError(TOO_MANY_STREAMS, f"Cluster.{method}: the orderer already serves {self._held} "
                                                f"cluster streams (limit {self.total})")
            else:
                self._held += 1
            mine.append(slot)
        if replaced is not None:
            self._end_replaced(replaced, orderer, method)
        if not context.add_callback(slot.release):  # the RPC already ended
            slot.release()
            return slot
        if sweeper is not None and recheck is not None and caller is not None:
            watched = sweeper.watch(context, caller, f"Cluster.{method}",
                                    lambda ident: recheck(orderer, method, ident), ends_itself)
            with slot.lock:
                slot.watched, ended_with = watched, slot.replaced
            if ended_with is not None and ends_itself:  # replaced before it was watched
                watched.end_with(ended_with)
        return slot

    def refusal(self, orderer: int, method: str, caller: identity_pb2.Identity) -> RxError | None:
        """Why the sweeper would refuse ``caller``'s ``method`` stream as orderer ``orderer`` now
        (the check of :meth:`watch_with`, with exactly the sweeper's rules: only its
        PERMISSION_DENIED refusals count; a check failing otherwise, or raising another
        exception, refuses nothing -- the sweeper leaves such a stream open too), or None (also
        without :meth:`watch_with`). Checked when a stream is admitted: the sweeper refusing an
        orderer's stream (e.g. EXPIRED_CERT) did not stop its next one, admitted and holding its
        slot until the next sweep (up to ``SWEEP_S``), redialled every 0.1 s. Refusals are
        logged ``cluster_stream_refused``: the first of an orderer's method at once, then at
        most one line per ``REFUSED_LOG_INTERVAL_S`` telling how many."""
        recheck = self._recheck
        if self._sweeper is None or recheck is None:
            return None
        try:
            err = _refusal(lambda ident: recheck(orderer, method, ident), caller)
        except Exception as exc:  # noqa: BLE001 - as the sweeper: a bug refuses nothing, logged
            _log.error("event=stream_recheck_failed callers=1 error=%r: a new Cluster.%s stream's caller "
                       "could not be checked; it is admitted", exc, method, exc_info=exc)
            return None
        if err is not None:
            self._log_refusal(orderer, method, err)
        return err

    def _log_refusal(self, orderer: int, method: str, err: RxError) -> None:
        now = time.monotonic()
        with self._lock:
            entry = self._refused_lines.get((orderer, method))
            if entry is not None and now - entry[0] < REFUSED_LOG_INTERVAL_S:
                entry[1] += 1
                return
            told = 1 + (int(entry[1]) if entry is not None else 0)
            self._refused_lines[(orderer, method)] = [now, 0]
        _log.warning("event=cluster_stream_refused orderer=%d method=%s reason=%s detail=%r refused=%d "
                     "interval_s=%d: the config in force no longer admits this orderer's certificate on "
                     "this stream (as the sweeper judges open ones); refused PERMISSION_DENIED",
                     orderer, method, err.reason, err.message, told, int(REFUSED_LOG_INTERVAL_S))

    def _end_replaced(self, replaced: ClusterSlot, orderer: int, method: str) -> None:
        """End the stream whose slot a newer one of its orderer took: with STREAM_REPLACED by its
        handler, woken (the sweeper's path and fallback), or cancelled if it is not watched."""
        err = RxError(STREAM_REPLACED, f"a newer Cluster.{method} stream of orderer {orderer} took this "
                                       f"one's slot (limit {self.per_orderer} per orderer and method)",
                      grpc.StatusCode.ABORTED)
        how = "ended"  # by its handler, STREAM_REPLACED
        with replaced.lock:
            replaced.replaced = err
            watched = replaced.watched
        if not replaced.will_watch:
            how = "cancelled"
            replaced.context.cancel()  # type: ignore[no-untyped-call]
        elif watched is not None:
            watched.end_with(err)  # (False: it ends already, refused or over)
        # (else its admit, watching it, ends it so)
        _log.debug("event=cluster_stream_replaced orderer=%d method=%s limit=%d how=%s: a new stream of this "
                   "orderer takes the slot of its oldest (a reconnect while the old stream was not yet "
                   "seen dead)", orderer, method, self.per_orderer, how)

    def _release(self, slot: ClusterSlot) -> None:
        with self._lock:
            mine = self._open.get(slot.key)
            if mine is None or slot not in mine:
                return  # released already, or replaced: its slot went to the newer stream
            mine.remove(slot)
            if not mine:
                del self._open[slot.key]
            self._held = max(0, self._held - 1)
