"""``ledger verify``: re-check a whole ledger and name the first bad block.

:func:`verify_ledger` opens the block store READ-ONLY (nothing is repaired or truncated)
and, block by block:

1. record framing and checksum, block number;
2. block 0 equals the given genesis block (header hash and data);
3. for later blocks: previous hash, data hash, and the orderer signatures over the header
   hash (a quorum of distinct orderers of the config in force before the block);
4. the validation codes: with a :class:`~node.peer.validator.PolicyProvider` every tx is
   re-validated from scratch (signatures, policies, MVCC against the replayed state) and the
   codes must equal the stored ones; without one the stored codes are used;
5. the state hash: the valid writes are replayed into a scratch LevelDB and the recomputed
   state hash must equal ``metadata.state_hash`` of every block;
6. finally the live state's savepoint (if readable) must match the replayed one: the state
   hash replayed after the savepoint's block, also when the savepoint is behind the block
   store (the blocks after it are replayed on the next start, but only onto a state whose
   savepoint hash is the one stored with its block: the start refuses any other).

The first failure stops the run; the report names the block and the reason. Blocks after
a config block putting in force a protocol version this release does not implement are not
judged by its older rules: the run stops there with PROTOCOL_UNSUPPORTED ("not verified",
not "bad"; node.protocol) -- verify with a release implementing that version.
"""

from __future__ import annotations

import os
import tempfile
from dataclasses import dataclass, field

from rxchain.v1 import block_pb2, config_pb2

from node.crypto.canonical import GENESIS_PREVIOUS_HASH, block_header_hash
from node.crypto.signing import Verifier
from node.errors import RxError
from node.genesis import config_from_genesis
from node.ledger.blockstore import BlockStore
from node.ledger.errors import LedgerError
from node.ledger.statedb import ZERO_HASH, Savepoint, StateDB, StateReader, TxOutcome, next_state_hash
from node.ledger.txwrites import CONFIG_KEY, SYSTEM_NS, outcomes_from_block
from node.peer.validator import ConfigState, ContractDefinition, PolicyProvider, Validator
from node.protocol import PROTOCOL_UNSUPPORTED, unsupported


@dataclass
class VerifyReport:
    """Outcome of :func:`verify_ledger`."""

    ok: bool
    height: int
    checked: int
    first_bad_block: int | None = None
    reason: str = ""
    message: str = ""
    state_hash: str = ""
    revalidated: bool = False
    warnings: list[str] = field(default_factory=list)

    def summary(self) -> str:
        """One human-readable paragraph."""
        mode = "re-validated" if self.revalidated else "stored validation codes"
        if self.ok:
            text = (
                f"ledger OK: {self.height} blocks checked ({mode}); "
                f"state hash {self.state_hash}"
            )
        elif self.reason == PROTOCOL_UNSUPPORTED:
            text = (
                f"ledger NOT VERIFIED from block {self.first_bad_block} on: {self.message} "
                f"({self.checked} blocks before it are sound)"
            )
        else:
            text = (
                f"ledger BAD: first bad block {self.first_bad_block}: {self.reason}: "
                f"{self.message} ({self.checked} blocks before it are sound)"
            )
        return "\n".join([text, *(f"warning: {w}" for w in self.warnings)])


class _NoContracts:
    def contract(self, name: str, state: StateReader) -> ContractDefinition | None:
        return None


def resolve_ledger_dir(directory: str | os.PathLike[str]) -> str:
    """Accept the ledger directory itself or a node data dir holding ``ledger/``."""
    d = os.fspath(directory)
    if not os.path.isdir(os.path.join(d, "blocks")) and os.path.isdir(
        os.path.join(d, "ledger", "blocks")
    ):
        return os.path.join(d, "ledger")
    return d


def verify_ledger(
    directory: str | os.PathLike[str],
    genesis: block_pb2.Block,
    *,
    policies: PolicyProvider | None = None,
    orderer_quorum: int = 1,
) -> VerifyReport:
    """Re-check the ledger in ``directory`` (see the module docstring)."""
    ledger_dir = resolve_ledger_dir(directory)
    report = VerifyReport(ok=False, height=0, checked=0, revalidated=policies is not None)
    live = _live_savepoint(ledger_dir, report)
    replayed: dict[int, bytes] = {}  # the state hash after the live savepoint's block
    try:
        store = BlockStore(os.path.join(ledger_dir, "blocks"), readonly=True)
    except LedgerError as err:
        report.first_bad_block = err.block
        report.reason, report.message = err.reason, err.message
        return report
    try:
        report.height = store.height()
        if store.torn_tail is not None:
            report.warnings.append(
                f"torn tail in {store.torn_tail[0]} at offset {store.torn_tail[1]} "
                "(an interrupted append; it is truncated when the node starts)"
            )
        with tempfile.TemporaryDirectory(prefix="rxchain-verify-") as scratch_dir:
            scratch = StateDB(scratch_dir, sync=False)
            try:
                _walk(store, genesis, scratch, policies, orderer_quorum, report,
                      None if live is None else live.block, replayed)
            finally:
                scratch.close()
    finally:
        store.close()
    if report.ok and live is not None:
        _compare_live_state(live, replayed.get(live.block), report)
    return report


def _fail(report: VerifyReport, n: int, reason: str, message: str) -> None:
    report.ok = False
    report.first_bad_block = n
    report.reason = reason
    report.message = message


def _walk(
    store: BlockStore,
    genesis: block_pb2.Block,
    scratch: StateDB,
    policies: PolicyProvider | None,
    quorum: int,
    report: VerifyReport,
    keep: int | None,
    replayed: dict[int, bytes],
) -> None:
    verifier = Verifier()
    try:
        config = config_from_genesis(genesis)
    except RxError as err:
        _fail(report, 0, "BAD_GENESIS", f"the given genesis block is invalid: {err.message}")
        return
    validator = Validator(
        scratch, config, verifier, policies or _NoContracts(), orderer_quorum=quorum
    )
    prev_block_hash = GENESIS_PREVIOUS_HASH
    prev_state_hash = ZERO_HASH
    for n in range(store.height()):
        why = unsupported(validator.config.config) if n > 0 else None
        if why is not None:
            # the blocks from here on follow rules this release lacks: judging them by the
            # old ones would call a sound ledger bad (or a bad one sound)
            _fail(report, n, PROTOCOL_UNSUPPORTED, f"cannot judge block {n}: {why}")
            return
        try:
            block = store.get(n)
        except LedgerError as err:
            _fail(report, n, err.reason, err.message)
            return
        outcomes: list[TxOutcome]
        stored_state_hash = block.metadata.state_hash
        stored = list(block.metadata.validation_codes)
        if n == 0:
            if block_header_hash(block.header) != block_header_hash(
                genesis.header
            ) or list(block.data.envelopes) != list(genesis.data.envelopes):
                _fail(report, 0, "GENESIS_MISMATCH", "block 0 is not the given genesis block")
                return
            try:
                outcomes = outcomes_from_block(block)
            except ValueError as exc:
                _fail(report, 0, "LEDGER_CORRUPT", str(exc))
                return
        else:
            try:
                if policies is None:
                    validator.check_block(block, n, prev_block_hash)
                    outcomes = outcomes_from_block(block)
                else:
                    vb = validator.validate(block, n, prev_block_hash)  # rewrites metadata
                    if stored != vb.codes:
                        first = next(
                            (i for i, (a, b) in enumerate(zip(stored, vb.codes, strict=False))
                             if a != b),
                            min(len(stored), len(vb.codes)),
                        )
                        _fail(
                            report, n, "VALIDATION_CODES_MISMATCH",
                            f"tx {first}: stored code "
                            f"{stored[first] if first < len(stored) else 'missing'}, "
                            f"re-validation gives {vb.codes[first] if first < len(vb.codes) else 'none'}",
                        )
                        return
                    outcomes = vb.outcomes
            except RxError as err:
                _fail(report, n, err.reason, err.message)
                return
            except ValueError as exc:
                _fail(report, n, "LEDGER_CORRUPT", str(exc))
                return
        state_hash = next_state_hash(prev_state_hash, n, outcomes)
        if stored_state_hash != state_hash:
            _fail(
                report, n, "STATE_HASH_MISMATCH",
                f"replayed state hash {state_hash.hex()[:16]}.. differs from the stored "
                f"{stored_state_hash.hex()[:16] or '(none)'}..",
            )
            return
        scratch.apply_block(n, outcomes, state_hash)
        if n == keep:
            replayed[n] = state_hash
        for t in outcomes:
            for w in t.writes:
                if w.ns == SYSTEM_NS and w.key == CONFIG_KEY:
                    validator.adopt(
                        ConfigState(config_pb2.ConsortiumConfig.FromString(w.value), verifier)
                    )
        prev_block_hash = block_header_hash(block.header)
        prev_state_hash = state_hash
        report.checked = n + 1
    report.ok = True
    report.state_hash = prev_state_hash.hex()


def _live_savepoint(ledger_dir: str, report: VerifyReport) -> Savepoint | None:
    """The live state's savepoint, read before the walk (which keeps the replayed state hash
    after its block); None, with a warning saying why, when there is nothing to compare."""
    state_dir = os.path.join(ledger_dir, "state")
    if not os.path.isdir(state_dir):
        report.warnings.append("no state database next to the block store")
        return None
    try:
        live = StateDB(state_dir, sync=False)
    except LedgerError as err:
        why = " (in use by a running node?)" if err.reason == "IO_ERROR" else ""
        report.warnings.append(f"live state not compared{why}: {err}")
        return None
    try:
        sp = live.savepoint()
    except LedgerError as err:
        report.warnings.append(f"live state not compared: {err}")
        return None
    finally:
        live.close()
    if sp is None:
        report.warnings.append("live state is empty (it will be rebuilt by replay)")
    return sp


def _compare_live_state(sp: Savepoint, replayed: bytes | None, report: VerifyReport) -> None:
    if sp.block >= report.height or replayed is None:
        _fail(report, sp.block, "STATE_MISMATCH",
              f"live state is at block {sp.block}, beyond the block store height {report.height}")
        return
    if sp.state_hash != replayed:
        _fail(report, sp.block, "STATE_HASH_MISMATCH",
              f"the live state's savepoint hash after block {sp.block} differs from the replayed "
              "state hash: the state database does not belong to this block store (delete it to "
              "rebuild it by replay)")
        return
    if sp.block < report.height - 1:
        report.warnings.append(
            f"live state is at block {sp.block}; blocks up to {report.height - 1} are replayed "
            "on the next start"
        )
