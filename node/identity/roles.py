"""Certificate roles and which organisation kinds may hold them."""

from __future__ import annotations

from rxchain.v1 import config_pb2

ROLES = (
    "doctor", "nurse", "pharmacist", "courier", "clerk", "admin", "auditor",
    "patient", "peer", "orderer", "client",
)

ROLES_BY_KIND: dict[int, frozenset[str]] = {
    config_pb2.HOSPITAL: frozenset(
        {"doctor", "nurse", "pharmacist", "admin", "patient", "peer", "client"}
    ),
    config_pb2.PHARMACY: frozenset({"pharmacist", "courier", "admin", "peer", "client"}),
    config_pb2.INSURER: frozenset({"clerk", "admin", "peer", "orderer", "client"}),
    config_pb2.REGULATOR: frozenset({"auditor", "admin", "peer", "client"}),
}

KIND_NAMES: dict[int, str] = {
    config_pb2.HOSPITAL: "hospital",
    config_pb2.PHARMACY: "pharmacy",
    config_pb2.INSURER: "insurer",
    config_pb2.REGULATOR: "regulator",
}
