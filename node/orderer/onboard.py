"""Onboarding: an orderer catches its block store up to the current chain before its Raft node
starts.

Why: an orderer knows the network from its own block store. A new one holds only the genesis
block, so the config in force it starts from is the genesis config: its transport would accept
Raft messages only from the genesis orderers and it would fetch blocks only from them. Once
every genesis orderer has been replaced, the leader's messages are refused (NOT_AN_ORDERER) and
nobody it dials answers: it never joins. The same holds for an orderer that was down while
every orderer its last config names was replaced. Onboarding pulls the chain first, so the
config in force, the transport's membership and the addresses it dials are the current ones
when Raft starts (Hyperledger Fabric's orderer "onboarding" replicates the chain before the
Raft node of a new orderer starts for the same reason). Blocks stored ahead of the Raft log
are committed blocks: the driver only compares them with the committed entries it applies.

Where from: the orderers of the node.yaml ``orderers`` endpoints, then those of the genesis
config and of every config adopted on the way (its own entries left out). Each source is asked
(AtomicBroadcast.Deliver, not following) for every block past the local height; its first
answer, and each next one, must come within ``answer_timeout_s``, the whole stream within
``call_timeout_s`` (the blocks verified until then are kept and the next source or round goes on
from there). Each stream is dialled at the ``max_message_bytes`` in force; once a block stored
from it raises that, the same source is asked again, dialled at the new bound (the blocks
behind it may be larger than the stream accepts).

Trust: only the local genesis block. Every block must chain onto the last one stored (number,
previous hash), match its data hash and carry a valid signature of an orderer of the config in
force before it (``chain.signed_in_force``, as peers and ``Chain._append_fetched`` judge it); a
config block is adopted only if the orderers' own rules admit it (``ConfigTracker.block_config``). A
block failing a check is never stored: that source is dropped for the round (logged) and the
next one is asked. As in ``Chain._append_fetched``, a block whose config in force names this
orderer with its certificate is stored with its own signature added, any other as its sources
signed it (a peer refuses a block signed only by an orderer not in force before it). A config
raising the protocol version beyond this release stops onboarding (PROTOCOL_UNSUPPORTED), the
block carrying it stored, as the Raft driver does.

When it ends: once one source has streamed up to its own height (the rest of the log comes from
Raft). Every orderer asks every source once and starts Raft whatever it got (``wait=False``;
a round that gained blocks with a stream cut at ``call_timeout_s``, a long chain, is followed
by another at once):
one restarting has its Raft log, and an orderer the genesis config names may be starting a
brand-new network with orderers not up yet. Only a new orderer (its Raft state blank,
:func:`node.orderer.statecheck.is_blank`) the genesis config does not name waits: it cannot be in the network
unless some orderer holds blocks past genesis, so it asks again every ``retry_s`` and, after
``wait_s`` without any source answering or any block gained, refuses to start:
ONBOARDING_FAILED naming each source and why it failed.
"""

from __future__ import annotations

import logging
import math
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import grpc
from rxchain.v1 import block_pb2, services_pb2, services_pb2_grpc

from node.crypto.canonical import block_data_hash, block_header_hash
from node.crypto.signing import Signer, Verifier
from node.errors import RxError
from node.ledger.blockstore import BlockStore
from node.orderer.chain import append_with_config, sign_block, signed_in_force, signs_in_force
from node.orderer.configtx import ConfigTracker
from node.protocol import require_supported

_log = logging.getLogger(__name__)

ONBOARDING_FAILED = "ONBOARDING_FAILED"

_CUT_SHORT = grpc.StatusCode.DEADLINE_EXCEEDED.name  # a source's failure: its stream hit call_timeout_s


@dataclass(frozen=True)
class OnboardOptions:
    """Bounds of onboarding (node.yaml ``extra``: ``onboard_wait_ms``, ``onboard_answer_ms``)."""

    wait_s: float = 60.0  # without any answer or block gained, an orderer not in genesis gives up
    answer_timeout_s: float = 3.0  # a source's first answer, and each next (an unreachable host costs this much)
    call_timeout_s: float = 120.0  # one source's whole stream
    retry_s: float = 1.0  # between rounds


@dataclass
class Onboarded:
    """What onboarding did: the height before and after, and each source's failure, if any."""

    start_height: int
    height: int
    source: str = ""  # the source that streamed up to its height ("" if none did)
    failures: dict[str, str] = field(default_factory=dict)


class BlockRefused(Exception):
    """A block a source sent failed verification (nothing stored)."""


class _BoundRaised(Exception):
    """A block stored from the stream raised max_message_bytes past the bound it was dialled at."""


class _NoAnswer(Exception):
    """A source did not answer within ``answer_timeout_s``."""


class Onboarding:
    """Catches ``blocks`` up from other orderers (see the module docstring); ``tracker`` follows
    the configs of the blocks stored, ``channels`` dials a ``host:port``."""

    def __init__(
        self,
        raft_id: int,
        blocks: BlockStore,
        tracker: ConfigTracker,
        signer: Signer,
        channels: Callable[[str], grpc.Channel],
        endpoints: Sequence[str],
        *,
        verifier: Verifier | None = None,
        options: OnboardOptions | None = None,
        own_targets: Sequence[str] = (),
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        """``endpoints``: the node.yaml orderers' ``host:port``; ``own_targets``: this orderer's
        own addresses (never asked)."""
        self._id = raft_id
        self._blocks = blocks
        self._tracker = tracker
        self._signer = signer
        self._channels = channels
        self._endpoints = list(endpoints)
        self._genesis_targets = [f"{o.host}:{o.port}" for o in tracker.current.config.orderers
                                 if o.raft_id != raft_id]
        self._verifier = verifier or Verifier()
        self._opt = options or OnboardOptions()
        self._own = set(own_targets)
        self._clock = clock
        self._sleep = sleep

    def sources(self) -> list[str]:
        """The addresses to ask, in order: node.yaml's, the config in force's, the genesis'."""
        current = [f"{o.host}:{o.port}" for o in self._tracker.current.config.orderers if o.raft_id != self._id]
        out: list[str] = []
        for target in (*self._endpoints, *current, *self._genesis_targets):
            if target not in out and target not in self._own:
                out.append(target)
        return out

    def run(self, wait: bool) -> Onboarded:
        """Onboard; ``wait``: ask again until a source answers (bounded by ``wait_s`` without
        progress), else ONBOARDING_FAILED. Without ``wait`` one round is all, unless it gained
        blocks and a source's stream was cut at ``call_timeout_s`` (asked again at once)."""
        result = Onboarded(self._blocks.height(), self._blocks.height())
        _log.info("event=onboarding_started orderer=%d height=%d sources=%s wait=%s", self._id,
                  result.start_height, ",".join(self.sources()), "yes" if wait else "no")
        progress_at = self._clock()
        while True:
            before = self._blocks.height()
            asked = self._round(result)
            result.height = self._blocks.height()
            if result.source:
                _log.info(
                    "event=onboarded orderer=%d height=%d from_height=%d source=%s config_block=%d "
                    "in_orderer_set=%s", self._id, result.height, result.start_height, result.source,
                    self._tracker.current.block_number, "yes" if self._in_orderer_set() else "no",
                )
                return result
            if not wait and result.height > before and any(
                    result.failures.get(target, "").startswith(_CUT_SHORT) for target in asked):
                # a stream cut at call_timeout_s while it was sending (a long chain): ask again at
                # once -- Raft started on a partial chain would run under a config in force that
                # may name none of the current orderers, and never join. (A source that stops
                # answering mid-stream is hung, not asked again.)
                continue
            if not wait:
                # (a brand-new network's orderers start one by one: unreachable ones are normal)
                refused = any(why.startswith("BAD_BLOCK") for why in result.failures.values())
                _log.log(
                    logging.WARNING if refused else logging.INFO,
                    "event=onboarding_skipped orderer=%d height=%d failures=%r: no orderer streamed its "
                    "chain; Raft starts from this block store",
                    self._id, result.height, _describe(result.failures),
                )
                return result
            if result.height > before:
                progress_at = self._clock()
            if self._clock() - progress_at >= self._opt.wait_s:
                raise RxError(
                    ONBOARDING_FAILED,
                    f"orderer raft id {self._id}: for {self._opt.wait_s:.0f} s no orderer it can reach "
                    f"streamed the chain (height here {result.height}; {_describe(result.failures)}). A "
                    "new orderer fetches the chain from the orderers its node.yaml lists under orderers "
                    "and those of the genesis block, and stores no block failing verification from its "
                    "genesis block: list at least one running orderer of this network there",
                )
            self._sleep(self._opt.retry_s)

    def _in_orderer_set(self) -> bool:
        return any(o.raft_id == self._id for o in self._tracker.current.config.orderers)

    def _round(self, result: Onboarded) -> set[str]:
        """Ask every source once (the list grows with the configs adopted on the way); returns
        the sources asked."""
        tried: set[str] = set()
        while True:
            todo = [t for t in self.sources() if t not in tried]
            if not todo:
                return tried
            target = todo[0]
            tried.add(target)
            try:
                while True:
                    try:
                        self._pull(target)
                        break
                    except _BoundRaised:
                        # the blocks behind it may exceed what the stream accepts: the same
                        # source again, dialled at the bound now in force (finitely often:
                        # each time the bound rose)
                        _log.info("event=onboard_redial orderer=%d source=%s height=%d "
                                  "message_bound=%d", self._id, target, self._blocks.height(),
                                  self._message_bytes())
            except BlockRefused as exc:
                result.failures[target] = f"BAD_BLOCK: {exc}"
            except _NoAnswer:
                result.failures[target] = f"NO_ANSWER: no answer within {self._opt.answer_timeout_s:g} s"
            except grpc.RpcError as exc:
                code = exc.code() if hasattr(exc, "code") else None
                name = code.name if isinstance(code, grpc.StatusCode) else "RPC_ERROR"
                detail = exc.details() if hasattr(exc, "details") else str(exc)
                result.failures[target] = f"{name}: {detail}"
            else:
                result.failures.pop(target, None)
                result.source = result.source or target
                continue
            _log.warning("event=onboard_source_failed orderer=%d source=%s height=%d error=%r: the next "
                         "source is asked", self._id, target, self._blocks.height(), result.failures[target])

    def _pull(self, target: str) -> None:
        """Every block ``target`` holds past the local height, verified and stored; returns once
        it says it has sent all (raises grpc.RpcError or BlockRefused otherwise)."""
        dialled = self._message_bytes()
        channel = self._channels(target)
        try:
            stub = services_pb2_grpc.AtomicBroadcastStub(channel)
            request = services_pb2.DeliverRequest(start_block=self._blocks.height(), stop_block=0, follow=False)
            call: Any = stub.Deliver(request, timeout=self._opt.call_timeout_s)  # a stream and a Call
            # each answer is bounded tighter than the stream: an unreachable host, or one that
            # stops sending mid-stream (hung, partitioned), costs little (the blocks verified
            # until then are kept). One watcher per call, not a timer per block (a thread each).
            answer_s = self._opt.answer_timeout_s
            due = [time.monotonic() + answer_s]  # the next answer's deadline (inf: verifying one)
            silent, ended = threading.Event(), threading.Event()

            def watch() -> None:
                while not ended.wait(min(answer_s, max(0.0, due[0] - time.monotonic()))):
                    if time.monotonic() >= due[0]:
                        silent.set()
                        call.cancel()
                        return

            threading.Thread(target=watch, name=f"onboard-watch-{self._id}", daemon=True).start()
            try:
                for resp in call:
                    due[0] = math.inf  # the time spent verifying is not the source's
                    if resp.HasField("status"):
                        if resp.status.reason != "OK":
                            raise BlockRefused(f"{target} ended with {resp.status.reason}: {resp.status.message}")
                        return
                    self._store(resp.block, target)
                    if self._message_bytes() > dialled:
                        raise _BoundRaised
                    due[0] = time.monotonic() + answer_s
            except grpc.RpcError:
                if silent.is_set():
                    raise _NoAnswer from None
                raise
            finally:
                ended.set()
                call.cancel()
            raise BlockRefused(f"{target} ended its stream without a status")
        finally:
            channel.close()

    def _message_bytes(self) -> int:
        """``limits.max_message_bytes`` of the config in force (the channels dial with it)."""
        return int(self._tracker.current.config.limits.max_message_bytes)

    def _store(self, block: block_pb2.Block, target: str) -> None:
        """Verify ``block`` as the next one (see the module docstring), then store it and adopt
        the config it carries; BlockRefused (nothing stored) if it fails a check."""
        number = block.header.number
        height = self._blocks.height()
        current = self._tracker.current
        if number != height:
            raise BlockRefused(f"{target} sent block {number} where block {height} was due")
        if block.header.previous_hash != self._blocks.last_hash():
            raise BlockRefused(f"block {number} from {target}: previous hash does not link to block {height - 1}")
        if block.header.data_hash != block_data_hash(list(block.data.envelopes)):
            raise BlockRefused(f"block {number} from {target}: data hash does not match its envelopes")
        header_hash = block_header_hash(block.header)
        if not signed_in_force(self._verifier, block, header_hash, current.msp):
            raise BlockRefused(
                f"block {number} from {target}: no valid signature of an orderer of the config in "
                f"force (sequence {current.config.sequence}, block {current.block_number})")
        if signs_in_force(current.config, self._id, self._signer.identity.cert_der):
            sign_block(block, header_hash, self._signer)
        adopted = append_with_config(self._blocks, self._tracker, block)
        if adopted is not None:
            _log.info("event=onboard_config_adopted orderer=%d sequence=%d block=%d orderers=%s", self._id,
                      adopted.config.sequence, number, ",".join(map(str, adopted.orderer_ids())))
            # the block is stored; what follows it is judged by rules this release may lack
            require_supported(adopted.config, f"orderer {self._id}")


def _describe(failures: dict[str, str]) -> str:
    if not failures:
        return "no orderer to ask"
    return "; ".join(f"{target}: {why}" for target, why in failures.items())
