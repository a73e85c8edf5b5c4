"""AccessAudit.Query and AccessAudit.Verify: the peer's access-audit log (node.peer.audit).

Who may read it: the caller's TLS client certificate, checked with the MSP in force
(:class:`node.identity.caller.CallerCheck`: revoked, expired, unknown -> PERMISSION_DENIED with
that reason), must be an ``admin`` of the peer's own organisation or staff (``auditor`` or
``admin``) of a regulator organisation. Anyone else: PERMISSION_DENIED AUDIT_ACCESS_DENIED.
The log names which staff read which prescription: it is itself personal data.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

import grpc
from rxchain.v1 import audit_pb2, audit_pb2_grpc

from node.errors import RxError, guarded_unary
from node.identity.msp import Principal
from node.peer.audit import AUDIT_ACCESS_DENIED, AccessLog, check_query, check_verify

_log = logging.getLogger(__name__)

REGULATOR_ROLES = frozenset({"auditor", "admin"})


def may_read(principal: Principal, own_org: str) -> bool:
    """The peer organisation's admin, or a regulator's auditor or admin."""
    if principal.org == own_org and principal.role == "admin":
        return True
    return principal.org_kind == "regulator" and principal.role in REGULATOR_ROLES


class AccessAuditService(audit_pb2_grpc.AccessAuditServicer):
    """gRPC AccessAudit of one peer (module docstring)."""

    def __init__(self, own_org: str, log: AccessLog,
                 check_caller: Callable[[grpc.ServicerContext], Principal]) -> None:
        self._org = own_org
        self._log = log
        self._check_caller = check_caller

    def _admit(self, context: grpc.ServicerContext, what: str) -> Principal:
        principal = self._check_caller(context)
        if not may_read(principal, self._org):
            _log.warning("event=audit_query_refused org=%s role=%s call=%s", principal.org, principal.role, what)
            raise RxError(AUDIT_ACCESS_DENIED,
                          f"{principal.org}/{principal.role} may not read this peer's access-audit log "
                          f"(only {self._org}'s admins and regulator auditors or admins)",
                          grpc.StatusCode.PERMISSION_DENIED)
        return principal

    @guarded_unary
    def Query(self, request: audit_pb2.AuditQueryRequest,
              context: grpc.ServicerContext) -> audit_pb2.AuditQueryResponse:
        principal = self._admit(context, "Query")
        check_query(request)
        out = self._log.query(request)
        _log.info("event=audit_queried org=%s role=%s name=%s records=%d", principal.org, principal.role,
                  principal.name, len(out.records))
        return out

    @guarded_unary
    def Verify(self, request: audit_pb2.AuditVerifyRequest,
               context: grpc.ServicerContext) -> audit_pb2.AuditVerifyResponse:
        principal = self._admit(context, "Verify")
        check_verify(request)
        out = self._log.verify(request)
        if not out.ok:
            _log.error("event=audit_chain_broken first_bad_id=%d reason=%s detail=%r", out.first_bad_id,
                       out.reason, out.detail)
        _log.info("event=audit_verified org=%s role=%s checked=%d ok=%s", principal.org, principal.role,
                  out.checked, out.ok)
        return out
