"""Consortium config updates: how the admins change what the network runs.

A change of the consortium's configuration -- raising ``protocol_version`` once every node runs
a release implementing it (README "Upgrades"), a new hospital or pharmacy, a rotated CA or
node certificate, another batch timeout -- is a CONFIG transaction carrying the whole new
:class:`ConsortiumConfig` (``sequence`` one above the one in force) and the signatures of
enough organisations' admins to satisfy the ``config_update`` policy in force
(``MAJORITY(admin)`` in the sample consortium). The admins sit in different organisations, so
the update travels as a file between them:

1. ``rxchain config show [--json]`` -- the config in force, as a peer's chain shows it: every
   block verified from the local ``genesis.block`` and every config transaction judged as the
   orderers judge it (:class:`ChainConfig`; the peer's unsigned ``last_config_block`` pointer and
   validation codes must agree, LEDGER_INVALID otherwise);
2. ``rxchain config propose --out FILE [--force] (--protocol-version N | --from-json CONFIG.json)``
   -- the proposal: the config in force with the change, ``sequence`` + 1, no signature yet
   (``--from-json``: the whole config, e.g. ``config show --json`` edited); an existing FILE --
   perhaps signed by other admins already -- is FILE_EXISTS unless ``--force``; the id of an
   organisation the proposal removes is added to ``retired_org_ids``, every id listed there
   stays, and a proposal adding an organisation under a listed id is BAD_CONFIG_UPDATE (the
   orderers' rule from protocol version 2: an id is never given to another organisation, whose
   CA would inherit the removed one's key grants and history; :func:`retire_removed`);
3. ``rxchain --as ORG:admin config sign FILE`` -- each admin reviews what it changes (printed:
   every field that differs, however deep, certificates as their SHA-256) and the signatures so
   far (each checked as the orderers check it) and adds its organisation's signature: under the
   file's lock (``.FILE.lock`` beside it; FILE_BUSY after :data:`LOCK_WAIT_S`), the file read
   again, signatures other admins added meanwhile kept, FILE_CHANGED if its config is no longer
   the one shown;
4. ``rxchain --as ORG:admin config submit FILE`` -- broadcast to the ordering service, which
   checks the signatures against the policy and the rules (``node/orderer/configtx.py``,
   ``configrules.py``: BAD_CONFIG_UPDATE with the reason otherwise); the command waits until a
   peer holds the new config in force.

The file is a serialized ``rxchain.v1.ConfigUpdate`` protobuf (``config``: the proposed
ConsortiumConfig as it will be signed, byte for byte; ``signatures``: one
``ConfigSignature`` per admin so far), nothing else: it carries no secret, and a signature
covers exactly the config bytes every other admin signs. ``sign`` and ``submit`` refuse a
file whose config is not the successor of the config in force (STALE_CONFIG_UPDATE: another
update went in first -- propose again; ALREADY_IN_FORCE: this one did), a config of another
consortium, files that do not parse, config bytes other than ``propose`` writes (fields this
release does not know: signed, never shown), a revoked serial number the nodes would skip
(:func:`check_revoked_serials`, which ``propose`` applies too) and signatures that do not hold
(BAD_CONFIG_UPDATE); ``sign`` refuses a second
signature of the same organisation (ALREADY_SIGNED), anyone but an admin (WRONG_ROLE) and a
signature past the ``MAX_SIGNERS`` organisations a policy check counts (TOO_MANY_SIGNATURES:
in a consortium of more organisations, one more signature would make the orderers refuse the
update, whoever signed).
"""

from __future__ import annotations

import base64
import contextlib
import errno
import fcntl
import hashlib
import json
import logging
import os
import re
import secrets
import stat
import tempfile
import time
from collections.abc import Callable, Generator, Iterator, Sequence
from pathlib import Path
from typing import Any

import grpc
from cryptography import x509
from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization
from google.protobuf import json_format
from google.protobuf.message import DecodeError
from rxchain.v1 import block_pb2, config_pb2, identity_pb2, services_pb2, services_pb2_grpc, transaction_pb2

from client.errors import CommitUnknown, RxClientError
from client.gateway import OUTCOME_UNKNOWN_REASONS, rpc_error
from client.wallet import WalletIdentity
from node.crypto.canonical import block_data_hash, block_header_hash, compute_tx_id
from node.crypto.signing import Purpose, Verifier, block_signers
from node.crypto.tls import secure_channel
from node.errors import RxError
from node.fsutil import fsync_dir, replace_file
from node.genesis import config_from_genesis
from node.identity.msp import MSP, canonical_serial
from node.identity.policy import MAX_SIGNERS
from node.orderer.configrules import check_retired_org_ids
from node.orderer.configtx import MAX_CONFIG_SIGNATURES, ConfigTracker, OrdererConfig, tx_type
from node.protocol import PROTOCOL_UNSUPPORTED, protocol_version, unsupported

MAX_UPDATE_BYTES = 4 << 20  # a proposal file read at most (a config of thousands of members)
WAIT_S = 30.0  # submit waits at most this long for a peer to hold the new config
DELIVER_TIMEOUT_S = 300.0  # the whole chain streamed once to verify it (ledger verify's walk)
CHAIN_STATE = "config-chain.json"  # in the home directory: the prefix of the chain verified (ChainConfig)
LOCK_WAIT_S = 5.0  # propose/sign wait at most this long for another config command's hold on a file
# the reason a config command and a session (client.follow) give when a peer's chain, verified from
# genesis.block, holds another block at a checkpoint of the chain this home verified (CHAIN_STATE)
CHAIN_RESTARTED = "CHAIN_RESTARTED"
STATE_FORMAT = 1  # of CHAIN_STATE: a later one is a newer release's (PROTOCOL_UNSUPPORTED, never dropped)
MAX_RECORDS_KEYS_KEPT = 32  # records certificates' keys remembered per organisation (ChainConfig.records_keys)
# in the home directory, beside CHAIN_STATE but never removed with it: the CA certificates a config
# chain this home verified rotated away from (:func:`read_denylist`); a node whose organisation's
# CA in force is one of them is refused CA_ROTATED_AWAY
CA_DENYLIST = "rotated-cas.json"
CA_ROTATED_AWAY = "CA_ROTATED_AWAY"
DENYLIST_FORMAT = 1
MAX_DENYLIST_BYTES = 1 << 20
# the CAs the denylist names at most: a save that would pass it (or MAX_DENYLIST_BYTES) is refused
# DENYLIST_FULL and adds nothing (the CAs put back in force are dropped; ChainConfig.save saves the
# chain all the same) -- before, it grew past the size it is read to and every session and follow of
# the home was refused BAD_CONFIG ("damaged or edited"); entries are never dropped to make room (the
# oldest may be the leaked key the list exists for)
MAX_DENYLIST_ENTRIES = 4096
DENYLIST_FULL = "DENYLIST_FULL"

_log = logging.getLogger(__name__)
_HEX64 = re.compile(r"[0-9a-f]{64}")  # a key's SHA-256 as records_key_fingerprint writes it


def _not_newer(path: Path) -> str:
    """The remedy for a config-chain.json this release cannot read that no newer release wrote (a
    damaged or edited file, only ever a cache): remove it, and the chain is verified again."""
    return (f"if no newer release wrote it (the file was damaged or edited), remove {path}: the next "
            "session or config command verifies the config chain from genesis.block again")


def records_key_fingerprint(cert_der: bytes) -> str | None:
    """SHA-256 (hex) of the public key (SubjectPublicKeyInfo DER) of the certificate ``cert_der``;
    None when there is none or it cannot be read."""
    if not cert_der:
        return None
    try:
        key = x509.load_der_x509_certificate(cert_der).public_key()
        spki = key.public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    except (ValueError, TypeError, UnsupportedAlgorithm):
        return None
    return hashlib.sha256(spki).hexdigest()


def ca_fingerprint(der: bytes) -> str:
    """SHA-256 (hex) of a CA certificate's DER: how the denylist (:data:`CA_DENYLIST`) names it."""
    return hashlib.sha256(der).hexdigest()


def rotated_away(old: config_pb2.ConsortiumConfig, new: config_pb2.ConsortiumConfig) -> dict[str, str]:
    """{fingerprint: organisation} of every CA certificate of ``old`` that no organisation of
    ``new`` holds: rotated away from (or its organisation removed)."""
    kept = {ca_fingerprint(o.ca_cert_der) for o in new.organizations if o.ca_cert_der}
    return {ca_fingerprint(o.ca_cert_der): o.id for o in old.organizations
            if o.ca_cert_der and ca_fingerprint(o.ca_cert_der) not in kept}


def read_denylist(path: Path, genesis_hash: bytes) -> dict[str, str]:
    """{fingerprint: organisation} of the CA certificates the denylist at ``path`` (JSON:
    ``{"format": 1, "genesis": HEX, "rotated_away": [{"org": ID, "ca_sha256": HEX}, ...]}``) names
    for the genesis block whose header hash is ``genesis_hash`` ({} when there is none, or it is
    another genesis block's). It is the one record of a rotation that outlasts the removal of
    config-chain.json (the remedy for CHAIN_RESTARTED), so it fails closed: IO_ERROR when it is
    there but cannot be read, BAD_CONFIG when it does not parse (edited or damaged: repair or,
    deliberately, remove it), PROTOCOL_UNSUPPORTED for a later format."""
    try:
        with open(path, "rb") as f:
            raw = f.read(MAX_DENYLIST_BYTES + 1)
    except (FileNotFoundError, NotADirectoryError):
        return {}
    except OSError as exc:
        raise RxClientError("IO_ERROR", f"cannot read {path}: {exc.strerror or exc} (the CAs rotated away "
                            "from cannot be known: nothing was sent)") from exc
    bad = RxClientError("BAD_CONFIG", f"{path} is not a denylist of rotated-away CAs this release writes "
                        "(damaged or edited): repair it or, once you are sure no CA it names is a leaked one, "
                        "remove it")
    try:
        if len(raw) > MAX_DENYLIST_BYTES:
            raise ValueError("too large")
        state = json.loads(raw)
        fmt = state["format"]
        if type(fmt) is int and fmt > DENYLIST_FORMAT:
            raise RxClientError(PROTOCOL_UNSUPPORTED, f"{path} was written by a newer release (format {fmt}; "
                                f"this one reads {DENYLIST_FORMAT}): install a release that reads it")
        if fmt != DENYLIST_FORMAT or not isinstance(state["rotated_away"], list):
            raise ValueError("format")
        if bytes.fromhex(state["genesis"]) != genesis_hash:
            return {}
        out: dict[str, str] = {}
        for entry in state["rotated_away"]:
            fp, org = entry["ca_sha256"], entry["org"]
            if not (isinstance(fp, str) and _HEX64.fullmatch(fp) and isinstance(org, str)):
                raise ValueError("entry")
            out[fp] = org
    except RxClientError:
        raise
    except Exception as exc:  # (any malformed content: fail closed)
        raise bad from exc
    return out


def _denylist_raw(genesis_hash: bytes, entries: dict[str, str]) -> bytes:
    """The denylist naming ``entries`` ({fingerprint: organisation}) as it is written (and bounded)."""
    return json.dumps({"format": DENYLIST_FORMAT, "genesis": genesis_hash.hex(),
                       "rotated_away": [{"org": org, "ca_sha256": fp} for fp, org in entries.items()]},
                      indent=1).encode()


def denylist_fill(path: Path, genesis_hash: bytes, rotated: dict[str, str],
                  org_ids: Sequence[str] = (), reinstated: frozenset[str] = frozenset()) -> dict[str, Any]:
    """How full the denylist at ``path`` is, for an operator (``config show``): ``entries`` (the CAs it
    names for this genesis block) and ``bytes`` (its size as written; 0 when it names none) against
    ``max_entries`` and ``max_bytes``; ``not_denied``: the CAs of ``rotated`` ({fingerprint:
    organisation}: those a verified config chain rotated away from) it does not name, denied by
    nothing once config-chain.json is removed; ``full`` when it cannot take them -- or, all named,
    one CA more (of the longest id of ``org_ids``, the organisations in force: an id is never reused,
    so one the file names for an organisation removed, or a name edited in, is no next CA's) -- as
    :func:`add_to_denylist` refuses a save DENYLIST_FULL (which logs ``ca_denylist_full``), counting
    without the CAs of ``reinstated`` (put back in force: a save drops them); ``warning`` saying
    either. A file that cannot be read: ``error`` and ``message`` instead (every session of the home
    refuses it so too)."""
    out: dict[str, Any] = {"file": str(path)}
    try:
        held = read_denylist(path, genesis_hash)
    except RxClientError as exc:
        return {**out, "error": exc.reason, "message": exc.message}
    missing = {fp: org for fp, org in sorted(rotated.items()) if fp not in held}
    # what add_to_denylist would write: the CAs put back in force dropped (a save whose write was
    # skipped -- the state's lock busy, another process's save -- left them there)
    after = {fp: org for fp, org in {**held, **missing}.items() if fp not in reinstated}
    if not missing:  # all named: one CA more, of an organisation in force (org_ids; else those named)
        after["f" * 64] = max([*org_ids] or [*held.values(), ""], key=len)
    full = len(after) > MAX_DENYLIST_ENTRIES or len(_denylist_raw(genesis_hash, after)) > MAX_DENYLIST_BYTES
    out.update(entries=len(held), max_entries=MAX_DENYLIST_ENTRIES,
               bytes=len(_denylist_raw(genesis_hash, held)) if held else 0, max_bytes=MAX_DENYLIST_BYTES,
               full=full, not_denied=[{"org": org, "ca_sha256": fp} for fp, org in missing.items()])
    if full:
        what = f"the {len(missing)} CA(s) the verified config chain rotated away from that it lacks " \
               "(denied by nothing once config-chain.json is removed)" if missing else "one CA more"
        out["warning"] = (f"{DENYLIST_FULL}: it cannot take {what}; entries are never dropped to make room: "
                          "remove those the consortium confirms can no longer sign")
    elif missing:
        out["warning"] = (f"{len(missing)} CA(s) the verified config chain rotated away from are not in it yet "
                          "(denied by nothing once config-chain.json is removed): the next save of the chain "
                          "adds them")
    return out


def add_to_denylist(path: Path, genesis_hash: bytes, entries: dict[str, str],
                    reinstated: frozenset[str] = frozenset()) -> None:
    """Add ``entries`` ({fingerprint: organisation}) to the denylist at ``path`` (:func:`read_denylist`),
    and drop those of ``reinstated`` (CAs a config block of a verified chain put in force again
    after it rotated away from them: never the genesis config's, which the remedy for
    CHAIN_RESTARTED returns to), under its lock (``.rotated-cas.json.lock``), atomically (a
    temporary file fsynced, renamed over it, the directory fsynced). Nothing is written when it
    holds them already. OSError / RxClientError when it cannot be read or written; DENYLIST_FULL
    (nothing added: only the CAs of ``reinstated`` dropped) when it would name more than
    :data:`MAX_DENYLIST_ENTRIES` CAs or pass :data:`MAX_DENYLIST_BYTES`."""
    def same(held: dict[str, str]) -> bool:
        return all(fp in held for fp in entries) and not any(fp in held for fp in reinstated)

    if same(read_denylist(path, genesis_hash)):
        return  # (the common case, without the lock)
    with locked(path, wait_s=1.0):
        held = read_denylist(path, genesis_hash)
        if same(held):
            return
        merged = {**held, **{fp: org for fp, org in entries.items() if fp not in held}}
        merged = {fp: org for fp, org in merged.items() if fp not in reinstated}
        raw = _denylist_raw(genesis_hash, merged)
        if len(merged) > MAX_DENYLIST_ENTRIES or len(raw) > MAX_DENYLIST_BYTES:
            added = sum(1 for fp in entries if fp not in held)
            # the CAs put back in force are dropped all the same (only a shrink is written): kept, the
            # CA in force stayed denied and every session of the home refused its peer CA_ROTATED_AWAY
            kept = {fp: org for fp, org in held.items() if fp not in reinstated}
            dropped = len(held) - len(kept)
            if dropped:
                replace_file(path, _denylist_raw(genesis_hash, kept))
                fsync_dir(path.parent if str(path.parent) else Path("."))
            raise RxClientError(DENYLIST_FULL, f"{path} would name {len(merged)} CAs rotated away from "
                                f"({len(raw)} bytes; at most {MAX_DENYLIST_ENTRIES} CAs, {MAX_DENYLIST_BYTES} "
                                f"bytes): none of the {added} more the config chain rotated away from was "
                                f"added ({dropped} put back in force dropped), so they are not denied once "
                                "config-chain.json is removed. Entries are never dropped to make room; an "
                                "operator who has confirmed with the consortium that CAs it names can no "
                                "longer sign (expired, their keys destroyed) removes them from the file")
        replace_file(path, raw)
        fsync_dir(path.parent if str(path.parent) else Path("."))


def _stream(identity: WalletIdentity, target: str, start: int, stop: int,
            timeout: float = DELIVER_TIMEOUT_S) -> Generator[block_pb2.Block, None, None]:
    """Blocks ``start``..``stop`` of the peer at ``target``, as it streams them."""
    channel = secure_channel(target, identity.cert_path, identity.key_path, identity.ca_bundle_path)
    try:
        stub = services_pb2_grpc.PeerDeliverStub(channel)
        req = services_pb2.DeliverRequest(start_block=start, stop_block=stop, follow=False)
        for msg in stub.Deliver(req, timeout=timeout):
            if msg.WhichOneof("kind") != "block":
                break
            yield msg.block
    except grpc.RpcError as exc:
        raise rpc_error(exc) from exc
    finally:
        channel.close()


def _height(identity: WalletIdentity, target: str) -> int:
    channel = secure_channel(target, identity.cert_path, identity.key_path, identity.ca_bundle_path)
    try:
        res = services_pb2_grpc.AdminStub(channel).Status(services_pb2.StatusRequest(), timeout=5.0)
        return int(res.height)
    except grpc.RpcError as exc:
        raise rpc_error(exc) from exc
    finally:
        channel.close()


class ChainConfig:
    """The config in force as a peer's chain shows it, verified from the local genesis block on --
    never the peer's word alone.

    ``last_config_block`` (the pointer to the block holding the config in force) and the
    validation codes are block metadata outside the header the orderers sign: a hostile or
    broken peer could name an older config block (its config still recorded VALID), mark a
    refused update VALID, or serve a block it made up (the client checked no signature), and the
    admin would review, sign and diff against that. So every block is checked as ``ledger
    verify`` checks it -- numbered in turn, block 0 the local ``genesis.block`` (header hash),
    ``previous_hash`` linking, ``data_hash`` over its envelopes, a signature over the header hash
    by an orderer of the config in force before it -- and every config transaction is judged
    by the orderers' own rule (:meth:`ConfigTracker.block_config`: header, creator, timestamp,
    ``validate_update`` against the config before it: sequence + 1, the ``config_update``
    policy's admin signatures). The config in force is the last one that rule adopts; the
    peer's pointer and its validation code for that block must agree (LEDGER_INVALID
    otherwise, nothing read from that peer is used). A peer can still withhold its newest
    blocks (a stale view: nothing signed tells a client the chain's height): then the admin
    works on an older config the orderers will not take -- they refuse any update whose
    sequence is not the one in force + 1 (STALE_CONFIG_UPDATE).

    Blocks are fed in order and never twice: :func:`config_in_force` asks a peer only for the
    blocks past those verified (``submit``'s wait polls cheaply). With ``state_path`` (the CLI:
    ``CHAIN_STATE`` in the home directory) the verified prefix outlasts the command -- its
    height, last header hash and the config in force, saved as it grows --
    and the next command verifies only the blocks past it: streaming and verifying the whole
    chain for every config command grew with the ledger without bound (every block's
    envelopes, one ECDSA verification each) and, once it took longer than
    :data:`DELIVER_TIMEOUT_S`, no config command could run at all. A saved state is a cache
    of what was verified, never trusted over a peer: one that does not parse, is of another
    genesis block, or that the peer's chain does not extend (fewer blocks, the next block not
    linking: a network started again from the same genesis) is dropped and the chain
    verified from the genesis block again (:func:`config_in_force`); the file is replaced only
    by a chain verified further than it (:meth:`restart`: it is also what sessions pin their
    peer's CA by). A network started again from the same genesis block with that home: remove
    ``CHAIN_STATE``."""

    def __init__(self, genesis: block_pb2.Block, verifier: Verifier, state_path: Path | None = None) -> None:
        self._genesis = genesis
        self._verifier = verifier
        self._genesis_hash = block_header_hash(genesis.header)
        self._state_path = state_path
        self.resumed = False  # the blocks verified are a saved state no peer answer confirmed yet
        self._saved = 0
        self._floor = 0  # the height of a saved state dropped: only a longer verified chain replaces it
        # (number, header hash) of blocks a chain verified before must hold here (restart's
        # ``expect``), and the first number where the chain verified since holds another one
        self._expect: dict[int, bytes] = {}
        self.diverged: int | None = None
        # why the state at ``state_path``, which is there, could not be read (an OSError: EMFILE,
        # EACCES, EIO); None when it was read or is absent. Such a state is none to resume -- and
        # :meth:`save` never writes over it -- but it is no file removed either: a session does
        # not fall back to the genesis CAs for it (client.session._verified)
        self.unreadable: str | None = None
        # a state was read from (or saved at) ``state_path``: once it is gone there -- removed by
        # the operator, the remedy for CHAIN_RESTARTED -- this chain is not saved back (:meth:`save`)
        self._held_file = False
        self.restart()
        if state_path is not None:
            self._resume(state_path)

    def restart(self, expect: list[tuple[int, bytes]] | None = None) -> None:
        """Forget every block verified: verify from the genesis block again. A state saved
        stays saved until a chain verified further replaces it (:meth:`save`): sessions pin their
        peer's CA from it (``client.session.verified_network``), and a peer behind it, or one
        serving a block that does not link, would otherwise roll it back to an older
        configuration -- a CA the consortium rotated away from. ``expect``: the checkpoints
        (:meth:`checkpoints`) of the chain dropped; a block verified now at one of those numbers
        with another header hash sets :attr:`diverged` (another chain from the same genesis
        block), and nothing is saved from then on."""
        self._expect = dict(expect or ())
        self.diverged = None
        self._floor = max(self._floor, self._saved)
        config = config_from_genesis(self._genesis)
        self._tracker = ConfigTracker(OrdererConfig(config, MSP(config, self._verifier), 0), self._verifier)
        self.height = 0  # blocks verified
        self._last_hash = b""
        self._config_hash = self._genesis_hash  # the header hash of the block holding the config in force
        self._pointer = 0  # last_config_block of the last block verified, as the peer sent it
        self._codes: list[int] = []  # the validation codes the peer sent for the config block in force
        self._saved = 0  # the height of the state saved or resumed
        self.resumed = False
        # {org: SHA-256 (hex) of the public key of each records certificate the chain verified put
        # in force, oldest first}: the keys a wallet may still hold after rotations (client.session)
        self.records_keys: dict[str, list[str]] = {}
        self._note_records_keys(config)
        # {fingerprint: organisation} of the CA certificates the chain verified put out of force (a
        # rotation, an organisation removed), and the fingerprints of those a config block of it put
        # (back) in force since: saved to the denylist (CA_DENYLIST) with the chain
        self.rotated_away: dict[str, str] = {}
        self.reinstated: set[str] = set()

    def _note_records_keys(self, config: config_pb2.ConsortiumConfig) -> None:
        """Add the records certificates' keys of ``config`` to :attr:`records_keys`."""
        for org in config.organizations:
            fingerprint = records_key_fingerprint(org.records_cert_der)
            seen = self.records_keys.setdefault(org.id, [])
            if fingerprint is not None and fingerprint not in seen:
                seen.append(fingerprint)
                del seen[:-MAX_RECORDS_KEYS_KEPT]

    def mark(self) -> tuple[Any, ...]:
        """What :meth:`rollback` returns to: the blocks verified so far (``client.follow`` feeds an
        orderer's blocks, then takes them only once a majority of the orderers confirm the last)."""
        return (self._tracker.current, self.height, self._last_hash, self._config_hash, self._pointer,
                list(self._codes), self.diverged, self.resumed,
                {org: list(keys) for org, keys in self.records_keys.items()}, dict(self.rotated_away),
                set(self.reinstated))

    def rollback(self, mark: tuple[Any, ...]) -> None:
        """Forget the blocks verified since :meth:`mark` returned ``mark``."""
        (current, self.height, self._last_hash, self._config_hash, self._pointer, self._codes,
         self.diverged, self.resumed, self.records_keys, self.rotated_away, self.reinstated) = mark
        self.rotated_away, self.reinstated = dict(self.rotated_away), set(self.reinstated)
        self._tracker = ConfigTracker(current, self._verifier)

    @property
    def last_hash(self) -> bytes:
        """The header hash of the last block verified (b"" before any)."""
        return self._last_hash

    def _resume(self, path: Path) -> None:
        """Take up the state saved at ``path`` (nothing when absent or unusable: from genesis;
        :attr:`unreadable` says why when it is there but could not be read). PROTOCOL_UNSUPPORTED
        when it is this genesis block's state saved by a newer release (a later ``format``, or a
        config of a protocol version this release lacks that it cannot build an MSP from): taken
        for a torn file, the chain it verified was silently dropped for the genesis CAs (perhaps
        rotated away from)."""
        try:
            with open(path, "rb") as f:
                raw = f.read(4 * MAX_UPDATE_BYTES)
        except (FileNotFoundError, NotADirectoryError):
            return
        except OSError as exc:
            self.unreadable = f"cannot read {path}: {exc.strerror or exc}"
            return
        try:
            state = json.loads(raw)  # (the config in force, base64)
            if not isinstance(state, dict) or bytes.fromhex(state["genesis"]) != self._genesis_hash:
                return  # (torn; or another network's)
            fmt = state.get("format")
            if type(fmt) is int and fmt > STATE_FORMAT:
                newer = f"{path} was saved by a newer release (format {fmt}; this one reads {STATE_FORMAT})"
            elif fmt != STATE_FORMAT:
                return
            else:
                newer = ""
        except Exception:  # noqa: BLE001 - a cache: torn -- verify again
            return
        if newer:
            raise RxClientError(PROTOCOL_UNSUPPORTED, f"{newer}: install a release that reads it; "
                                + _not_newer(path) + "; nothing was changed (the chain it verified is not "
                                "dropped for the genesis CAs)")
        try:
            height, number, pointer = state["height"], state["block"], state["pointer"]
            codes = state["codes"]
            if not (type(height) is int and type(number) is int and type(pointer) is int
                    and 0 <= number == pointer < height and isinstance(codes, list)
                    and all(type(c) is int for c in codes)):
                return
            config = config_pb2.ConsortiumConfig.FromString(base64.b64decode(state["config"], validate=True))
            last_hash = bytes.fromhex(state["last_hash"])
            config_hash = bytes.fromhex(state.get("config_hash", ""))  # (b"": a state saved before it was)
        except Exception:  # noqa: BLE001 - a cache: torn -- verify again
            return
        try:
            tracker = ConfigTracker(OrdererConfig(config, MSP(config, self._verifier), number), self._verifier)
        except Exception as exc:
            why = unsupported(config)
            if why is None:  # (a config of a version this release runs that no MSP takes: torn or edited)
                return
            # a newer release's: taken for a torn file, the chain it verified was silently dropped for
            # the genesis CAs (perhaps rotated away from because a key leaked)
            raise RxClientError(PROTOCOL_UNSUPPORTED, f"{path}: the config chain it holds ends in a config "
                                f"this release cannot read ({exc}): {why}; " + _not_newer(path)
                                + "; nothing was changed") from exc
        history = state.get("records_keys", {})
        if isinstance(history, dict):  # (optional: a state saved before it was kept)
            for org, keys in history.items():
                if isinstance(org, str) and isinstance(keys, list):
                    kept = list(dict.fromkeys(k for k in keys if isinstance(k, str) and _HEX64.fullmatch(k)))
                    merged = [k for k in self.records_keys.get(org, []) if k not in kept] + kept
                    # (as many as kept when noted: the file is a cache anyone with the home can edit)
                    self.records_keys[org] = merged[-MAX_RECORDS_KEYS_KEPT:]
        self._note_records_keys(config)
        # (the CAs of the genesis config it no longer holds: a state saved before the denylist was
        # kept names no other, and the remedy for CHAIN_RESTARTED returns to exactly these)
        self.rotated_away = rotated_away(config_from_genesis(self._genesis), config)
        self._tracker, self.height, self._last_hash = tracker, height, last_hash
        self._config_hash = config_hash if number else self._genesis_hash
        self._pointer, self._codes, self._saved, self.resumed = pointer, list(codes), height, True
        self._held_file = True
        # (a state saved before the denylist was kept: its CAs denied now, before the file can be
        # removed) -- under the state's lock, and only while the state is still the one read here: a
        # process that read it just before another saved a longer chain putting one of these CAs
        # back in force (a rotation back: dropped from the denylist by that save) wrote it back,
        # and nothing took it out again -- the CA in force refused CA_ROTATED_AWAY for good
        with contextlib.suppress(OSError, RxClientError):
            if self.rotated_away and not set(self.rotated_away) <= set(read_denylist(
                    path.parent / CA_DENYLIST, self._genesis_hash)):
                with locked(path, wait_s=1.0):
                    if saved_height(path, self._genesis_hash) == height:
                        self.save_denylist()

    def save_denylist(self) -> None:
        """Add the CAs :attr:`rotated_away` names to the denylist beside the state
        (:data:`CA_DENYLIST`, :func:`add_to_denylist`); OSError / RxClientError when it cannot."""
        if self._state_path is not None and (self.rotated_away or self.reinstated):
            add_to_denylist(self._state_path.parent / CA_DENYLIST, self._genesis_hash, self.rotated_away,
                            frozenset(self.reinstated))

    def denylist_fill(self, org_ids: Sequence[str] = ()) -> dict[str, Any] | None:
        """:func:`denylist_fill` of the denylist beside the state, against the CAs the chain verified
        rotated away from (None without a state path: no denylist is kept)."""
        if self._state_path is None:
            return None
        return denylist_fill(self._state_path.parent / CA_DENYLIST, self._genesis_hash, self.rotated_away, org_ids,
                             frozenset(self.reinstated))

    def save(self) -> None:
        """Save the verified prefix at ``state_path`` (atomically; a failure only costs the next
        command a longer verification). Every block of it was verified as :meth:`feed` verifies
        them, so a prefix a stream cut short is saved too: what :meth:`in_force` checks (the
        pointer, the codes of the config block in force) is checked on the blocks fed last.

        Never a rollback: nothing is saved while the peer's pointer disagrees with the config
        verified (:meth:`_resume` would drop that state, and the sessions pinning by it fall
        back to the genesis CAs), nor over a state another process saved meanwhile that is at
        least as long (sessions now extend the state too: ``client.follow``), nor over one it
        cannot read now (:func:`saved_height`), nor once the state this chain was resumed from
        (or saved as) is gone -- an operator removed it, the remedy for CHAIN_RESTARTED: written
        back, the old chain was pinned again without a word -- under the state's lock
        (``.config-chain.json.lock``), skipped when another process holds it."""
        if self._state_path is None or self.height <= max(self._saved, self._floor) or self.diverged is not None:
            return
        current = self._tracker.current
        if self._pointer != current.block_number:
            return
        state = {"format": STATE_FORMAT, "genesis": self._genesis_hash.hex(), "height": self.height,
                 "last_hash": self._last_hash.hex(), "block": current.block_number, "pointer": self._pointer,
                 "codes": self._codes, "config_hash": self._config_hash.hex(), "records_keys": self.records_keys,
                 "config": base64.b64encode(current.config.SerializeToString(deterministic=True)).decode()}
        with contextlib.suppress(OSError, RxClientError), locked(self._state_path, wait_s=1.0):
            saved = saved_height(self._state_path, self._genesis_hash)
            if saved >= self.height or (self._held_file and not saved):
                return  # (as long a chain saved meanwhile; or the file this chain came from is gone)
            # the denylist first: a chain saved without it, once removed (the remedy for
            # CHAIN_RESTARTED), left no trace of the CAs it rotated away from
            try:
                self.save_denylist()
            except RxClientError as exc:
                if exc.reason != DENYLIST_FULL:
                    raise
                # (the one failure here an operator must act on) the chain is saved all the same:
                # left unsaved (review19), every session of the home started after pinned the CA it
                # rotated away from -- the denylist, full, denies it in neither case once the file is
                # removed, and the chain saved still pins the CA in force
                _log.warning("event=ca_denylist_full reason=%s height=%d detail=%s: the verified config "
                             "chain is saved, the CAs it rotated away from are not added to the denylist",
                             exc.reason, self.height, exc.message[:500])
            replace_file(self._state_path, json.dumps(state).encode())
            self._saved, self._held_file = self.height, True

    def checkpoints(self) -> list[tuple[int, bytes]]:
        """(number, header hash) of blocks verified past the genesis block that a peer's chain must
        hold to extend this one: the block holding the config in force (when known) and the last
        block verified."""
        out: list[tuple[int, bytes]] = []
        number = self._tracker.current.block_number
        if number > 0 and self._config_hash:
            out.append((number, self._config_hash))
        if self.height > 1 and self.height - 1 != number:
            out.append((self.height - 1, self._last_hash))
        return out

    def peer_metadata(self, block: block_pb2.Block) -> None:
        """Take the metadata nobody signs -- the validation codes of the config block in force, the
        ``last_config_block`` pointer of the last block verified -- from ``block``, when it is one
        of those blocks (number and header hash), as the peer now asked serves it: :meth:`in_force`
        judges a peer by its own word (``client.follow`` asks several peers in turn: one whose
        metadata lied kept it with the blocks it served, and the next peer, honest and at the
        same height, was refused for it)."""
        n, h = block.header.number, block_header_hash(block.header)
        if n and n == self._tracker.current.block_number and h == self._config_hash:
            self._codes = list(block.metadata.validation_codes)
        if n == self.height - 1 and h == self._last_hash:
            self._pointer = block.metadata.last_config_block

    def feed(self, block: block_pb2.Block) -> None:
        """Verify the next block and adopt the config it carries, if it is a valid config block
        (LEDGER_INVALID naming the block otherwise; PROTOCOL_UNSUPPORTED for a config transaction,
        or a block failing a check, after a config raising the protocol version beyond this
        release: not judged)."""
        n = block.header.number
        if n != self.height:
            raise RxClientError("LEDGER_INVALID", f"the peer sent block {n} where block {self.height} was due")
        h = block_header_hash(block.header)
        if n == 0:
            if h != self._genesis_hash:
                raise RxClientError("LEDGER_INVALID", "the peer's block 0 is not the local genesis.block "
                                    "(another network?)")
        else:
            current = self._tracker.current
            why = unsupported(current.config)
            # past a config raising the protocol version beyond this release, blocks may be hashed or
            # signed by rules it lacks: a check failing there is PROTOCOL_UNSUPPORTED (upgrade), as
            # ledger verify says -- not LEDGER_INVALID ("ask another peer": every peer holds it so)
            bad = "LEDGER_INVALID" if why is None else PROTOCOL_UNSUPPORTED
            beyond = "" if why is None else (f" (blocks past block {current.block_number} follow rules this "
                                             f"release lacks: {why})")
            if block.header.previous_hash != self._last_hash:
                raise RxClientError(bad, f"block {n}: previous_hash does not link to block {n - 1}{beyond}")
            if block.header.data_hash != block_data_hash(list(block.data.envelopes)):
                raise RxClientError(bad, f"block {n}: data_hash does not match its envelopes{beyond}")
            if not self._orderer_signed(block, current.msp, h):
                raise RxClientError(bad, f"block {n}: no valid signature of an orderer of the config in force "
                                    f"(sequence {current.config.sequence}, block {current.block_number}){beyond}")
            if why is not None and any(tx_type(raw) == transaction_pb2.CONFIG for raw in block.data.envelopes):
                raise RxClientError(PROTOCOL_UNSUPPORTED, f"block {n}: a config transaction past block "
                                    f"{current.block_number}, whose config this release cannot judge: {why}")
            new = self._tracker.block_config(block)
            if new is not None:
                gone = rotated_away(current.config, new)
                back = set(rotated_away(new, current.config))  # (in force now, not before)
                self.rotated_away = {fp: org for fp, org in self.rotated_away.items() if fp not in back}
                self.rotated_away.update(gone)
                self.reinstated = (self.reinstated | back) - set(gone)
                self._tracker.adopt(new, n)
                self._note_records_keys(new)
                self._codes = list(block.metadata.validation_codes)
                self._config_hash = h
        self._last_hash = h
        self._pointer = block.metadata.last_config_block
        self.height = n + 1
        if self.diverged is None and self._expect.get(n, h) != h:
            self.diverged = n

    def verified(self) -> tuple[int, config_pb2.ConsortiumConfig]:
        """(the block holding it, the config in force) after the blocks fed or the state resumed --
        the genesis config before any -- without asking a peer (:meth:`in_force` also holds the
        peer's pointer and validation codes to it)."""
        current = self._tracker.current
        return current.block_number, current.config

    def ends_with(self, block: block_pb2.Block) -> bool:
        """Whether ``block`` is the last block verified (number and header hash)."""
        return block.header.number == self.height - 1 and block_header_hash(block.header) == self._last_hash

    def _orderer_signed(self, block: block_pb2.Block, msp: MSP, header_hash: bytes) -> bool:
        """Whether an orderer of the config whose MSP is ``msp`` signed ``header_hash`` (as the
        peers judge it: from protocol version 2 with a certificate valid at the block's time)."""
        certs = msp.block_signers(block.header.timestamp_ms)
        return block_signers(self._verifier, header_hash, block.metadata.orderer_signatures, certs) > 0

    def in_force(self, ordered: bool = False, save: bool = True) -> tuple[int, config_pb2.ConsortiumConfig]:
        """(the block holding it, the config in force) after the blocks fed; LEDGER_INVALID when the
        peer's pointer or validation code says otherwise. ``ordered``: the blocks came from an
        orderer (``client.follow``), whose blocks carry no validation codes (peers write them): the
        config transaction in force is the one the orderers' own rule adopted here
        (:meth:`ConfigTracker.block_config`), which is all a peer's VALID code for it says -- it is
        held (and saved) as VALID. ``save``: False checks without saving (the caller saves once the
        blocks are confirmed: ``client.follow`` asks the other orderers)."""
        current = self._tracker.current
        number = current.block_number
        if self.height < 1:
            raise RxClientError("SERVICE_UNAVAILABLE", "the peer holds no block yet")
        if self._pointer != number:
            raise RxClientError("LEDGER_INVALID", f"the peer's block {self.height - 1} names block {self._pointer} "
                                f"as holding the config in force; its chain shows block {number} (sequence "
                                f"{current.config.sequence}): ask another peer (--peer)")
        if ordered and number:
            self._codes = [transaction_pb2.VALID]
        if number and self._codes != [transaction_pb2.VALID]:
            # (a CONFIG transaction the validation refused never goes in force: a peer naming one is wrong)
            raise RxClientError("LEDGER_INVALID", f"block {number} holds the config in force (sequence "
                                f"{current.config.sequence}), the peer recorded it {self._codes}, not VALID: ask "
                                "another peer (--peer)")
        self.resumed = False
        if save:
            self.save()
        return number, current.config


def saved_height(path: Path, genesis_hash: bytes) -> int:
    """The height of the config chain state saved at ``path`` for the genesis block whose header
    hash is ``genesis_hash`` (0 when there is none, or it is torn or another network's); OSError
    when it is there but cannot be read now (EMFILE, EACCES, EIO: :meth:`ChainConfig.save` then
    writes nothing -- a longer chain there would be replaced by a shorter one)."""
    try:
        with open(path, "rb") as f:
            raw = f.read(4 * MAX_UPDATE_BYTES)
    except (FileNotFoundError, NotADirectoryError):
        return 0
    try:
        state = json.loads(raw)
        height = state["height"] if bytes.fromhex(state["genesis"]) == genesis_hash else 0
    except Exception:  # noqa: BLE001 - a cache: torn or of another release counts as none
        return 0
    return height if type(height) is int and height > 0 else 0


# confirm(number, header hash, the config in force before that block): ORDERERS_DISAGREE unless a
# majority of that config's orderers hold it (client.follow.orderers_confirm)
Confirm = Callable[[int, bytes, config_pb2.ConsortiumConfig], None]


def config_in_force(identity: WalletIdentity, peer_target: str, chain: ChainConfig,
                    confirm: Confirm | None = None) -> tuple[int, config_pb2.ConsortiumConfig]:
    """(the block holding it, the config in force) as the chain of the peer at ``peer_target`` shows
    it, every block verified by ``chain`` (see :class:`ChainConfig`; only the blocks past those it
    verified are streamed). A state ``chain`` resumed that this peer's chain does not extend is
    dropped, the chain verified from the genesis block (a peer behind it, a torn file) -- unless
    the peer's chain, verified so, holds another block at one of the state's checkpoints: another
    chain from the same genesis block (a network started again; or one forged with a genesis
    orderer's key the consortium has rotated away from), CHAIN_RESTARTED as a session says it
    (client.follow), nothing of it saved nor answered.

    ``confirm`` (the config commands: :func:`client.follow.orderers_confirm`): the peer's blocks
    are saved only once the orderers hold them, in segments split at config blocks, as a
    session's follow takes them (:func:`_save_confirmed`) -- an orderer signs blocks alone, and
    one compromised orderer's fork (an admin-signed update never committed) served by one peer
    was saved here: its CA pinned by every session of the home, and the CA it rotated away from,
    the genuine one, written to the denylist (:data:`CA_DENYLIST`). A config block the orderers
    do not hold is ORDERERS_DISAGREE (nothing of it saved or answered); data blocks past the
    last config block they do not hold are merely not saved."""
    try:
        return _config_in_force(identity, peer_target, chain, confirm)
    except RxClientError as exc:
        if not chain.resumed or exc.reason not in ("LEDGER_INVALID", "SERVICE_UNAVAILABLE"):
            raise
        chain.restart(chain.checkpoints())
    try:
        found = _config_in_force(identity, peer_target, chain, confirm)
    except RxClientError:
        if chain.diverged is None:
            raise
    else:
        if chain.diverged is None:
            return found
    raise RxClientError(CHAIN_RESTARTED, f"the peer's chain, verified from genesis.block, holds another "
                            f"block {chain.diverged} than the config chain this home verified "
                            f"({CHAIN_STATE}): the network was started again from the same genesis block "
                            f"(once the consortium confirms it, remove {CHAIN_STATE}), or the peer serves "
                            "a chain of its own (ask another peer: --peer)")


def _config_in_force(identity: WalletIdentity, peer_target: str, chain: ChainConfig,
                     confirm: Confirm | None = None) -> tuple[int, config_pb2.ConsortiumConfig]:
    height = _height(identity, peer_target)
    if height < 1:
        raise RxClientError("SERVICE_UNAVAILABLE", "the peer holds no block yet")
    if chain.resumed and height == chain.height:  # nothing new to link to the saved prefix: its last block
        with contextlib.closing(_stream(identity, peer_target, height - 1, height - 1)) as blocks:
            last = next(blocks, None)
        if last is None or not chain.ends_with(last):
            raise RxClientError("LEDGER_INVALID", f"the peer's block {height - 1} is not the one verified before")
    if height < chain.height:  # (a peer restarting from an older copy, or another peer)
        raise RxClientError("SERVICE_UNAVAILABLE", f"the peer holds {height} blocks, {chain.height} were "
                            "verified already: ask again")
    if height > chain.height and confirm is not None:
        return _save_confirmed(identity, peer_target, chain, height, confirm)
    if height > chain.height:
        try:
            with contextlib.closing(_stream(identity, peer_target, chain.height, height - 1)) as blocks:
                for block in blocks:
                    chain.feed(block)
                    if chain.height >= height:
                        break
        finally:  # the blocks verified are kept whatever ended the stream (DELIVER_TIMEOUT_S on a long chain)
            chain.save()
        if chain.height < height:
            raise RxClientError("SERVICE_UNAVAILABLE", f"the peer sent {chain.height} of its {height} blocks")
    return chain.in_force()


def _save_confirmed(identity: WalletIdentity, peer_target: str, chain: ChainConfig, height: int,
                    confirm: Confirm) -> tuple[int, config_pb2.ConsortiumConfig]:
    """Extend ``chain`` by the peer's blocks to ``height`` and save only what the orderers confirm
    (``confirm``): each config block by the orderers of the config in force before it, the data
    blocks past the last one by those of the config in force at the end (not saved when they do
    not hold them: the config in force is the same without them). Whatever ends the stream, the
    confirmed prefix is saved; a config block not confirmed is ORDERERS_DISAGREE. A chain
    diverged from the one verified before (:meth:`ChainConfig.restart`) is saved never, so not
    confirmed either (CHAIN_RESTARTED: :func:`config_in_force`)."""
    before = chain.height
    kept = chain.mark()  # the chain as last confirmed
    # (number, header hash, the config in force before it, the chain just after it) of each config block fed
    configs: list[tuple[int, bytes, config_pb2.ConsortiumConfig, tuple[Any, ...]]] = []
    failure: RxClientError | None = None
    try:
        with contextlib.closing(_stream(identity, peer_target, chain.height, height - 1)) as blocks:
            for block in blocks:
                in_force, config = chain.verified()
                chain.feed(block)
                if chain.verified()[0] != in_force:
                    configs.append((block.header.number, chain.last_hash, config, chain.mark()))
                if chain.height >= height:
                    break
    except RxClientError as exc:
        failure = exc
    if failure is None and chain.height < height:
        failure = RxClientError("SERVICE_UNAVAILABLE", f"the peer sent {chain.height} of its {height} blocks")
    if chain.diverged is not None:
        if failure is not None:
            raise failure
        return chain.in_force(save=False)
    end = chain.mark()
    confirmed = before - 1
    try:
        if failure is None:
            chain.in_force(save=False)  # (the peer's pointer and codes, checked before any orderer is asked)
        for number, want, config, after in configs:
            confirm(number, want, config)
            kept, confirmed = after, number
        if chain.height - 1 > confirmed:
            chain.rollback(end)
            with contextlib.suppress(RxClientError):  # (data blocks: merely not saved)
                confirm(chain.height - 1, chain.last_hash, chain.verified()[1])
                kept = end
    finally:  # (nothing unconfirmed is kept, even in memory: submit's wait asks the same chain again)
        chain.rollback(kept)
        chain.save()
    if failure is not None:
        raise failure
    return chain.in_force()


def to_json(config: config_pb2.ConsortiumConfig) -> dict[str, Any]:
    """The config as JSON (protobuf field names; certificates and keys base64)."""
    out: dict[str, Any] = json_format.MessageToDict(config, preserving_proto_field_name=True)
    return out


def from_json(raw: Any) -> config_pb2.ConsortiumConfig:
    """A config from :func:`to_json`'s form; BAD_CONFIG_UPDATE for anything else."""
    try:
        return json_format.ParseDict(raw, config_pb2.ConsortiumConfig())
    except (json_format.ParseError, TypeError, ValueError, AttributeError) as exc:
        raise RxClientError("BAD_CONFIG_UPDATE", f"not a ConsortiumConfig: {exc}") from exc


def read_config_json(path: Path) -> config_pb2.ConsortiumConfig:
    """The config of ``propose --from-json``: a ConsortiumConfig in :func:`to_json`'s form, or the
    whole ``config show --json`` document (its ``config``). BAD_CONFIG_UPDATE for a file larger
    than a proposal file may be, that is no such JSON, or a show document whose top-level
    ``protocol_version`` was edited to differ from its config's (only the ``config`` object is
    proposed: that edit would be dropped without a word)."""
    try:
        with open(path, "rb") as f:
            data = f.read(MAX_UPDATE_BYTES * 2 + 1)  # (JSON: base64 certificates, names quoted)
    except OSError as exc:
        raise RxClientError("BAD_CONFIG_UPDATE", f"{path}: {exc.strerror}") from exc
    if len(data) > MAX_UPDATE_BYTES * 2:
        raise RxClientError("BAD_CONFIG_UPDATE", f"{path} is larger than {MAX_UPDATE_BYTES * 2} bytes")
    try:
        raw = json.loads(data.decode("utf-8"))
    except ValueError as exc:
        raise RxClientError("BAD_CONFIG_UPDATE", f"{path}: {exc}") from exc
    if isinstance(raw, dict) and "config" in raw:
        config = from_json(raw["config"])
        shown = raw.get("protocol_version")
        if shown is not None and shown != protocol_version(config):
            raise RxClientError("BAD_CONFIG_UPDATE", f"{path}: protocol_version {shown!r} at the top level, "
                                f"{protocol_version(config)} in config: only config is proposed -- edit "
                                "config.protocol_version, or use --protocol-version")
        return config
    return from_json(raw)


def summary(config: config_pb2.ConsortiumConfig) -> dict[str, Any]:
    """The config without certificates: organisations (and the ids retired), nodes, batch, limits,
    policies."""
    whole = to_json(config)
    return {
        "organizations": [f"{o.id} ({config_pb2.OrgKind.Name(o.kind).lower()}) {o.name}" for o in config.organizations],
        "retired_org_ids": list(config.retired_org_ids),
        "orderers": [f"{o.get('name', '')} {o.get('org', '')} {o.get('host', '')}:{o.get('port', '')}"
                     for o in whole.get("orderers", [])],
        "peers": [f"{p.get('name', '')} {p.get('org', '')} {p.get('host', '')}:{p.get('port', '')}"
                  for p in whole.get("peers", [])],
        "batch": whole.get("batch", {}), "limits": whole.get("limits", {}),
        "policies": {p.name: p.rule for p in config.policies},
    }


# the field naming an entry of each list of the config (the diff pairs old and new entries by it)
_KEYS = {"organizations": "id", "orderers": "raft_id", "peers": "name", "policies": "name"}


def changes(old: config_pb2.ConsortiumConfig, new: config_pb2.ConsortiumConfig) -> list[str]:
    """Every difference of ``new`` against ``old``, one line per field that differs, however deep
    (``organizations["h01"].ca_cert_der: sha256:... -> sha256:...``, ``policies["config_update"].rule:
    ...``; an entry added is printed whole, certificates and keys as their SHA-256): what an
    admin signs is exactly what is shown (``sequence`` left out: every update raises it by one)."""
    a, b = to_json(old), to_json(new)
    a.pop("sequence", None)
    b.pop("sequence", None)
    out: list[str] = []
    _diff("", a, b, out)
    return out


def _diff(path: str, a: Any, b: Any, out: list[str]) -> None:
    if a == b:
        return
    if isinstance(a, dict) and isinstance(b, dict):
        for key in sorted(set(a) | set(b)):
            _diff(f"{path}.{key}" if path else key, a.get(key), b.get(key), out)
        return
    key = _KEYS.get(path)
    if key and isinstance(a or [], list) and isinstance(b or [], list):
        left, right = a or [], b or []
        ids_l = [x.get(key) if isinstance(x, dict) else None for x in left]
        ids_r = [x.get(key) if isinstance(x, dict) else None for x in right]
        if None not in ids_l + ids_r and len(set(ids_l)) == len(ids_l) and len(set(ids_r)) == len(ids_r):
            by_l, by_r = dict(zip(ids_l, left, strict=True)), dict(zip(ids_r, right, strict=True))
            for k in ids_l:
                if k not in by_r:
                    out.append(f"{path}[{json.dumps(k)}]: removed {_shown(by_l[k])}")
            for k in ids_r:
                if k in by_l:
                    _diff(f"{path}[{json.dumps(k)}]", by_l[k], by_r[k], out)
                else:
                    out.append(f"{path}[{json.dumps(k)}]: added {_shown(by_r[k])}")
            kept_l, kept_r = [k for k in ids_l if k in by_r], [k for k in ids_r if k in by_l]
            if kept_l != kept_r:
                out.append(f"{path}: order {json.dumps(kept_l)} -> {json.dumps(kept_r)}")
            return
    if isinstance(a, list) and isinstance(b, list) and len(a) == len(b) and a and all(
            isinstance(x, dict) for x in a + b):
        for i, (x, y) in enumerate(zip(a, b, strict=True)):
            _diff(f"{path}[{i}]", x, y, out)
        return
    leaf = path.rsplit(".", 1)[-1]
    out.append(f"{path}: {_shown(a, leaf)} -> {_shown(b, leaf)}")


def _shown(v: Any, key: str = "") -> str:
    """``v`` as JSON, certificates and keys (base64 ``*_der`` fields) as their SHA-256."""
    return json.dumps(_fingerprinted(v, key), sort_keys=True)


def _fingerprinted(v: Any, key: str = "") -> Any:
    if isinstance(v, dict):
        return {k: _fingerprinted(x, k) for k, x in v.items()}
    if isinstance(v, list):
        return [_fingerprinted(x, key) for x in v]
    if key.endswith("_der") and isinstance(v, str):
        return "sha256:" + hashlib.sha256(base64.b64decode(v)).hexdigest()
    return v


def propose(current: config_pb2.ConsortiumConfig, edit: Callable[[config_pb2.ConsortiumConfig], None],
            ) -> config_pb2.ConfigUpdate:
    """An unsigned update: ``current`` with ``edit`` applied, ``sequence`` + 1, the id of every
    organisation it removes retired (:func:`retire_removed`)."""
    new = config_pb2.ConsortiumConfig()
    new.CopyFrom(current)
    edit(new)
    retire_removed(current, new)
    check_revoked_serials(current, new)
    if new.consortium_id != current.consortium_id:
        raise RxClientError("BAD_CONFIG_UPDATE", f"consortium id {new.consortium_id!r} is not "
                            f"{current.consortium_id!r}")
    if protocol_version(new) < protocol_version(current):
        raise RxClientError("BAD_CONFIG_UPDATE", f"protocol version {protocol_version(new)} is below "
                            f"{protocol_version(current)}: it is never lowered")
    if protocol_version(new) == protocol_version(current):
        new.protocol_version = current.protocol_version  # unset and 1 are the same version
    new.sequence = current.sequence + 1
    if new == _with_sequence(current, new.sequence):
        raise RxClientError("BAD_CONFIG_UPDATE", "the proposal changes nothing")
    return config_pb2.ConfigUpdate(config=new.SerializeToString(deterministic=True))


def retire_removed(current: config_pb2.ConsortiumConfig, new: config_pb2.ConsortiumConfig) -> None:
    """List in ``new.retired_org_ids`` every id ``current`` lists there (an edit dropping one is
    undone: the list never shrinks) and the id of every organisation of ``current`` that ``new``
    removes, in that order after the ids ``new`` lists already; then BAD_CONFIG_UPDATE if ``new``
    breaks the retired-id rule of the orderers (node.orderer.configrules.check_retired_org_ids:
    an organisation added under a retired id, an organisation kept listed). The orderers apply
    it from protocol version 2; the tool under every version, so that ids removed before the
    version is raised are retired too."""
    listed = list(dict.fromkeys(new.retired_org_ids))
    kept = {o.id for o in new.organizations}
    for org_id in [*current.retired_org_ids, *(o.id for o in current.organizations if o.id not in kept)]:
        if org_id not in listed:
            listed.append(org_id)
    if listed != list(new.retired_org_ids):
        del new.retired_org_ids[:]
        new.retired_org_ids.extend(listed)
    try:
        check_retired_org_ids(current, new)
    except RxError as exc:
        raise RxClientError("BAD_CONFIG_UPDATE", exc.message) from exc


def check_revoked_serials(current: config_pb2.ConsortiumConfig, new: config_pb2.ConsortiumConfig) -> None:
    """BAD_CONFIG_UPDATE for an entry ``new`` adds to an organisation's ``revoked_serials`` that
    is no hex serial number. The nodes read each entry as one (node.identity.msp.canonical_serial:
    case, a ``0x`` prefix, ``:`` and spaces do not matter) and skip any other -- such as
    ``serial=0F4B...``, the line ``openssl x509 -serial -noout`` prints -- so that entry would
    revoke nothing, with every admin's signature on it. Entries the config in force holds already
    are left alone (whatever went in before is no reason to refuse the next update)."""
    held = {o.id: set(o.revoked_serials) for o in current.organizations}
    for org in new.organizations:
        for entry in org.revoked_serials:
            if entry not in held.get(org.id, set()) and not canonical_serial(entry):
                raise RxClientError("BAD_CONFIG_UPDATE", f"organizations[{org.id!r}].revoked_serials: {entry!r} is "
                                    "no hex serial number, so it would revoke nothing: list the hex digits alone "
                                    "(`openssl x509 -serial -noout` prints serial=HEX)")


def _with_sequence(config: config_pb2.ConsortiumConfig, sequence: int) -> config_pb2.ConsortiumConfig:
    out = config_pb2.ConsortiumConfig()
    out.CopyFrom(config)
    out.sequence = sequence
    return out


def read_update(path: Path) -> tuple[config_pb2.ConfigUpdate, config_pb2.ConsortiumConfig]:
    """The update in ``path`` and the config it proposes; BAD_CONFIG_UPDATE if it does not parse."""
    try:
        with open(path, "rb") as f:
            data = f.read(MAX_UPDATE_BYTES + 1)
    except OSError as exc:
        raise RxClientError("BAD_CONFIG_UPDATE", f"{path}: {exc.strerror}") from exc
    if len(data) > MAX_UPDATE_BYTES:
        raise RxClientError("BAD_CONFIG_UPDATE", f"{path} is larger than {MAX_UPDATE_BYTES} bytes")
    try:
        update = config_pb2.ConfigUpdate.FromString(data)
        config = config_pb2.ConsortiumConfig.FromString(update.config)
        for sig in update.signatures:
            identity_pb2.Identity.FromString(sig.signer)
    except DecodeError as exc:
        raise RxClientError("BAD_CONFIG_UPDATE", f"{path} is not a config update file: {exc}") from exc
    if not update.config:
        raise RxClientError("BAD_CONFIG_UPDATE", f"{path} proposes no config")
    known = config_pb2.ConsortiumConfig()
    known.CopyFrom(config)
    known.DiscardUnknownFields()
    if known.SerializeToString(deterministic=True) != update.config:
        # What is shown (the parsed fields) must be all that is signed: fields this release does not
        # know (a later release's orderers would read them) or an encoding other than propose's would
        # be signed without ever being shown.
        raise RxClientError("BAD_CONFIG_UPDATE", f"{path}: the proposed config holds fields this release "
                            "does not know or is not encoded as propose writes it; only such a file is signed")
    return update, config


@contextlib.contextmanager
def locked(path: Path, wait_s: float | None = None, sleep: Callable[[float], None] = time.sleep,
           clock: Callable[[], float] = time.monotonic) -> Iterator[None]:
    """Hold the exclusive lock of proposal file ``path`` (``flock`` on ``.NAME.lock`` beside it: the
    file itself is replaced by a rename, a lock on it would be on the inode replaced; released by
    the kernel if this process dies; left in place -- removing it would let a waiter lock a file
    no longer there). FILE_BUSY when another config command holds it for more than ``wait_s``."""
    directory = path.parent if str(path.parent) else Path(".")
    lock = directory / f".{path.name}.lock"
    flags = os.O_CLOEXEC | os.O_NOFOLLOW
    try:  # (read-only is enough to flock: another admin's account may not write a lock file we made)
        try:
            fd = os.open(lock, flags | os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o644)
        except FileExistsError:
            try:  # read-write where we may: NFS emulates flock with POSIX locks, whose write lock needs it
                fd = os.open(lock, flags | os.O_RDWR)
            except PermissionError:
                fd = os.open(lock, flags | os.O_RDONLY)
        else:
            # 0644 whatever the umask, as write_update's file: an admin's umask 077 made it 0600,
            # and every other admin's account could no longer open it to sign (IO_ERROR); best effort
            # (a file system without modes refuses it: its lock still works for this account)
            with contextlib.suppress(OSError):
                os.fchmod(fd, 0o644)
    except OSError as exc:
        raise RxClientError("IO_ERROR", f"cannot lock {path}: {exc.strerror} ({lock})") from exc
    wait_s = LOCK_WAIT_S if wait_s is None else wait_s
    try:
        deadline = clock() + wait_s
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if clock() >= deadline:
                    raise RxClientError("FILE_BUSY", f"{path} is being written by another config command "
                                        f"(it holds {lock} for more than {wait_s:g} s): run this one again "
                                        "once it is done") from None
                sleep(0.05)
            except OSError as exc:  # (a file system without locks, a read-only lock on NFS: EBADF, ENOLCK)
                raise RxClientError("IO_ERROR", f"cannot lock {path}: {exc.strerror} ({lock})") from exc
        yield
    finally:
        os.close(fd)


def write_update(path: Path, update: config_pb2.ConfigUpdate, *, replace: bool = True,
                 unchanged: os.stat_result | None = None) -> None:
    """Atomically and durably write ``update`` to ``path`` (mode: the file's it replaces, else 0644 --
    not the 0600 of a temporary file, which would lock the next admin's account out of a shared
    directory's proposal once one admin signed it). ``replace=False``: FILE_EXISTS when ``path``
    exists, also one that appears meanwhile (the complete file is hard-linked in, never
    renamed over another) -- a proposal other admins signed is never overwritten unasked.
    ``unchanged``: FILE_CHANGED unless ``path`` is still that file (inode, size, mtime) just
    before it is replaced."""
    directory = path.parent if str(path.parent) else Path(".")
    if not replace and os.path.lexists(path):
        raise RxClientError("FILE_EXISTS", f"{path} exists (a proposal other admins may have signed): "
                            "choose another file, or --force to replace it")
    try:
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=directory)
    except OSError as exc:  # (its directory missing or not writable): the file named, not the temporary one
        raise RxClientError("IO_ERROR", f"cannot write {path}: {exc.strerror}") from exc
    try:
        try:  # the file travels between admins and holds no secret: signing keeps who may read it
            mode = stat.S_IMODE(os.stat(path).st_mode)
        except OSError:
            mode = 0o644
        os.chmod(tmp, mode)
        with os.fdopen(fd, "wb") as f:
            f.write(update.SerializeToString())
            f.flush()
            os.fsync(f.fileno())
        if unchanged is not None and not _same_file(path, unchanged):
            raise RxClientError("FILE_CHANGED", f"{path} was replaced while it was being signed (by a writer "
                                "that does not take its lock): run config sign again")
        if replace:
            os.replace(tmp, path)
        else:
            _link_new(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    fsync_dir(directory)


def _link_new(tmp: str, path: Path) -> None:
    """Make ``tmp`` appear as ``path`` unless ``path`` exists (FILE_EXISTS), then drop ``tmp``."""
    try:
        os.link(tmp, path)
    except FileExistsError as exc:
        raise RxClientError("FILE_EXISTS", f"{path} was created meanwhile: not replaced") from exc
    except OSError as exc:
        if exc.errno not in (errno.EPERM, errno.EOPNOTSUPP, errno.ENOTSUP, errno.EMLINK):
            raise
        # a file system without hard links: checked under the lock (every config command takes it)
        if os.path.lexists(path):
            raise RxClientError("FILE_EXISTS", f"{path} was created meanwhile: not replaced") from None
        os.replace(tmp, path)
        return
    os.unlink(tmp)


def create_update(path: Path, update: config_pb2.ConfigUpdate, force: bool = False) -> None:
    """``propose``'s write: ``update`` as the new file ``path`` under its lock (FILE_EXISTS when it
    exists and not ``force``; FILE_BUSY while another admin signs it)."""
    with locked(path):
        write_update(path, update, replace=force)


def sign_file(path: Path, shown: config_pb2.ConfigUpdate, identity: WalletIdentity,
              current: config_pb2.ConsortiumConfig, verifier: Verifier,
              now_ms: int) -> tuple[config_pb2.ConfigUpdate, list[str]]:
    """``sign``'s write: under the file's lock, read ``path`` again, add the caller's signature
    (:func:`add_signature`: every signature checked again) and replace the file atomically;
    (the update written, the organisations signed).

    ``shown`` is the update read before (its changes are what the admin is shown): config bytes
    that differ now are FILE_CHANGED -- never sign what was not shown. Signatures added meanwhile
    by other admins (each signing under this lock) are kept, so two admins signing at once both
    count; the same organisation's is ALREADY_SIGNED. A file replaced by a writer that does not
    take the lock (a copy, an editor) between this read and the rename is FILE_CHANGED too."""
    with locked(path):
        try:
            before = os.stat(path)
        except OSError as exc:
            raise RxClientError("FILE_CHANGED", f"{path}: {exc.strerror} (moved or removed since it was read)") from exc
        update, _ = read_update(path)
        if update.config != shown.config:
            raise RxClientError("FILE_CHANGED", f"{path} proposes another config than the one read (and shown) "
                                "a moment ago -- replaced meanwhile: run config sign again to review it")
        signed, orgs = add_signature(update, identity, current, verifier, now_ms)
        write_update(path, signed, unchanged=before)
    return signed, orgs


def _same_file(path: Path, seen: os.stat_result) -> bool:
    try:
        now = os.stat(path)
    except OSError:
        return False
    return (now.st_dev, now.st_ino, now.st_size, now.st_mtime_ns) == (
        seen.st_dev, seen.st_ino, seen.st_size, seen.st_mtime_ns)


def check_successor(current: config_pb2.ConsortiumConfig, proposed: config_pb2.ConsortiumConfig) -> None:
    """The proposal must follow the config in force (same consortium, sequence + 1)."""
    if proposed.consortium_id != current.consortium_id:
        raise RxClientError("BAD_CONFIG_UPDATE", f"the proposal is for consortium {proposed.consortium_id!r}, "
                            f"this network runs {current.consortium_id!r}")
    if proposed == current:
        raise RxClientError("ALREADY_IN_FORCE", f"this update (sequence {proposed.sequence}) is the config in force")
    if proposed.sequence > current.sequence + 1:
        raise RxClientError("STALE_CONFIG_UPDATE", f"the proposal has sequence {proposed.sequence}, the peer's "
                            f"config in force {current.sequence}: the peer lags behind (ask another with "
                            "--peer) or the proposal was made on another network")
    if proposed.sequence != current.sequence + 1:
        raise RxClientError("STALE_CONFIG_UPDATE", f"the proposal has sequence {proposed.sequence}, the config in "
                            f"force {current.sequence}: another update went in first -- propose again")
    check_revoked_serials(current, proposed)


def check_signatures(update: config_pb2.ConfigUpdate, current: config_pb2.ConsortiumConfig, verifier: Verifier,
                     now_ms: int) -> list[str]:
    """The organisations whose admins signed ``update``, each signature checked as the orderers
    check it (the signer's certificate valid under the config in force, its signature over the
    config bytes); BAD_CONFIG_UPDATE naming the first that is not -- ``signed_by`` is never just
    what a file claims (an admin deciding whether to sign may count on it), and one bad
    signature makes the orderers refuse the whole update. An organisation signed twice (a file
    edited: :func:`sign` adds one per organisation) would be counted twice by whoever reads
    ``signed_by``, and more signatures than the orderers take (MAX_CONFIG_SIGNATURES) make
    them refuse the update whoever signs it: both refused here too, as are more than
    ``MAX_SIGNERS`` organisations (a policy check counts at most that many distinct signers:
    one more makes any policy fail)."""
    if len(update.signatures) > MAX_CONFIG_SIGNATURES:
        raise RxClientError("BAD_CONFIG_UPDATE", f"{len(update.signatures)} signatures: the orderers take at "
                            f"most {MAX_CONFIG_SIGNATURES}")
    msp = MSP(current, verifier)
    orgs: list[str] = []
    for i, sig in enumerate(update.signatures):
        ident = identity_pb2.Identity.FromString(sig.signer)
        try:
            principal = msp.verify(ident, sig.signature, Purpose.CONFIG, update.config, now_ms)
        except RxError as exc:
            raise RxClientError("BAD_CONFIG_UPDATE", f"signature {i + 1} (claiming {ident.org!r}) does not hold "
                                f"under the config in force: {exc.message}") from exc
        if principal.role != "admin":
            raise RxClientError("BAD_CONFIG_UPDATE", f"signature {i + 1} is by {principal.org}:{principal.role}, "
                                "no admin")
        if principal.org in orgs:
            raise RxClientError("BAD_CONFIG_UPDATE", f"signature {i + 1}: {principal.org} has signed this "
                                f"update already (signature {orgs.index(principal.org) + 1})")
        orgs.append(principal.org)
    if len(orgs) > MAX_SIGNERS:
        raise RxClientError("BAD_CONFIG_UPDATE", f"{len(orgs)} organisations signed: the orderers count at most "
                            f"{MAX_SIGNERS} signers and refuse an update signed by more, whoever they are")
    return orgs


def sign(update: config_pb2.ConfigUpdate, identity: WalletIdentity) -> config_pb2.ConfigUpdate:
    """``update`` with the caller's admin signature added (ALREADY_SIGNED when its
    organisation signed already; WRONG_ROLE for anyone but an admin; TOO_MANY_SIGNATURES when
    ``MAX_SIGNERS`` organisations have signed: one more would make the orderers refuse it)."""
    if identity.role != "admin":
        raise RxClientError("WRONG_ROLE", f"{identity.label} is no admin: only admins sign config updates")
    for sig in update.signatures:
        if identity_pb2.Identity.FromString(sig.signer).org == identity.org:
            raise RxClientError("ALREADY_SIGNED", f"{identity.org} has signed this update already")
    if len(update.signatures) >= MAX_SIGNERS:
        # the config_update policy never needs more (node.orderer.configrules), and the
        # orderers' policy check fails with more distinct signers than that, whoever they are
        raise RxClientError("TOO_MANY_SIGNATURES", f"{len(update.signatures)} organisations have signed this "
                            f"update: the orderers count at most {MAX_SIGNERS} signers and refuse it with one "
                            "more -- submit it as it is")
    out = config_pb2.ConfigUpdate()
    out.CopyFrom(update)
    out.signatures.add(signer=identity.identity.SerializeToString(),
                       signature=identity.signer.sign(Purpose.CONFIG, update.config))
    return out


def add_signature(update: config_pb2.ConfigUpdate, identity: WalletIdentity, current: config_pb2.ConsortiumConfig,
                  verifier: Verifier, now_ms: int) -> tuple[config_pb2.ConfigUpdate, list[str]]:
    """(``update`` signed by ``identity``, the organisations signed): :func:`sign`, with every
    signature checked as the orderers check it, the new one included -- an admin whose own
    signature would not hold under the config in force (an organisation this very update adds,
    a certificate expired or revoked) would otherwise put in the file a signature that makes
    the orderers refuse the update, whoever else signs it."""
    check_signatures(update, current, verifier, now_ms)
    signed = sign(update, identity)
    return signed, check_signatures(signed, current, verifier, now_ms)


def envelope(update: config_pb2.ConfigUpdate, identity: WalletIdentity, consortium_id: str,
             now_ms: int) -> tuple[str, bytes]:
    """(tx id, the CONFIG envelope carrying ``update``, created and signed by ``identity``)."""
    nonce = secrets.token_bytes(24)
    creator = identity.identity
    tx_id = compute_tx_id(nonce, creator)
    header = transaction_pb2.TxHeader(tx_id=tx_id, type=transaction_pb2.CONFIG, creator=creator, nonce=nonce,
                                      timestamp_ms=now_ms, consortium_id=consortium_id)
    payload = transaction_pb2.Transaction(header=header.SerializeToString(),
                                          config_update=update.SerializeToString()).SerializeToString()
    env = transaction_pb2.Envelope(payload=payload, signature=identity.signer.sign(Purpose.ENVELOPE, payload))
    return tx_id, env.SerializeToString()


def broadcast(identity: WalletIdentity, targets: list[str], raw: bytes, timeout: float = 15.0) -> str:
    """Hand ``raw`` to the first orderer that answers; its tx id once accepted (ordered: the
    orderers answer after the block holding it is committed). A refusal (BAD_CONFIG_UPDATE and
    the like) is raised with the orderer's reason and message; an orderer that cannot be reached
    or is unavailable is passed over for the next (the same envelope: one tx id, ordered once).

    An attempt that failed after the envelope may have reached the ordering service
    (SERVICE_UNAVAILABLE -- a block not committed in time --, a broken or timed-out call) leaves
    the outcome unknown: when no orderer accepts it afterwards, or one refuses it in a way the
    first one's success would explain (the sequence already taken), the answer is
    :class:`CommitUnknown` naming the tx id (exit 3, ``config show`` tells), never a refusal that
    reads as "nothing changed"."""
    tx_id = _tx_id(raw)
    lost = ""  # why an earlier attempt may have been ordered
    last: RxClientError | None = None
    for target in targets:
        channel = secure_channel(target, identity.cert_path, identity.key_path, identity.ca_bundle_path)
        try:
            stub = services_pb2_grpc.AtomicBroadcastStub(channel)
            answers = list(stub.Broadcast(iter([transaction_pb2.Envelope.FromString(raw)]), timeout=timeout))
        except grpc.RpcError as exc:
            last = rpc_error(exc)
            if last.reason in OUTCOME_UNKNOWN_REASONS:
                lost = lost or f"{target}: {last.reason}: {last.message}"
            continue
        finally:
            channel.close()
        if not answers:
            last = RxClientError("SERVICE_UNAVAILABLE", f"orderer {target} answered nothing")
            lost = lost or f"{target} answered nothing"
            continue
        res = answers[0]
        if res.accepted:
            return res.tx_id or tx_id
        if res.reason in ("SERVICE_UNAVAILABLE", "NOT_LEADER"):
            last = RxClientError(res.reason, f"{target}: {res.message}")
            if res.reason == "SERVICE_UNAVAILABLE":
                lost = lost or f"{target}: {res.reason}: {res.message}"
            continue
        refusal = RxClientError(res.reason or "BAD_CONFIG_UPDATE", res.message or "the orderer refused the update")
        if lost:
            raise CommitUnknown(tx_id, f"config update {tx_id} may have been ordered ({lost}); then {target} "
                                f"refused it: {refusal.reason}: {refusal.message}")
        raise refusal
    if lost:
        raise CommitUnknown(tx_id, f"config update {tx_id} may have been ordered: {lost}; no orderer accepted "
                            "it since (rxchain config show tells whether it is in force)")
    raise last or RxClientError("SERVICE_UNAVAILABLE", "no orderer to send the update to")


def _tx_id(raw: bytes) -> str:
    env = transaction_pb2.Envelope.FromString(raw)
    tx = transaction_pb2.Transaction.FromString(env.payload)
    return transaction_pb2.TxHeader.FromString(tx.header).tx_id


def wait_in_force(read: Callable[[], tuple[int, config_pb2.ConsortiumConfig]], sequence: int,
                  timeout_s: float = WAIT_S, sleep: Callable[[float], None] = time.sleep,
                  clock: Callable[[], float] = time.monotonic, tx_id: str = "",
                  ) -> tuple[int, config_pb2.ConsortiumConfig]:
    """Poll ``read`` until the config in force has ``sequence`` (COMMIT_UNKNOWN after ``timeout_s``,
    naming ``tx_id``: the update was ordered and may still go in -- ``config show`` tells). A peer that does not answer
    for a while (SERVICE_UNAVAILABLE: restarting; ORDERERS_DISAGREE: the orderers asked to confirm
    its blocks have not all written them yet) is asked again until then: the update was
    accepted, and failing the wait at once would read as "not submitted". Any other refusal of
    the read (a peer whose chain does not verify: LEDGER_INVALID) ends the wait at once, as
    COMMIT_UNKNOWN naming it -- the update was ordered all the same, exit 1 would say it was not."""
    deadline = clock() + timeout_s
    seen = "unknown (the peer did not answer)"
    while True:
        try:
            block, config = read()
        except RxClientError as exc:
            # (ORDERERS_DISAGREE: an orderer asked to confirm the block has not written it yet)
            if exc.reason not in ("SERVICE_UNAVAILABLE", "ORDERERS_DISAGREE"):
                raise CommitUnknown(tx_id, f"the update {tx_id} was ordered; whether it is in force, the peer read "
                                    f"cannot tell ({exc.reason}: {exc.message}): rxchain config show "
                                    "(--peer)") from exc
        else:
            if config.sequence >= sequence:
                return block, config
            seen = str(config.sequence)
        if clock() >= deadline:
            raise CommitUnknown(tx_id, f"the update {tx_id} was ordered but the config in force is still "
                                f"sequence {seen} after {timeout_s:g} s; it may yet go in (rxchain config show)")
        sleep(0.2)
