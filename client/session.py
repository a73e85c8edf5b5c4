"""A session: one wallet identity, the network description and a gateway to its own peer."""

from __future__ import annotations

import contextlib
import datetime as dt
import hashlib
import logging
import math
import os
import secrets
import stat
import threading
import time
from collections.abc import Callable
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from google.protobuf.message import DecodeError
from rxchain.v1 import block_pb2, config_pb2

from client import configtool
from client.errors import RxClientError, WalletError
from client.follow import FOLLOW_BUDGET_S, follow_chain, follow_current, issued_by, presented_cert
from client.formulary import Formulary
from client.gateway import EVENTS_IDLE_S, Gateway, RetryPolicy
from client.network import NetworkInfo, load_network
from client.patients import DIRECTORY_FILE, PatientDirectory
from client.records import dx_key, patient_binding, trace_key
from client.tx import Clock, wall_clock_ms
from client.wallet import WalletIdentity, load_identity, parse_as, read_wallet_file, wallet_dir
from node.crypto.canonical import block_header_hash
from node.crypto.signing import Verifier, key_matches
from node.crypto.x509 import cert_info_der
from node.errors import RxError
from node.genesis import read_genesis

LAST_BLOCK_FILE = "run/last-block"
CONFIG_TTL_MS = 60_000  # how long a session keeps its peer's configuration in force
FOLLOW_INTERVAL_S = 10.0  # a session follows the config chain (client.follow) at most once this often
PATIENT_BINDING_FILE = "patient-binding"  # in a patient's wallet: her binding, not the secret
# The proactive follow (Session(follow_every_s=)): the chain is followed before a call once the last
# successful follow of any client of the home is older than this (0: never proactively)
FOLLOW_EVERY_S = 300.0
FOLLOWED_FILE = "run/chain-followed"  # one line: the wall-clock ms the home's last successful follow ended
# one line "NOT_BEFORE_MS BACKOFF_MS": after a failed proactive follow, none before NOT_BEFORE_MS
FOLLOW_RETRY_FILE = "run/chain-follow-retry"
# Session.close() waits this long for a proactive follow under way to end, then stops it and waits
# CLOSE_FOLLOW_S more at most (its thread, a daemon, ends by itself after that)
CLOSE_GRACE_S = 3.0
CLOSE_FOLLOW_S = 2.0
FOLLOW_RETRY_FIRST_S = 10.0  # the first backoff after a failed proactive follow, doubled up to follow_every_s
# a call's reactive follow (_follow_config, _follow_denied, _follow_records) waits this long at most for
# a follow of the session under way (another call's, or the proactive one: up to FOLLOW_BUDGET_S) to end
FOLLOW_WAIT_S = 5.0
# the reason a call whose peer presents a CA the pin lacks fails with when a follow of the session
# under way did not end within FOLLOW_WAIT_S (nothing sent on this attempt; FHIR 503: retry)
FOLLOW_IN_PROGRESS = "FOLLOW_IN_PROGRESS"

_log = logging.getLogger(__name__)


def read_last_block(home: Path) -> int:
    """The last block any client of this home saw committed (-1 if none)."""
    try:
        return int((Path(home) / LAST_BLOCK_FILE).read_text().strip())
    except (OSError, ValueError):
        return -1


def record_last_block(home: Path, block: int) -> None:
    """Remember a committed block so the next client waits for its own peer to reach it.

    Best effort: it runs right after a commit, so a home where the file cannot be written (a
    read-only or foreign ``run``) must not turn the committed step into an IO_ERROR, which
    tells the caller it did not commit; the next client then just does not wait for it."""
    if block <= read_last_block(home):
        return
    _write_run_file(home, LAST_BLOCK_FILE, f"{block}\n")


def _read_run_ints(path: Path, count: int) -> list[int] | None:
    """The ``count`` non-negative integers of the one-line run file ``path``; None when it is not
    there, cannot be read now (a directory, EACCES, EIO) or holds anything else: the proactive
    follow then takes itself for due -- a run file never fails a call."""
    try:
        # (non-blocking, a regular file only: a FIFO put there must not hold the call for ever)
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
        try:
            if not stat.S_ISREG(os.fstat(fd).st_mode):
                return None
            raw = os.read(fd, 256)
        finally:
            os.close(fd)
        values = [int(v) for v in raw.decode("ascii").split()]
    except (OSError, UnicodeDecodeError, ValueError):
        return None
    if len(values) != count or any(v < 0 for v in values):
        return None
    return values


def read_chain_followed(home: Path) -> int | None:
    """When (wall-clock ms) a client of ``home`` last followed the config chain successfully
    (:data:`FOLLOWED_FILE`); None when unknown."""
    found = _read_run_ints(Path(home) / FOLLOWED_FILE, 1)
    return None if found is None else found[0]


def read_follow_retry(home: Path) -> tuple[int, int] | None:
    """(not before, in wall-clock ms; the backoff it was set with, ms) after a failed proactive
    follow (:data:`FOLLOW_RETRY_FILE`); None when there is none, or it cannot be read."""
    found = _read_run_ints(Path(home) / FOLLOW_RETRY_FILE, 2)
    return None if found is None else (found[0], found[1])


def _write_run_file(home: Path, rel: str, text: str) -> None:
    """Write ``HOME/rel`` atomically (a temporary file renamed); best effort: a ``run`` that cannot
    be written leaves the session's own timing (and a committed step committed). The temporary
    file has an unguessable name and is created, never opened: ``run`` may be shared by the home's
    accounts, and one of them could put a symlink at a name made of a pid and a thread id -- the
    write followed it and overwrote whatever file of this account it named."""
    path = Path(home) / rel
    tmp = path.with_name(f".{path.name}.{secrets.token_hex(8)}.tmp")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o644)
        try:
            os.write(fd, text.encode("ascii"))
        finally:
            os.close(fd)
        os.replace(tmp, path)
    except OSError:
        with contextlib.suppress(OSError):
            tmp.unlink(missing_ok=True)


def verified_network(home: Path, net: NetworkInfo) -> NetworkInfo:
    """``net`` with the newest configuration this home has verified: the one in force at the end of
    the config chain state the config commands and sessions save (``configtool.CHAIN_STATE``,
    written by ``configtool.ChainConfig`` only for blocks it checked from the local genesis block
    on, every config update judged by the orderers' own rules) when that state is of this genesis
    block; ``net`` itself when there is none (or it is unreadable, another network's, older than
    ``net``'s). Never a configuration a peer merely answered (``Admin.Status``): the CA a session
    pins its peer to comes from here, and a peer's own word cannot vouch for its certificate."""
    return _verified(home, net)[0]


def _verified(home: Path, net: NetworkInfo) -> tuple[NetworkInfo, int]:
    """(:func:`verified_network`, the height of the chain state it comes from: 0 for ``net``).
    IO_ERROR when the state (or genesis.block) is there but cannot be read now (EMFILE, EACCES,
    EIO): that is no file removed -- ``net``'s CAs are the genesis ones, perhaps rotated away
    from because a key leaked, and taking them for it downgraded the pin."""
    path = Path(home) / configtool.CHAIN_STATE
    try:
        st = path.stat()
    except (FileNotFoundError, NotADirectoryError):
        return net, 0
    except OSError as exc:
        raise _unreadable(f"cannot stat {path}: {exc.strerror or exc}") from exc
    if not stat.S_ISREG(st.st_mode):
        return net, 0
    try:
        genesis = read_genesis(Path(home) / "genesis.block")
        chain = configtool.ChainConfig(genesis, Verifier(max_entries=64, max_own=1), path)
    except (RxError, ValueError) as exc:
        cause = exc.__cause__
        if isinstance(cause, OSError) and not isinstance(cause, FileNotFoundError | NotADirectoryError):
            raise _unreadable(str(exc)) from exc
        return net, 0
    if chain.unreadable is not None:
        raise _unreadable(chain.unreadable)
    if not chain.resumed:
        return net, 0
    try:
        return net.with_config(chain.verified()[1]), chain.height
    except RxClientError:
        return net, 0


def _unreadable(why: str) -> RxClientError:
    return RxClientError("IO_ERROR", f"{why}: the CA to pin the peer to (the config chain this home verified, "
                         f"{configtool.CHAIN_STATE}) cannot be known; nothing was sent -- retry")


def _records_cert_key(net: NetworkInfo, org: str) -> object:
    """The public key of ``org``'s records certificate in ``net`` (None: none, unreadable, or no
    such organisation in ``net``: one added by a config update since, e.g. in the genesis one)."""
    try:
        der = net.org(org).records_cert_der
    except RxClientError:
        return None
    try:
        return x509.load_der_x509_certificate(der).public_key() if der else None
    except ValueError:
        return None


def _public_key_fingerprint(key: ec.EllipticCurvePrivateKey) -> str:
    """SHA-256 (hex) of ``key``'s public key (SubjectPublicKeyInfo DER), as
    :func:`client.configtool.records_key_fingerprint` takes it of a certificate."""
    spki = key.public_key().public_bytes(serialization.Encoding.DER,
                                         serialization.PublicFormat.SubjectPublicKeyInfo)
    return hashlib.sha256(spki).hexdigest()


def _chain_records_keys(home: Path, org: str) -> list[str]:
    """The keys (:func:`_public_key_fingerprint`) of every records certificate of ``org`` the
    config chain this home verified put in force (``ChainConfig.records_keys``); [] when it
    cannot be read."""
    try:
        genesis = read_genesis(Path(home) / "genesis.block")
        chain = configtool.ChainConfig(genesis, Verifier(max_entries=8, max_own=1), Path(home) / configtool.CHAIN_STATE)
    except (RxError, RxClientError, ValueError):
        return []
    return list(chain.records_keys.get(org, []))


Stamp = tuple[int, int, int, int]  # (size, modification time in ns, inode, status-change time in ns)
# A file's stamp whose modification or status-change time is this close to the time it is looked at
# (or past it) is "racy": a rewrite of the same size within the file system's timestamp granularity
# (1 s on ext3/HFS+/many NFS servers, 2 s on FAT; plus the kernel's coarse clock) leaves the stamp as
# it was. The content's digest is then compared too (git's racy-index rule), until the stamp is older.
RACY_S = 3.0
_fs_clock_ns: Callable[[], int] = time.time_ns  # (the clock file times are set by: the kernel's wall clock)
# A stamp is racy too for RACY_S after this session first saw it (by its own monotonic clock): a file
# system whose clock is behind this host's (an NFS server's, by more than RACY_S) gives file times that
# look old at once, and a same-size rewrite within that server's tick was missed for good (review19).
# Every write sharing a tick with the one that made the stamp is done within one tick of it -- so
# within RACY_S of the moment the stamp was first seen, after that write.
_seen_clock_ns: Callable[[], int] = time.monotonic_ns


def _stamp_of(st: os.stat_result) -> Stamp:
    return st.st_size, st.st_mtime_ns, st.st_ino, st.st_ctime_ns


def _file_stamp(path: Path) -> Stamp | None:
    """(size, modification time in ns, inode, status-change time in ns) of ``path``; None when it
    cannot be stat'ed. The status-change time cannot be set back (os.utime sets it to now): a file
    rewritten in place with its size and modification time restored (``cp -p``, ``rsync -t``,
    ``touch -r``) has another stamp."""
    try:
        return _stamp_of(path.stat())
    except OSError:
        return None


def _content_digest(path: Path) -> bytes:
    """SHA-256 of ``path``'s content (at most 16 MiB read); b"" when it cannot be read (never equal
    to a digest: the file is read again)."""
    try:
        with open(path, "rb") as f:
            return hashlib.sha256(f.read(16 << 20)).digest()
    except OSError:
        return b""


class _FileSeen:
    """A file a session reads again whenever it changed: its :func:`_file_stamp` when last read
    and, while that stamp is racy (:data:`RACY_S`: its times near the wall clock, or first seen by
    this session less than RACY_S ago), the digest of its content taken before that read.
    :meth:`look` says whether it must be read again, :meth:`seen` records the read."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.stamp: Stamp | None = None
        self.digest: bytes | None = None  # (None: the stamp was not racy)
        self.since = 0  # (_seen_clock_ns when the stamp was first seen)
        self.known = False

    def look(self, stamp: Stamp | None) -> tuple[Stamp | None, bytes | None, int] | None:
        """None when the file (now at ``stamp``) is the one last read; else what to pass to
        :meth:`seen` once it was read again (the digest is taken now, before that read: a rewrite
        after it shows as a change next time)."""
        now, mono = _fs_clock_ns(), _seen_clock_ns()
        racy = stamp is not None and max(stamp[1], stamp[3]) >= now - round(RACY_S * 1e9)
        if self.known and stamp == self.stamp:
            if self.digest is None:
                return None
            digest = _content_digest(self.path)
            if digest and digest == self.digest:
                if not racy and mono - self.since >= round(RACY_S * 1e9):
                    self.digest = None  # (a rewrite from now on has a later time: the stamp tells)
                return None
            return stamp, digest, self.since
        # (a stamp seen first now is racy for RACY_S whatever its times say: the file system's
        # clock may be behind this host's)
        return stamp, (_content_digest(self.path) if stamp is not None else None), mono

    def seen(self, found: tuple[Stamp | None, bytes | None, int]) -> None:
        self.stamp, self.digest, self.since = found
        self.known = True


class Session:
    """Everything one CLI invocation (or SDK user) needs to act as ``org:user``."""

    def __init__(self, home: Path, as_: str, *, peer_org: str | None = None,
                 clock: Clock = wall_clock_ms, retry: RetryPolicy | None = None,
                 network: NetworkInfo | None = None,
                 sleep: Callable[[float], None] = time.sleep,
                 events_idle_s: float | None = EVENTS_IDLE_S,
                 follow_every_s: float = FOLLOW_EVERY_S,
                 monotonic: Callable[[], float] = time.monotonic,
                 spawn: Callable[[Callable[[], None]], None] | None = None):
        if not (isinstance(follow_every_s, int | float) and math.isfinite(follow_every_s) and follow_every_s >= 0):
            raise RxClientError("BAD_ARGUMENTS", f"follow_every_s {follow_every_s!r} is not a number of seconds "
                                "of at least 0")
        self.home = Path(home)
        org, user = parse_as(as_)
        self.net = network or load_network(self.home)
        self.identity: WalletIdentity = load_identity(self.home, org, user)
        self._check_validity()
        # the newest configuration this home verified (None: none, the genesis one stands), the
        # height of the chain it ends and the config-chain.json it was read from (_file_stamp);
        # with the CA pin taken from it, guarded by _state_lock (_refresh, _adopt)
        self._state_lock = threading.Lock()
        self._chain_seen = _FileSeen(self.home / configtool.CHAIN_STATE)
        chain_read = self._chain_seen.look(_file_stamp(self._chain_seen.path))
        found, self._verified_height = _verified(self.home, self.net)
        if chain_read is not None:  # (always: never read before)
            self._chain_seen.seen(chain_read)
        self._verified: config_pb2.ConsortiumConfig | None = found.config if self._verified_height else None
        self._file_height = self._verified_height  # (of the chain config-chain.json held when last read)
        self._epoch = 0  # raised whenever config-chain.json went back (_refresh): a follow begun before is void
        self._records_followed: float | None = None  # when records_public_key last followed the chain
        self._check_records_key()
        endpoint = self.net.peer_of(peer_org or self._default_peer_org(org))
        self.peer_org = endpoint.org  # the organisation of the peer this session's gateway is
        self.clock = clock  # (wall-clock ms: the transactions' timestamps, and the proactive follow's timing)
        # read before the channel is made: a bad binding file (or no secret) must not leave it open
        binding = self._patient_binding() if self.identity.role == "patient" else None
        # Mutual TLS pinned to that peer: its node name and its organisation's CA only, so no
        # other member's node certificate can stand in for it (and receive transient plaintext).
        # The CA is the one in force in the newest configuration this home verified (a CA
        # rotation once a config command has verified it), else the genesis one.
        # The file is read again when it changed (a config command or another session verified
        # the chain further: a long-lived session re-pins its new calls, _server_ca), and the
        # session follows the chain itself when its peer presents a certificate of a CA the pin
        # does not hold (_follow_config).
        self._peer_name = endpoint.name
        self._pin_ca = found.ca_pem(endpoint.org)
        self._pin_fp = configtool.ca_fingerprint(found.org(endpoint.org).ca_cert_der)  # (of _pin_ca)
        # the CAs of the peer's organisation this session knows (fingerprint -> PEM): the genesis one
        # and every one it pinned -- a peer presenting a certificate of one of them the denylist
        # names is refused CA_ROTATED_AWAY (_follow_config), not merely unreachable
        self._known_cas: dict[str, bytes] = {self._pin_fp: self._pin_ca}
        with contextlib.suppress(RxClientError):
            self._known_cas.setdefault(configtool.ca_fingerprint(self.net.org(endpoint.org).ca_cert_der),
                                       self.net.ca_pem(endpoint.org))
        # the CAs rotated away from (configtool.CA_DENYLIST), read again when the file changed
        self._genesis_hash: bytes | None = None  # (read when a denylist is there)
        self._denied_seen = _FileSeen(self.home / configtool.CA_DENYLIST)
        self._denied: dict[str, str] = {}
        self._denied_followed: float | None = None  # when the session last followed past a denied pin
        self._pin_version = 0  # raised with every change of _pin_ca: the gateway never takes an older one
        self._follow_lock = threading.Lock()
        # (when, CHAIN_RESTARTED or CA_ROTATED_AWAY found)
        self._followed: tuple[float, RxClientError | None] | None = None
        # the proactive follow (_follow_proactively): its period (0: none), the monotonic clock of
        # the per-session minimum interval (FOLLOW_INTERVAL_S, shared with the reactive follows),
        # when it last ran (monotonic), the wall-clock ms before which this session knows it is not
        # due (no run file read before), and its backoff after a failure (ms; None: none failed)
        self._follow_every_ms = round(follow_every_s * 1000)
        self._monotonic = monotonic
        self._proactive_followed: float | None = None
        self._proactive_due_ms = 0
        self._proactive_retry: tuple[int, int] | None = None  # (not before, backoff): its last failure's
        # (the epoch it ran in, why its last run failed): CHAIN_RESTARTED is said by the reactive
        # follow within the interval (_follow_config)
        self._proactive_finding: tuple[int, RxClientError] | None = None
        # how a due follow is run off the call's path (default: a daemon thread; a test runs it at
        # once); one at a time (_proactive_running, under _spawn_lock); close() stops it (_closing)
        self._spawn: Callable[[Callable[[], None]], None] = spawn or self._start_thread
        self._spawn_lock = threading.Lock()
        self._proactive_running = False
        self._closing = threading.Event()
        self._follow_thread: threading.Thread | None = None
        # clear while a proactive job runs, whatever ran it (the default thread or a caller's spawn):
        # close() waits for it (bounded); the thread running it (close() from the job: not waited for)
        self._job_idle = threading.Event()
        self._job_idle.set()
        self._job_ident: int | None = None
        self.gateway = Gateway(self.identity, endpoint.target, self.net.consortium_id,
                               clock=clock, retry=retry, sleep=sleep,
                               server_name=endpoint.name, server_ca_pem=self._pin_ca,
                               min_block=lambda: read_last_block(self.home),
                               on_commit=lambda b: record_last_block(self.home, b),
                               events_idle_s=events_idle_s,
                               server_ca=self._server_ca, on_unreachable=self._follow_config)
        if binding is not None:
            self.gateway.default_transient["patient_binding"] = binding
        self._directory: PatientDirectory | None = None
        self._directory_stamp: Stamp | None = None  # patients.yaml as read (_file_stamp)
        self._current_net: tuple[NetworkInfo, int] | None = None  # (from the peer, when asked)
        self._formulary: Formulary | None = None

    def net_genesis(self) -> block_pb2.Block:
        """This home's genesis block (RxClientError when it cannot be read)."""
        try:
            return read_genesis(self.home / "genesis.block")
        except RxError as exc:
            raise RxClientError(exc.reason, exc.message) from exc

    def _refusal(self) -> RxClientError | None:
        """(under ``_state_lock``) CA_ROTATED_AWAY when the CA the peer is pinned to is one a config
        chain this home verified rotated away from (the denylist, ``configtool.CA_DENYLIST``, read
        again whenever it changed; IO_ERROR / BAD_CONFIG raised when it cannot be read: fail
        closed) -- after the remedy for CHAIN_RESTARTED (config-chain.json removed) the genesis CA
        is pinned again, perhaps the one rotated away from because its key leaked."""
        path = self.home / configtool.CA_DENYLIST
        try:
            stamp: Stamp | None = _stamp_of(path.stat())
        except (FileNotFoundError, NotADirectoryError):
            stamp = None
        except OSError as exc:  # (ELOOP, EIO: a file there that cannot be read -- taken for none, it denied nothing)
            raise RxClientError("IO_ERROR", f"cannot read {path}: {exc.strerror or exc} (the CAs rotated away "
                                "from cannot be known: nothing was sent)") from exc
        read = self._denied_seen.look(stamp)  # (None: as last read -- racy stamps: its digest too)
        if read is not None and stamp is None:
            self._denied = {}
            self._denied_seen.seen(read)
        elif read is not None:
            if self._genesis_hash is None:
                self._genesis_hash = block_header_hash(self.net_genesis().header)
            self._denied = configtool.read_denylist(path, self._genesis_hash)
            self._denied_seen.seen(read)
        if self._pin_fp not in self._denied:
            return None
        return RxClientError(configtool.CA_ROTATED_AWAY, f"the CA {self.peer_org}'s peer is pinned to "
                             f"(sha256 {self._pin_fp[:16]}...) is one a config chain this home verified rotated "
                             f"away from ({path}): nothing was sent. The session follows the chain from the other "
                             "organisations' nodes to a config putting another CA in force; if the consortium "
                             f"confirms that CA is trusted again, remove {path}")

    def _server_ca(self) -> tuple[int, bytes]:
        """(its version, the CA this session pins its peer to): the one the newest configuration
        this home verified names for the peer's organisation (:meth:`_verified_config`: read again
        whenever ``HOME/config-chain.json`` changed -- a longer chain moves the pin, one the file
        went back from is dropped: :meth:`_refresh`), else the genesis one. The version rises with
        every change of the pin, made under the session's lock: the gateway takes a pin only of a
        higher version than the one it holds, so two calls reading the pin at once never leave the
        older of two pins in place (the one that read first switching after the other). Before
        that, the chain is followed when a proactive follow is due (:meth:`_follow_proactively`)."""
        self._follow_proactively()
        with self._state_lock:
            self._refresh()
            refusal = self._refusal()
            if refusal is None:
                return self._pin_version, self._pin_ca
        self._follow_denied()
        with self._state_lock:  # (the chain followed, saved or adopted, may have moved the pin)
            self._refresh()
            refusal = self._refusal()
            if refusal is None:
                return self._pin_version, self._pin_ca
        raise refusal

    def _follow_denied(self) -> None:
        """The pin is a CA rotated away from (:meth:`_refusal`): follow the config chain from the
        other nodes (:func:`client.follow.follow_chain`, this session's own peer skipped) and take
        the chain verified (also where the home could not save it). At most once per
        :data:`FOLLOW_INTERVAL_S`; a failure leaves the refusal, as does a follow of the session under
        way that does not end within :data:`FOLLOW_WAIT_S` (the pin it may move is read again after)."""
        if not self._follow_lock.acquire(timeout=FOLLOW_WAIT_S):
            return
        with contextlib.ExitStack() as held:
            held.callback(self._follow_lock.release)
            now = self._monotonic()
            if self._denied_followed is not None and now - self._denied_followed < FOLLOW_INTERVAL_S:
                return
            if self._proactive_recent(now):
                return  # (the proactive follow ran within the interval: its chain is the one held)
            self._denied_followed = now
            with self._state_lock:
                self._refresh()
                epoch = self._epoch
            try:
                chain = follow_chain(self.home, self.net, self.identity, skip=frozenset({self._peer_name}))
            except RxClientError:
                return
            self._note_followed()
            with self._state_lock:
                self._refresh()
                if self._epoch == epoch and chain.height > self._verified_height:
                    self._adopt(chain.verified()[1], chain.height)

    def _refresh(self) -> None:
        """(under ``_state_lock``) Read ``HOME/config-chain.json`` again when it changed (its
        :func:`_file_stamp`). A longer verified chain than the one held is taken; one shorter than
        the one held stays unused (a file another process extended less far than this session's
        own follow: no rollback). A file that went back -- removed, holding a shorter chain than
        when last read, verifying nothing (torn, another genesis block's) -- is what an operator
        does (ChainConfig.save never shortens it), the remedy for CHAIN_RESTARTED above all: the
        session then holds what a new session would (:func:`_verified`: the file's chain, else the
        genesis configuration and CA), drops what it verified itself, and forgets a restart it
        found (it kept the old network's pin, and said CHAIN_RESTARTED, until restarted)."""
        read = self._chain_seen.look(_file_stamp(self._chain_seen.path))
        if read is None:
            return  # (as last read: its stamp -- and, a racy one, its content -- unchanged)
        try:
            found, height = _verified(self.home, self.net)
        except RxClientError:
            # (IO_ERROR: there, but not readable now -- EMFILE under load: no file removed, the
            # pin held stands; the stamp stays unrecorded, so the next call reads it again)
            return
        self._chain_seen.seen(read)
        if not height or height < self._file_height:
            self._epoch += 1
            self._followed = self._records_followed = self._denied_followed = None
            self._proactive_finding = None
            self._adopt(found.config if height else None, height)
        elif height >= self._verified_height:
            self._adopt(found.config, height)
        self._file_height = height

    def _adopt(self, config: config_pb2.ConsortiumConfig | None, height: int) -> None:
        """(under ``_state_lock``) Hold ``config`` (None: the genesis one) as the newest verified,
        the end of a chain of ``height`` blocks, and pin the CA it names for the peer's
        organisation (a config without it keeps the pin)."""
        self._verified, self._verified_height = config, height
        try:
            net = self.net if config is None else self.net.with_config(config)
            ca, der = net.ca_pem(self.peer_org), net.org(self.peer_org).ca_cert_der
        except RxClientError:
            return
        if ca != self._pin_ca:
            self._pin_ca, self._pin_version = ca, self._pin_version + 1
            self._pin_fp = configtool.ca_fingerprint(der)
            self._known_cas.setdefault(self._pin_fp, ca)

    def _rotated_away_cert(self, cert: bytes) -> RxClientError | None:
        """CA_ROTATED_AWAY when ``cert`` (the one the peer presents, the pin not holding its CA) is
        issued by a CA of the peer's organisation this session knows (the genesis one, any it
        pinned) that the denylist (``configtool.CA_DENYLIST``) names: the holder of a key the
        consortium rotated away from -- an impersonator, or a peer not re-issued -- is refused
        as such (nothing sent), not followed for; None otherwise (a denylist that cannot be read
        now: the follow decides, as before)."""
        with self._state_lock:
            try:
                self._refusal()  # (reads the denylist again when it changed)
            except RxClientError:
                return None
            rotated = [fp for fp, pem in self._known_cas.items() if fp in self._denied and issued_by(cert, pem)]
        if not rotated:
            return None
        return RxClientError(configtool.CA_ROTATED_AWAY, f"{self.peer_org}'s peer ({self.gateway.target}) presents "
                             f"a certificate of a CA a config chain this home verified rotated away from (sha256 "
                             f"{rotated[0][:16]}..., {self.home / configtool.CA_DENYLIST}): whoever holds that CA's "
                             "key -- an impersonator, or a peer whose certificate was not re-issued -- is not "
                             "trusted; nothing was sent. Ask the consortium, or use another peer (--peer)")

    def _note_followed(self) -> None:
        """A follow of this session succeeded: remember it for every client of the home
        (:data:`FOLLOWED_FILE`, the time now; the retry file removed) and for this session."""
        now_ms = self.clock()
        _write_run_file(self.home, FOLLOWED_FILE, f"{now_ms}\n")
        with contextlib.suppress(OSError):
            (self.home / FOLLOW_RETRY_FILE).unlink(missing_ok=True)
        self._proactive_retry = None
        if self._follow_every_ms:
            self._proactive_due_ms = now_ms + self._follow_every_ms

    def _proactive_not_before(self, now_ms: int) -> int:
        """(wall-clock ms) The earliest time the next proactive follow is due by the home's run
        files: the last successful follow plus the period, the retry file's time after a failed
        one. A file missing, unreadable or corrupt, or a time past ``now_ms`` (a clock stepped back)
        or a retry further off than a period, holds nothing back."""
        due = 0
        followed = read_chain_followed(self.home)
        if followed is not None and followed <= now_ms:
            due = followed + self._follow_every_ms
        retry = read_follow_retry(self.home)
        if retry is not None and retry[0] <= now_ms + self._follow_every_ms:
            due = max(due, retry[0])
        return due

    def _proactive_recent(self, now: float) -> bool:
        """Whether the proactive follow of this session ran within FOLLOW_INTERVAL_S and its finding
        stands: it succeeded (the chain it holds is the orderers' majority's), or found
        CHAIN_RESTARTED -- the reactive follows then follow no more. One that failed otherwise asked
        the orderers only (:func:`client.follow.follow_current`): the reactive follow still asks the
        peers (a peer serving the chain, or showing a restart, when the orderers cannot be heard)."""
        if self._proactive_followed is None or now - self._proactive_followed >= FOLLOW_INTERVAL_S:
            return False
        found = self._proactive_finding
        return found is None or found[1].reason == configtool.CHAIN_RESTARTED

    def _recently_followed(self, now: float) -> bool:
        """Whether a follow of this session (proactive or reactive) ran within FOLLOW_INTERVAL_S."""
        marks = [self._proactive_followed, self._denied_followed, self._records_followed,
                 self._followed[0] if self._followed is not None else None]
        return any(m is not None and now - m < FOLLOW_INTERVAL_S for m in marks)

    def _follow_proactively(self) -> None:
        """Start a follow of the config chain, off the call's path, when one is due
        (``follow_every_s`` since the home's last successful follow, :data:`FOLLOWED_FILE`; a failed
        one backs off, :data:`FOLLOW_RETRY_FILE`): :meth:`_proactive_job` is handed to the
        session's ``spawn`` (by default a daemon thread, at most one per session at a time) and
        the call goes on at once, pinned as before -- a follow bounded by FOLLOW_BUDGET_S held
        the call that set it off up to 45 s while the orderers were blackholed. The pin it moves
        is taken by the calls after it. A patient's session never follows (peers and orderers
        stream her no blocks); a closed one starts none."""
        if not self._follow_every_ms or self.identity.role == "patient" or self._closing.is_set():
            return
        now_ms = self.clock()
        if now_ms < self._proactive_due_ms <= now_ms + self._follow_every_ms:
            return  # (this session knows it is not due: no file read)
        # (a due time further off than a period: the clock was stepped back -- held, it kept the
        # session from following for as long as the clock went back, as a run file's time past the
        # clock would; the files are read, and a follow runs when they hold nothing back)
        not_before = self._proactive_not_before(now_ms)
        if not_before > now_ms:
            self._proactive_due_ms = not_before
            return
        if self._follow_lock.locked():
            return  # (a follow of this session is under way: no thread started to find it so)
        with self._spawn_lock:
            if self._proactive_running:
                return  # (one started and not over yet)
            self._proactive_running = True
        try:
            self._spawn(self._proactive_job)
        except Exception as exc:  # noqa: BLE001 -- (RuntimeError: no thread can be started now) fail-open
            with self._spawn_lock:
                self._proactive_running = False
            self._proactive_failed(now_ms, "INTERNAL", f"cannot start the follow: {type(exc).__name__}: {exc}")

    def _start_thread(self, job: Callable[[], None]) -> None:
        """The default ``spawn``: ``job`` on a daemon thread (:meth:`close` joins it, bounded)."""
        thread = threading.Thread(target=job, name=f"rxchain-follow-{self.identity.label}", daemon=True)
        self._follow_thread = thread
        thread.start()

    def _follow_clock(self) -> float:
        """The follow's monotonic clock: +inf once the session is closing, so the follow asks no
        node more (every call's deadline is past) and ends at its next step."""
        return math.inf if self._closing.is_set() else self._monotonic()

    def _proactive_job(self) -> None:
        """The proactive follow (:meth:`_follow_proactively` starts it): the home taken as current
        only when a majority of the orderers report its verified height, else the blocks past it
        from the orderers (:func:`client.follow.follow_current`, its FOLLOW_BUDGET_S -- a peer's
        "nothing new" no longer ends it), verified and confirmed as any follow,
        the longer chain saved and pinned -- so a CA rotated away from is denied (CA_ROTATED_AWAY)
        though the session's peer, presenting exactly the CA of its stale pin, never set off a
        reactive follow. Never twice at once in a session (the follow lock, not waited for), nor
        within FOLLOW_INTERVAL_S of another of its follows; never at once in two clients of the
        home (the lock of :data:`FOLLOWED_FILE`, not waited for). Fail-open: a follow that fails
        -- with whatever error -- is logged (``session_proactive_follow_failed``) and retried after
        a backoff (FOLLOW_RETRY_FIRST_S, doubled up to the period); nothing of it reaches a call."""
        self._job_ident = threading.get_ident()
        self._job_idle.clear()  # (before _closing is read: close() either waits for it, or it returns at once)
        try:
            if self._closing.is_set() or not self._follow_lock.acquire(blocking=False):
                return  # (closed meanwhile; a reactive follow of this session under way)
            try:
                self._follow_held()
            finally:
                self._follow_lock.release()
        except Exception as exc:  # noqa: BLE001 -- (a thread's error would only be printed; a spawn's must not reach the call)
            with contextlib.suppress(Exception):
                self._proactive_failed(self.clock(), "INTERNAL", f"{type(exc).__name__}: {exc}")
        finally:
            self._job_ident = None
            self._job_idle.set()  # (before the next job can start: it clears it again)
            with self._spawn_lock:
                self._proactive_running = False

    def _follow_held(self) -> None:
        """(under the follow lock) :meth:`_proactive_job`, once the per-session interval and the
        home's lock and timing allow it."""
        if self._recently_followed(self._monotonic()):
            return
        with contextlib.ExitStack() as held:
            path = self.home / FOLLOWED_FILE
            with contextlib.suppress(OSError):
                path.parent.mkdir(parents=True, exist_ok=True)
            try:
                held.enter_context(configtool.locked(path, wait_s=0))
            except RxClientError as exc:
                if exc.reason == "FILE_BUSY":
                    # another client of the home is following now: its outcome is the home's
                    # (run/chain-followed, or the retry file's backoff) -- this session looks again
                    # after FOLLOW_INTERVAL_S, not at each call (the FHIR gateway's sessions, one
                    # per wallet, each started a thread per request for as long as it ran: 45 s)
                    self._proactive_due_ms = self.clock() + round(FOLLOW_INTERVAL_S * 1000)
                    return
                # (IO_ERROR: a run that cannot be locked -- read-only: this session's own timing)
            now_ms = self.clock()
            not_before = self._proactive_not_before(now_ms)  # (another client may have just followed)
            if not_before > now_ms:
                self._proactive_due_ms = not_before
                return
            self._proactive_followed = self._monotonic()
            self._follow_now()

    def _follow_now(self) -> None:
        """(under the follow lock) The proactive follow itself (:meth:`_follow_proactively`)."""
        with self._state_lock:
            self._refresh()
            epoch, height, pin = self._epoch, self._verified_height, self._pin_fp
        try:
            chain = follow_current(self.home, self.net, self.identity, budget_s=FOLLOW_BUDGET_S,
                                   clock=self._follow_clock)
        except RxClientError as exc:
            if self._closing.is_set():
                return  # (cut short by close(): no failure of the nodes, no backoff for the home)
            self._proactive_finding = (epoch, exc)
            self._proactive_failed(self.clock(), exc.reason, exc.message)  # (the backoff runs from its end)
            return
        except Exception as exc:  # noqa: BLE001 -- fail-open: an error no follow reports as such (a
            # protobuf DecodeError, a node-side RxError, a bug) failed the user's call, which the
            # pin in force would have served
            if self._closing.is_set():
                return
            self._proactive_failed(self.clock(), "INTERNAL", f"{type(exc).__name__}: {exc}")
            return
        self._proactive_finding = None
        self._note_followed()
        with self._state_lock:
            self._refresh()  # (the file as saved, else ...)
            if self._epoch == epoch and chain.height > self._verified_height:
                self._adopt(chain.verified()[1], chain.height)  # ... the chain verified: a read-only home
            new_height, new_pin = self._verified_height, self._pin_fp
        if new_pin != pin:
            _log.info("event=session_proactive_repin peer=%s org=%s height=%d was_height=%d ca_sha256=%s "
                      "was_ca_sha256=%s: the proactive follow verified a longer config chain putting another "
                      "CA of the peer's organisation in force; the peer is pinned to it", self._peer_name,
                      self.peer_org, new_height, height, new_pin, pin)

    def _proactive_failed(self, now_ms: int, reason: str, message: str) -> None:
        """A proactive follow failed: back off (this session, and every client of the home through
        :data:`FOLLOW_RETRY_FILE`) FOLLOW_RETRY_FIRST_S, doubled after each failure of a streak up to
        the period -- a streak: the last failure's retry (the session's own, or the file's) came due
        within a period; an older one, a backoff from long ago, starts again at the first."""
        last = max((r for r in (self._proactive_retry, read_follow_retry(self.home)) if r is not None),
                   default=None)
        first = round(FOLLOW_RETRY_FIRST_S * 1000)
        streak = last is not None and now_ms - last[0] <= self._follow_every_ms
        backoff = min(self._follow_every_ms, max(first, last[1] * 2) if last is not None and streak else first)
        self._proactive_retry = (now_ms + backoff, backoff)
        self._proactive_due_ms = now_ms + backoff
        _write_run_file(self.home, FOLLOW_RETRY_FILE, f"{now_ms + backoff} {backoff}\n")
        _log.warning("event=session_proactive_follow_failed peer=%s org=%s reason=%s retry_s=%.1f detail=%s: the "
                     "config chain could not be followed proactively; the call goes on pinned to the CA in "
                     "force, the follow is retried after the backoff", self._peer_name, self.peer_org, reason,
                     backoff / 1000, message[:500])

    def _follow_config(self) -> bool:
        """The gateway could not reach the peer: when the peer presents a certificate of a CA the
        pin does not hold, follow the config chain (:func:`client.follow.follow_chain`: the blocks
        past the verified chain from other peers, verified, saved) and report whether that moved
        the pin (the gateway then retries at once). At most once per :data:`FOLLOW_INTERVAL_S`;
        CHAIN_RESTARTED (the network was started again from the genesis block) is raised, again
        for calls within that interval; so is CA_ROTATED_AWAY when the follow moved no pin and the
        certificate is one of a CA of the peer's organisation this session knows that the denylist
        names (:meth:`_rotated_away_cert`: a peer taken over with a key the consortium rotated away
        from, found so once a follow -- a proactive one above all -- moved the pin off it); any
        other failure leaves the gateway's own error. A follow of the session under way (the
        proactive one, or another call's: up to FOLLOW_BUDGET_S) is waited for :data:`FOLLOW_WAIT_S` at
        most: True if the pin moved meanwhile, else :data:`FOLLOW_IN_PROGRESS` is raised -- before,
        the call waited on its own path for as long as that follow took (45 s)."""
        version = self._pin_version
        if not self._follow_lock.acquire(timeout=FOLLOW_WAIT_S):
            with self._state_lock:
                self._refresh()
                if self._pin_version != version:
                    return True
            raise RxClientError(FOLLOW_IN_PROGRESS, f"{self.peer_org}'s peer ({self.gateway.target}) could not be "
                                f"reached and a follow of the config chain by this session (another call's, or "
                                f"the proactive one) did not end within {FOLLOW_WAIT_S:g} s: this attempt was not "
                                "sent; retry (the follow re-pins the session if it verifies a CA rotation)")
        with contextlib.ExitStack() as held:
            held.callback(self._follow_lock.release)
            now = self._monotonic()
            if self._followed is not None and now - self._followed[0] < FOLLOW_INTERVAL_S:
                if self._followed[1] is not None:
                    raise self._followed[1]
                return False
            self._followed = (now, None)
            with self._state_lock:
                self._refresh()
                version, before, epoch = self._pin_version, self._pin_ca, self._epoch
            cert = presented_cert(self.gateway.target, self.identity)
            if cert is None or issued_by(cert, before):
                return False  # (down, or not a matter of CAs)
            if self._proactive_recent(now):
                # (the proactive follow ran within the interval -- this call's, most often: its
                # finding stands, no second follow)
                found = self._proactive_finding
                if found is not None and found[1].reason == configtool.CHAIN_RESTARTED and found[0] == epoch:
                    self._followed = (now, found[1])
                    raise found[1]
                return self._refuse_rotated_away(now, cert)
            try:
                chain = follow_chain(self.home, self.net, self.identity, skip=frozenset({self._peer_name}))
            except RxClientError as exc:
                if exc.reason != configtool.CHAIN_RESTARTED:
                    return self._refuse_rotated_away(now, cert)
                with self._state_lock:
                    self._refresh()
                    if self._epoch != epoch:  # (the file was removed meanwhile: the finding is the old file's)
                        return self._pin_version != version
                    self._followed = (now, exc)
                raise
            self._note_followed()
            with self._state_lock:
                self._refresh()  # (the file as saved, else ...)
                if self._epoch == epoch and chain.height > self._verified_height:
                    # ... the chain verified, even where the home could not save it: a read-only home
                    self._adopt(chain.verified()[1], chain.height)
                moved = self._pin_version != version
            return moved or self._refuse_rotated_away(now, cert)

    def _refuse_rotated_away(self, now: float, cert: bytes) -> bool:
        """(under the follow lock) Raise CA_ROTATED_AWAY (:meth:`_rotated_away_cert`), and again
        for the calls within FOLLOW_INTERVAL_S, when the peer's ``cert`` is of a CA rotated away
        from; else False (the gateway's own error stands)."""
        refusal = self._rotated_away_cert(cert)
        if refusal is None:
            return False
        self._followed = (now, refusal)
        raise refusal

    def _patient_binding(self) -> str:
        """The patient's certificate binding: her wallet's ``patient-binding`` file (64 hex,
        all her device needs), else derived from the consortium secret (an HIS-side home)."""
        path = wallet_dir(self.home, self.identity.org, self.identity.user) / PATIENT_BINDING_FILE
        if not (path.exists() or path.is_symlink()):
            return patient_binding(self.net.secret, self.identity.org, self.identity.cert_name)
        text = read_wallet_file(path, "patient binding", private=True).decode("ascii", "replace").strip()
        if len(text) != 64 or any(c not in "0123456789abcdef" for c in text):
            raise WalletError("BAD_WALLET", f"{path}: not 64 lower-case hex characters")
        return text

    def _check_validity(self) -> None:
        """The wallet's certificate must be valid now (the wall clock, which the peer's TLS
        check of it reads, not the session's ``clock``): an expired or not-yet-valid one is
        refused at the handshake, which the client only sees as the peer being unreachable
        (SERVICE_UNAVAILABLE, retried, and an outcome unknown for a submit)."""
        info = cert_info_der(self.identity.identity.cert_der)
        now = wall_clock_ms()
        if not info.not_before_ms <= now <= info.not_after_ms:
            def iso(ms: int) -> str:
                return dt.datetime.fromtimestamp(ms / 1000, dt.UTC).isoformat(timespec="seconds")

            raise WalletError("EXPIRED_CERT", f"the certificate {self.identity.cert_path} of "
                              f"{self.identity.label} is valid from {iso(info.not_before_ms)} to "
                              f"{iso(info.not_after_ms)}, not now ({iso(now)}): peers refuse its "
                              f"connections; ask {self.identity.org}'s CA for a new certificate")

    def _check_records_key(self) -> None:
        """The wallet's ``org-records-key.pem`` must be the key of its organisation's records
        certificate in the newest configuration this home verified (the genesis one when it
        verified none): a stale or foreign key would make every grant to the org fail to open.
        After a rotation the old key goes into ``previous-records-keys/`` (client.wallet,
        ``rxchain wallet rotate-records-key``), where it still opens what was wrapped for the old
        certificate."""
        key = self.identity.records_key
        if key is None:
            return
        config = self._verified
        net = self.net if config is None else self.net.with_config(config)
        if not key_matches(key, _records_cert_key(net, self.identity.org)):
            # the key of a records certificate the verified chain put in force before (the genesis
            # one, or any rotated to since: ChainConfig.records_keys)
            rotated = config is not None and (
                key_matches(key, _records_cert_key(self.net, self.identity.org))
                or _public_key_fingerprint(key) in _chain_records_keys(self.home, self.identity.org))
            hint = (f" but of the one it rotated away from: `rxchain --as {self.identity.label} wallet "
                    "rotate-records-key --key NEW.pem` keeps it in previous-records-keys/ and installs the new "
                    "certificate's key as org-records-key.pem") if rotated else (
                    " (after a rotation of it, an `rxchain config show` verifies the new configuration here)")
            raise WalletError("BAD_WALLET", f"org-records-key.pem of {self.identity.label} is not the key "
                              f"of {self.identity.org}'s records certificate in force{hint}")

    def _default_peer_org(self, org: str) -> str:
        if any(p.org == org for p in self.net.peers):
            return org
        # Organisations without a peer (e.g. a second insurer) use the first insurer's peer.
        for ins in self.net.insurers():
            if any(p.org == ins for p in self.net.peers):
                return ins
        raise RxClientError("NO_PEER", f"organisation {org} runs no peer; pass --peer ORG")

    def close(self) -> None:
        """Close the gateway connection, once a proactive follow under way (:meth:`_follow_proactively`)
        is over: waited for :data:`CLOSE_GRACE_S` (a short-lived session -- an ``rxchain`` command --
        lets one that goes well end), then told to stop (its clock runs out: no node is asked past
        the call it is making) and waited for :data:`CLOSE_FOLLOW_S` more, at most. A call of it
        still under way then ends on its thread, which only saves a chain it verified. Whatever ran
        the job -- the default daemon thread or a caller's ``spawn`` (an executor): the job's own
        completion is waited for (before, only the default thread was joined, and a session closed
        under a spawned follow closed its gateway with the follow still running). A job handed to a
        ``spawn`` that has not started it yet is not waited for: started after, it finds the session
        closing and returns at once."""
        own = self._job_ident == threading.get_ident()  # (the job's own error handling closing it)
        thread = self._follow_thread
        if own or thread is threading.current_thread():
            thread = None
        if thread is not None:
            thread.join(CLOSE_GRACE_S)  # (the default thread: waited for even before its job began)
        elif not own:
            self._job_idle.wait(CLOSE_GRACE_S)
        self._closing.set()
        if not own and self._job_idle.wait(CLOSE_FOLLOW_S) and thread is not None:
            thread.join(CLOSE_FOLLOW_S)  # (its job is over: the thread ends at once)
        self.gateway.close()

    def __enter__(self) -> Session:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()

    @property
    def directory(self) -> PatientDirectory:
        """The local patient directory, read again whenever ``HOME/patients.yaml`` changed since
        it was read (its size, modification time or inode): a long-lived session -- the FHIR
        gateway keeps one per wallet for as long as it serves -- finds a patient the HIS enrolled
        after it started (it answered UNKNOWN_PATIENT until a restart) and no longer resolves
        one the HIS removed."""
        stamp = _file_stamp(self.home / DIRECTORY_FILE)
        if self._directory is None or stamp != self._directory_stamp:
            self._directory = PatientDirectory.load(self.home)
            self._directory_stamp = stamp
        return self._directory

    @property
    def formulary(self) -> Formulary:
        """The local drug catalogue (names -> national codes)."""
        if self._formulary is None:
            self._formulary = Formulary.load(self.home)
        return self._formulary

    @property
    def trace_key(self) -> str:
        """Key of the on-ledger trace-code hashes (transient input)."""
        return trace_key(self.net.secret)

    @property
    def dx_key(self) -> str:
        """Diagnosis-tag key (transient input)."""
        return dx_key(self.net.secret)

    def user_public_key(self, org: str, user: str, role: str | None = "patient") -> ec.EllipticCurvePublicKey:
        """The public key of a member's certificate (patients receive their key this way).

        The certificate must be a valid ``role`` certificate of ``org`` now (issued by its CA,
        not expired, not revoked: :meth:`NetworkInfo.recipient_key`); otherwise RxClientError
        with the MSP's reason and no key is wrapped for it."""
        path = wallet_dir(self.home, org, user) / "cert.pem"
        pem = read_wallet_file(path, f"certificate of {org}:{user}")
        try:
            der = x509.load_pem_x509_certificate(pem).public_bytes(serialization.Encoding.DER)
        except (ValueError, x509.InvalidVersion) as exc:
            raise WalletError("BAD_WALLET", f"{path}: not a PEM certificate") from exc
        return self.current_network().recipient_key(org, der, f"certificate of {org}:{user}", role=role,
                                                    at_ms=self.clock())

    def records_public_key(self, org: str) -> ec.EllipticCurvePublicKey:
        """``org``'s records certificate key, checked at the session's clock against the
        configuration the session's peer reports (its revocations count). Where this home
        verified a config chain (``config-chain.json``), the certificate is the one the newest
        configuration verified names, and one the peer reports that differs is refused
        RECORDS_CERT_UNVERIFIED (nothing is wrapped): a key is wrapped only for a records
        certificate the chain shows, never for one a peer merely answered. Before refusing, the
        session follows the chain once (:meth:`_follow_records`): a rotation committed since
        the home last verified is then verified here and taken."""
        current = self.current_network()
        sequence = 0  # (of the verified configuration last compared)
        for attempt in range(2):
            verified = self._verified_config()
            if verified is None:
                if self._chain_seen.stamp is not None:
                    # the file is there but verifies nothing (torn, edited, another network's):
                    # the peer's word would stand in for the chain this home once verified
                    raise RxClientError("RECORDS_CERT_UNVERIFIED", f"{self.home / configtool.CHAIN_STATE} "
                                        "does not verify from this home's genesis block (torn, edited, or "
                                        "another network's): no key is wrapped for a records certificate "
                                        "a peer merely reports; remove the file (or run `rxchain config "
                                        "show`, which verifies the chain again) and retry")
                return current.records_public_key(org, at_ms=self.clock())
            sequence = verified.sequence
            reported = current.org(org).records_cert_der  # (UNKNOWN_ORG: no such organisation)
            known = [o.records_cert_der for o in verified.organizations if o.id == org]
            der = known[0] if known else None  # None: added since the home verified
            if der is not None and not der:
                raise RxClientError("NO_RECORDS_CERT", f"organisation {org} has no records cert")
            if der is not None and reported == der:
                return current.recipient_key(org, der, f"records certificate of {org}", at_ms=self.clock())
            if attempt or not self._follow_records():
                break
        raise RxClientError("RECORDS_CERT_UNVERIFIED", f"the records certificate of {org} the peer's "
                            f"configuration (sequence {current.config.sequence}) names is not the one of "
                            f"the newest configuration this home verified (sequence {sequence}), "
                            "nor of one the other peers' blocks verify: an `rxchain config show` verifies "
                            "the chain further (a rotation, or the organisation added, committed since), "
                            "else ask another peer (--peer); nothing was wrapped for it")

    def _verified_config(self) -> config_pb2.ConsortiumConfig | None:
        """The newest configuration this home verified (config-chain.json), read again whenever
        the file changed (a config command, or this or another session following the chain,
        verified further) and taken only from a chain at least as long as the one held; a file that
        went back -- removed, shorter, verifying nothing: the remedy for CHAIN_RESTARTED -- puts the
        session where a new one would start (:meth:`_refresh`; as the CA pin)."""
        with self._state_lock:
            self._refresh()
            return self._verified

    def _follow_records(self) -> bool:
        """A records certificate the peer reports is not the verified one: follow the config
        chain (:func:`client.follow.follow_chain`, every block verified -- a rotation committed
        since the home last verified, e.g. no config command ran here) and report whether the
        verified chain grew. At most once per :data:`FOLLOW_INTERVAL_S`; CHAIN_RESTARTED is
        raised; any other failure (no peer serves more, none verifies) leaves the refusal, as does a
        follow of the session under way that does not end within :data:`FOLLOW_WAIT_S`. True also
        when the chain held grew while the follow lock was waited for (a follow under way -- the
        proactive one, another call's -- or a config command verified further: review19, the
        refusal stood though the rotation it waited for had just been verified)."""
        with self._state_lock:
            self._refresh()
            height = self._verified_height
        if not self._follow_lock.acquire(timeout=FOLLOW_WAIT_S):
            return self._verified_grew(height)
        with contextlib.ExitStack() as held:
            held.callback(self._follow_lock.release)
            now = self._monotonic()
            if self._records_followed is not None and now - self._records_followed < FOLLOW_INTERVAL_S:
                return self._verified_grew(height)
            if self._proactive_recent(now):
                # (the proactive follow ran within the interval: its chain is the one held)
                return self._verified_grew(height)
            self._records_followed = now
            with self._state_lock:
                self._refresh()
                epoch = self._epoch
            try:
                chain = follow_chain(self.home, self.net, self.identity)
            except RxClientError as exc:
                if exc.reason == configtool.CHAIN_RESTARTED:
                    raise
                return False
            self._note_followed()
            with self._state_lock:
                if self._epoch != epoch or chain.height <= self._verified_height:
                    return False  # (nothing new; or the file was removed meanwhile: its chain is void)
                # (taken even where the home could not save it: a read-only home)
                self._adopt(chain.verified()[1], chain.height)
                return True

    def _verified_grew(self, height: int) -> bool:
        """Whether the verified chain held is longer than ``height`` blocks now (config-chain.json
        read again when it changed)."""
        with self._state_lock:
            self._refresh()
            return self._verified_height > height

    def current_network(self) -> NetworkInfo:
        """The network description with the configuration in force at this session's own
        (pinned) peer: record keys are wrapped only for certificates that configuration
        accepts (a revocation or a rotated records certificate committed since the genesis
        counts). The peer's answer is kept CONFIG_TTL_MS (a long-lived session, e.g. the FHIR
        gateway, asks again after that); a peer that does not answer leaves the genesis
        configuration for this call only, and is asked again on the next one."""
        now = self.clock()
        if self._current_net is not None and now - self._current_net[1] < CONFIG_TTL_MS:
            return self._current_net[0]
        try:
            raw = self.gateway.status(timeout=3.0, include_config=True).config
        except RxClientError:
            raw = b""
        if not raw:
            if self._current_net is not None:
                return self._current_net[0]
            verified = self._verified_config()  # (newer than the genesis one, when there is one)
            return self.net if verified is None else self.net.with_config(verified)
        try:
            current = self.net.with_config(config_pb2.ConsortiumConfig.FromString(raw))
        except DecodeError as exc:
            raise RxClientError("BAD_PAYLOAD", f"the peer's configuration does not parse: {exc}") from exc
        self._current_net = (current, now)
        return current

    def decryption_keys(self) -> list[ec.EllipticCurvePrivateKey]:
        """Keys the caller may unwrap record keys with: its own, then its org's records key,
        then the keys of the org's earlier records certificates (previous-records-keys/)."""
        keys = [self.identity.private_key]
        if self.identity.records_key is not None:
            keys.append(self.identity.records_key)
        keys.extend(self.identity.previous_records_keys)
        return keys
