"""World state, history index, tx-id index and savepoint in one LevelDB (plyvel).

Everything one block changes is written in ONE ``WriteBatch`` with ``sync=True``
(:meth:`StateDB.apply_block`): state writes, history entries, tx-id entries and the
savepoint. So after a crash the database holds either all of a block or none of it, and the
savepoint says which block was last applied.

Key layout (first byte is the record family; namespace names never contain NUL; all
integers unsigned big-endian)::

    b"s" ns 0x00 key                      -> u64 block | u64 tx | value       (state)
    b"h" ns 0x00 u32(len key) key u64 block u64 tx
                                          -> u8 is_delete | u64 timestamp_ms | tx_id (utf-8)
    b"t" tx_id                            -> u64 block | u64 tx | u8 validation code
    b"m" b"savepoint"                     -> u64 block number | 32-byte state hash

Keys and namespaces are UTF-8; range queries are in byte order of the UTF-8 key, which is
code-point order. A key's history entries sort by (block, tx), i.e. commit order.

State hash (lets peers compare themselves after every block)::

    state_hash(n) = SHA-256( state_hash(n-1) || delta(n) )     state_hash(-1) = 32 zero bytes
    delta(n) = lp(b"rxchain.v1.StateDelta") || u64(n) || u32(count of valid txs)
               || for each valid tx, in block order:
                  u64(tx index) || u32(count of writes)
                  || for each write, in rwset order: lp(ns) || lp(key) || u8(is_delete) || lp(value)

(``lp`` is the u32-length-prefixed encoding of ``node.crypto.canonical``.) Only valid
transactions contribute, so two peers that agree on the validation codes and writes agree
on the hash.

Damage: every read asks LevelDB to verify the checksum of each block it loads from disk
(``verify_checksums``; blocks already in LevelDB's cache were checked when loaded), and a
mismatch is LedgerError LEDGER_CORRUPT. Without it a flipped bit in an SSTable is returned
as a silently different value or version, and the peer would validate and endorse against
it (the state hash covers the writes applied, not what is read back). Cost: a CRC32C per
4 KiB block read from the file, none on cache hits.
"""

from __future__ import annotations

import hashlib
import os
import struct
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import plyvel

from node.crypto.canonical import lp
from node.fsutil import make_dirs_durable
from node.ledger.errors import LedgerError

_U32 = struct.Struct(">I")
_U64 = struct.Struct(">Q")
_VER = struct.Struct(">QQ")
_TXIDX = struct.Struct(">QQB")
_HIST = struct.Struct(">BQ")
_SAVEPOINT_KEY = b"msavepoint"
ZERO_HASH = b"\0" * 32
_STATE_DELTA_TAG = lp(b"rxchain.v1.StateDelta")


@dataclass(frozen=True, slots=True)
class Version:
    """The (block, tx) that last wrote a key."""

    block: int
    tx: int


@dataclass(frozen=True, slots=True)
class VersionedValue:
    """A state value and its version."""

    value: bytes
    version: Version


@dataclass(frozen=True, slots=True)
class KeyWrite:
    """One write (or delete) of a valid transaction."""

    ns: str
    key: str
    value: bytes
    is_delete: bool


@dataclass(frozen=True, slots=True)
class TxOutcome:
    """One transaction of a block as the committer applies it."""

    index: int
    tx_id: str
    code: int  # TxValidationCode
    timestamp_ms: int
    writes: Sequence[KeyWrite]  # applied only when code is VALID


@dataclass(frozen=True, slots=True)
class HistoryEntry:
    """One write of a key, in commit order."""

    block: int
    tx: int
    tx_id: str
    timestamp_ms: int
    is_delete: bool


@dataclass(frozen=True, slots=True)
class TxLocation:
    """Where a tx id was committed and with which validation code."""

    block: int
    tx: int
    code: int


@dataclass(frozen=True, slots=True)
class Savepoint:
    """The last block applied to the state and the state hash after it."""

    block: int
    state_hash: bytes


VALID_CODE = 1  # rxchain.v1.TxValidationCode.VALID


def _check_name(ns: str) -> bytes:
    raw = ns.encode("utf-8")
    if not raw or b"\0" in raw:
        raise LedgerError("BAD_NAMESPACE", f"namespace {ns!r} is empty or contains NUL")
    return raw


def state_key(ns: str, key: str) -> bytes:
    """LevelDB key of a state entry."""
    return b"s" + _check_name(ns) + b"\0" + key.encode("utf-8")


def _history_prefix(ns: str, key: str) -> bytes:
    raw = key.encode("utf-8")
    return b"h" + _check_name(ns) + b"\0" + _U32.pack(len(raw)) + raw


def decode_versioned(raw: bytes) -> VersionedValue:
    """Decode a state record (u64 block | u64 tx | value)."""
    block, tx = _VER.unpack_from(raw)
    return VersionedValue(raw[16:], Version(block, tx))


def state_delta(block: int, txs: Sequence[TxOutcome]) -> bytes:
    """Canonical encoding of the valid writes of a block (see the module docstring)."""
    valid = [t for t in txs if t.code == VALID_CODE]
    out = bytearray(_STATE_DELTA_TAG)
    out += _U64.pack(block)
    out += _U32.pack(len(valid))
    for t in valid:
        out += _U64.pack(t.index)
        out += _U32.pack(len(t.writes))
        for w in t.writes:
            ns = w.ns.encode("utf-8")
            key = w.key.encode("utf-8")
            out += _U32.pack(len(ns))
            out += ns
            out += _U32.pack(len(key))
            out += key
            out += b"\x01" if w.is_delete else b"\x00"
            out += _U32.pack(len(w.value))
            out += w.value
    return bytes(out)


def next_state_hash(prev_hash: bytes, block: int, txs: Sequence[TxOutcome]) -> bytes:
    """state_hash(n) from state_hash(n-1) and block n's outcomes."""
    return hashlib.sha256(prev_hash + state_delta(block, txs)).digest()


class StateReader(Protocol):
    """Read access to world state (the live DB or a snapshot)."""

    def get(self, ns: str, key: str) -> VersionedValue | None:
        """The value and version of ``key`` or None."""
        ...

    def range(
        self, ns: str, start: str, end: str, limit: int = 0, max_bytes: int = 0
    ) -> list[tuple[str, VersionedValue]]:
        """Keys in [start, end) of ``ns`` in key order (``end == ""``: to the end); over
        ``max_bytes`` of stored values (0: no bound) RangeTooLarge."""
        ...


class RangeTooLarge(LedgerError):
    """A range read's values exceed the bytes its caller allows (SIZE_LIMIT): deterministic,
    it depends only on the state read."""

    def __init__(self, message: str) -> None:
        super().__init__("SIZE_LIMIT", message)


def _range(
    reader: Any, ns: str, start: str, end: str, limit: int, max_bytes: int = 0
) -> list[tuple[str, VersionedValue]]:
    prefix = b"s" + _check_name(ns) + b"\0"
    lo = prefix + start.encode("utf-8")
    hi = prefix + end.encode("utf-8") if end else prefix[:-1] + b"\x01"
    out: list[tuple[str, VersionedValue]] = []
    plen = len(prefix)
    total = 0
    try:
        with reader.iterator(start=lo, stop=hi, verify_checksums=True) as it:
            for k, v in it:
                total += len(v)
                if max_bytes and total > max_bytes:
                    raise RangeTooLarge(
                        f"range of {ns}: the values of its first {len(out) + 1} keys exceed "
                        f"{max_bytes} bytes; ask for fewer keys")
                out.append((k[plen:].decode("utf-8"), decode_versioned(v)))
                if limit and len(out) >= limit:
                    break
    except plyvel.CorruptionError as exc:
        raise corrupt_state(exc) from exc
    return out


def corrupt_state(exc: Exception) -> LedgerError:
    """The error for a LevelDB block whose checksum fails: never a silently wrong value."""
    return LedgerError(
        "LEDGER_CORRUPT",
        f"state database damaged ({exc}); stop the node and delete its ledger/state "
        "directory: it is rebuilt from the block store by replay",
    )


def _get(reader: Any, key: bytes) -> bytes | None:
    """``reader.get(key)`` (a DB or a snapshot) with LevelDB's checksums verified (module
    docstring): a damaged block is LEDGER_CORRUPT."""
    try:
        raw: bytes | None = reader.get(key, verify_checksums=True)
    except plyvel.CorruptionError as exc:
        raise corrupt_state(exc) from exc
    return raw


class StateSnapshot:
    """A consistent read view of the state (a LevelDB snapshot) for simulation."""

    def __init__(self, snap: Any, savepoint: Savepoint | None) -> None:
        self._snap = snap
        self.savepoint = savepoint

    def get(self, ns: str, key: str) -> VersionedValue | None:
        """The value and version of ``key`` as of the snapshot."""
        raw = _get(self._snap, state_key(ns, key))
        return None if raw is None else decode_versioned(raw)

    def range(
        self, ns: str, start: str, end: str, limit: int = 0, max_bytes: int = 0
    ) -> list[tuple[str, VersionedValue]]:
        """Keys in [start, end) as of the snapshot (``max_bytes``: see StateReader)."""
        return _range(self._snap, ns, start, end, limit, max_bytes)

    def close(self) -> None:
        """Release the snapshot."""
        self._snap.close()

    def __enter__(self) -> StateSnapshot:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


# LevelDB options. No block compression: the e2e benchmark's system-wide profile
# (bench/profiles/layers.py, 2026-11-26) found snappy compressing SSTable blocks during
# compactions at ~11 % of the whole machine's CPU at the peak (LevelDB in all 15 %, 17-25 %
# of each peer), for values that are mostly AES-GCM ciphertext; without it LevelDB fell to
# ~4 % of the CPU, and the 100k-tx scale ledger takes ~13 % more disk (3,444 vs 3,051 bytes
# per tx). Bloom filters (10 bits per key): most tx-id lookups -- the duplicate checks of
# endorse, submit and validation -- are for ids that are not on the ledger, and without a
# filter such a miss reads a block of every level that might hold the key.
_DB_OPTIONS: dict[str, Any] = {"compression": None, "bloom_filter_bits": 10}


class StateDB:
    """World state + indexes + savepoint in one LevelDB (see the module docstring)."""

    def __init__(self, directory: str | os.PathLike[str], *, sync: bool = True) -> None:
        self._dir = os.fspath(directory)
        try:
            make_dirs_durable(self._dir, sync=sync)
        except OSError as exc:
            raise LedgerError(
                "IO_ERROR", f"cannot create state db directory {self._dir}: {exc}"
            ) from exc
        self._sync = sync
        self._ns_prefix: dict[str, bytes] = {}
        _refuse_headless(self._dir)
        try:
            self._db: Any = plyvel.DB(self._dir, create_if_missing=True, **_DB_OPTIONS)
        except plyvel.CorruptionError as exc:  # e.g. a table file lost: not a disk error
            raise corrupt_state(exc) from exc
        except plyvel.Error as exc:
            raise LedgerError("IO_ERROR", f"cannot open state db {self._dir}: {exc}") from exc
        # The savepoint's block number, kept in memory for apply_block's order check (this
        # object is the database's only writer); moved only after a batch is written.
        try:
            sp = self.savepoint()
        except BaseException:
            self._db.close()
            raise
        self._applied_block = -1 if sp is None else sp.block

    # ------------------------------------------------------------------ reads

    def _skey(self, ns: str, key: str) -> bytes:
        prefix = self._ns_prefix.get(ns)
        if prefix is None:
            prefix = b"s" + _check_name(ns) + b"\0"
            if len(self._ns_prefix) >= 1024:
                self._ns_prefix.clear()
            self._ns_prefix[ns] = prefix
        return prefix + key.encode("utf-8")

    def get(self, ns: str, key: str) -> VersionedValue | None:
        """The committed value and version of ``key`` or None."""
        raw = _get(self._db, self._skey(ns, key))
        return None if raw is None else decode_versioned(raw)

    def get_version(self, ns: str, key: str) -> Version | None:
        """Only the version of ``key`` (the validator's MVCC check)."""
        raw = _get(self._db, self._skey(ns, key))
        if raw is None:
            return None
        block, tx = _VER.unpack_from(raw)
        return Version(block, tx)

    def range(
        self, ns: str, start: str, end: str, limit: int = 0, max_bytes: int = 0
    ) -> list[tuple[str, VersionedValue]]:
        """Committed keys in [start, end) of ``ns`` in key order, at most ``limit`` (0: all;
        ``max_bytes``: see StateReader)."""
        return _range(self._db, ns, start, end, limit, max_bytes)

    def snapshot(self) -> StateSnapshot:
        """A consistent snapshot (state and savepoint from the same instant)."""
        snap = self._db.snapshot()
        try:
            raw = _get(snap, _SAVEPOINT_KEY)
        except LedgerError:
            snap.close()
            raise
        return StateSnapshot(snap, None if raw is None else _decode_savepoint(raw))

    def history(self, ns: str, key: str, limit: int = 0, start: int = 0) -> list[HistoryEntry]:
        """Every committed write of ``key``, oldest first, from the ``start``-th on (0: the
        oldest; the ones before it are stepped over undecoded), at most ``limit`` (0: all)."""
        prefix = _history_prefix(ns, key)
        plen = len(prefix)
        out: list[HistoryEntry] = []
        try:
            with self._db.iterator(prefix=prefix, verify_checksums=True) as it:
                for _ in range(start):
                    if next(it, None) is None:
                        return out
                for k, v in it:
                    block, tx = _VER.unpack_from(k, plen)
                    is_delete, ts = _HIST.unpack_from(v)
                    out.append(
                        HistoryEntry(block, tx, v[_HIST.size :].decode(), ts, bool(is_delete))
                    )
                    if limit and len(out) >= limit:
                        break
        except plyvel.CorruptionError as exc:
            raise corrupt_state(exc) from exc
        return out

    def tx_location(self, tx_id: str) -> TxLocation | None:
        """Where ``tx_id`` was committed (any validation code), or None."""
        raw = _get(self._db, b"t" + tx_id.encode("utf-8"))
        if raw is None:
            return None
        return TxLocation(*_TXIDX.unpack(raw))

    def has_tx(self, tx_id: str) -> bool:
        """True if ``tx_id`` is on the ledger (valid or not)."""
        return _get(self._db, b"t" + tx_id.encode("utf-8")) is not None

    def savepoint(self) -> Savepoint | None:
        """The last applied block and state hash, or None before genesis."""
        raw = _get(self._db, _SAVEPOINT_KEY)
        return None if raw is None else _decode_savepoint(raw)

    # ------------------------------------------------------------------ writes

    def apply_block(
        self,
        block: int,
        txs: Iterable[TxOutcome],
        state_hash: bytes,
        *,
        before_write: Any = None,
    ) -> None:
        """Apply one block's outcomes in a single synced batch (state, indexes, savepoint).

        ``before_write`` (tests only) is called after the batch is built, before it is
        written, to inject a crash.
        """
        expected = self._applied_block + 1
        if block != expected:
            raise LedgerError(
                "STATE_MISMATCH", f"state is at block {expected - 1}, cannot apply {block}"
            )
        wb = self._db.write_batch(sync=self._sync)
        put = wb.put
        delete = wb.delete
        for t in txs:
            tx_id_raw = t.tx_id.encode("utf-8")
            if tx_id_raw:  # "" = not provably this tx's id (see txwrites.UNINDEXED_CODES)
                put(b"t" + tx_id_raw, _TXIDX.pack(block, t.index, t.code))
            if t.code != VALID_CODE:
                continue
            ver = _VER.pack(block, t.index)
            hist_put = _HIST.pack(0, t.timestamp_ms) + tx_id_raw
            hist_del = _HIST.pack(1, t.timestamp_ms) + tx_id_raw
            for w in t.writes:
                ns_raw = _check_name(w.ns)
                key_raw = w.key.encode("utf-8")
                if w.is_delete:
                    delete(b"s" + ns_raw + b"\0" + key_raw)
                else:
                    put(b"s" + ns_raw + b"\0" + key_raw, ver + w.value)
                put(
                    b"h" + ns_raw + b"\0" + _U32.pack(len(key_raw)) + key_raw + ver,
                    hist_del if w.is_delete else hist_put,
                )
        put(_SAVEPOINT_KEY, _U64.pack(block) + state_hash)
        if before_write is not None:
            before_write()
        try:
            wb.write()
        except plyvel.Error as exc:  # e.g. ENOSPC: nothing of the batch is applied
            raise LedgerError(
                "IO_ERROR", f"state db {self._dir}: block {block} not written: {exc}", block=block
            ) from exc
        self._applied_block = block

    def close(self) -> None:
        """Close the database (idempotent)."""
        if not self._db.closed:
            self._db.close()

    def __enter__(self) -> StateDB:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _refuse_headless(directory: str) -> None:
    """LEDGER_CORRUPT if ``directory`` holds LevelDB data files but no CURRENT file (lost to a
    power loss, a partial restore): LevelDB would create a new, empty database there, replay
    only its newest log into it and delete the older tables -- a state database with the
    savepoint and the latest writes but without the keys, history and tx ids of older blocks,
    taken as sound. A directory without data files (new, or a first start killed before
    LevelDB wrote CURRENT) is created as before."""
    try:
        if os.path.exists(os.path.join(directory, "CURRENT")):
            return
        data = sorted(n for n in os.listdir(directory) if n.endswith((".ldb", ".sst", ".log")))
    except OSError as exc:
        raise LedgerError("IO_ERROR", f"cannot read state db directory {directory}: {exc}") from exc
    if data:
        raise LedgerError(
            "LEDGER_CORRUPT",
            f"state database {directory} has data files ({', '.join(data[:3])}) but no CURRENT "
            "file: opening it would start an empty database and delete them; stop the node and "
            "delete its ledger/state directory: it is rebuilt from the block store by replay",
        )


def _decode_savepoint(raw: bytes) -> Savepoint:
    (block,) = _U64.unpack_from(raw)
    return Savepoint(block, raw[8:40])
