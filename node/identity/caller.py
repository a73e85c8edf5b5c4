"""The caller of an RPC, checked with the MSP.

The mTLS layer only checks that a client certificate chains to one of the consortium's CAs
(the CA bundle); it does not know about revocation lists, validity periods or roles. A
servicer that serves consortium data without a signed request (block streams, commit
statuses, node status) checks the TLS certificate with :class:`CallerCheck` first.

A stream that goes on serving (a block stream or Events following new blocks) checks its
caller again before each item (:meth:`CallerCheck.check`; :func:`while_admitted` for
PeerDeliver and Events, the orderer's Deliver in ``frames_from``): a config update revoking the
caller's certificate or removing its organisation, or the certificate's expiry, ends the
stream with that reason at the next item, as it would refuse the stream opened then.
Otherwise a member offboarded while following kept receiving every later block (every
patient's pseudonyms, ciphertexts and wrapped keys) for as long as its connection lived.
A call that does not wake (an idle stream, a follower waiting for a block not yet cut, a
CommitStatus wait) is checked again by its stream slot's sweeper (node.stream_caps), with the
node's :meth:`CallerCheck.check`, and ended with the reason by its handler, woken (cancelled if
it did not end it in time).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import TypeVar

import grpc
from rxchain.v1 import identity_pb2

from node.clock import wall_ms
from node.crypto.tls import peer_identity
from node.errors import RxError
from node.identity.msp import MSP, Principal

# Roles that may not stream whole blocks (peer or orderer Deliver): blocks carry every
# patient's pseudonym, ciphertexts and wrapped keys; a patient's device reads her own records
# through the contracts' queries and follows her transactions with CommitStatus and Events.
NO_BLOCK_ROLES = frozenset({"patient"})

# Roles served every transaction and contract event of every block by Gateway.Events: the
# member organisations' staff and nodes, who may stream the blocks themselves (every role
# but NO_BLOCK_ROLES). Any other role -- a patient, or a role a later release adds until it
# is listed here -- is served only the transactions its own certificate created: every
# event names a prescription id, its status and the acting organisation, and her own
# prescriptions she reads through the contracts' queries, which check she is their patient.
FULL_EVENTS_ROLES = frozenset({
    "doctor", "nurse", "pharmacist", "courier", "clerk", "admin", "auditor", "peer", "orderer", "client",
})

# Roles of the consortium's own nodes: their long-lived calls have stream slots no client
# certificate may take (node.stream_caps, node_certificates).
NODE_ROLES = frozenset({"peer", "orderer"})

_Item = TypeVar("_Item")


def caller_of(context: grpc.ServicerContext) -> identity_pb2.Identity:
    """The caller's TLS client certificate as an Identity; RxError UNKNOWN_CREATOR without one."""
    ident = peer_identity(context)
    if ident is None:
        raise RxError("UNKNOWN_CREATOR", "no client certificate",
                      grpc_code=grpc.StatusCode.PERMISSION_DENIED)
    return ident


class CallerCheck:
    """``check(context)``: the caller's principal, or an RxError with the MSP's reason
    (UNKNOWN_CREATOR, EXPIRED_CERT, REVOKED_CERT, WRONG_ROLE, UNKNOWN_ORG ...) and status
    PERMISSION_DENIED. ``msp_source`` gives the MSP of the configuration in force; a
    certificate of one of ``refused_roles`` is WRONG_ROLE."""

    def __init__(self, msp_source: Callable[[], MSP], clock_ms: Callable[[], int] = wall_ms,
                 refused_roles: frozenset[str] = frozenset()) -> None:
        self._msp = msp_source
        self._clock_ms = clock_ms
        self._refused = refused_roles

    def __call__(self, context: grpc.ServicerContext) -> Principal:
        return self.check(caller_of(context))

    def check(self, ident: identity_pb2.Identity) -> Principal:
        """The principal of ``ident`` now, with the MSP in force now (a stream re-checks its
        caller with it: a config update may have revoked the certificate, or it expired)."""
        msp = self._msp()  # may raise its own RxError (e.g. no genesis block yet)
        try:
            principal = msp.validate(ident, self._clock_ms())
        except RxError as err:
            raise RxError(err.reason, err.message, grpc.StatusCode.PERMISSION_DENIED) from None
        except ValueError as exc:  # a certificate the MSP cannot parse
            raise RxError("BAD_CERT", f"client certificate: {exc}",
                          grpc.StatusCode.PERMISSION_DENIED) from None
        if principal.role in self._refused:
            raise RxError("WRONG_ROLE", f"a {principal.role} certificate may not call this",
                          grpc.StatusCode.PERMISSION_DENIED)
        return principal


def node_certificates(msp_source: Callable[[], MSP], clock_ms: Callable[[], int] = wall_ms) -> Callable[[bytes], bool]:
    """Whether a TLS client certificate is a node's (node.stream_caps): one the configuration
    in force (``msp_source``) names as a peer's or an orderer's, admitted by its MSP now with a
    role of NODE_ROLES. The role alone would not do: an organisation's CA issues as many
    certificates of role peer as it likes, and those could take every node slot; a node not
    (yet) named by the configuration counts as a client."""

    def is_node(cert_der: bytes) -> bool:
        try:
            msp = msp_source()
            org = next((o.org for o in msp.config.orderers if o.cert_der == cert_der),
                       next((p.org for p in msp.config.peers if p.cert_der == cert_der), None))
            if org is None:
                return False
            principal = msp.validate(identity_pb2.Identity(org=org, cert_der=cert_der), clock_ms())
        except (RxError, ValueError):
            return False
        return principal.role in NODE_ROLES

    return is_node


def while_admitted(check: CallerCheck, caller: Principal, items: Iterator[_Item]) -> Iterator[_Item]:
    """``items``, with ``caller`` (a principal ``check`` returned) checked again
    (:meth:`CallerCheck.check`) before each is passed on: the stream ends with the check's
    RxError once the caller is no longer admitted (module docstring)."""
    ident = identity_pb2.Identity(org=caller.org, cert_der=caller.cert_der)
    for item in items:
        check.check(ident)
        yield item
