"""What the gateway RPCs share: the local endorser, ledger, notifier and remote clients."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field

from node.identity.policy import Policy
from node.ledger.ledger import Ledger
from node.peer.broadcast_client import BroadcastClient
from node.peer.config_view import ConfigView
from node.peer.endorser import Endorser
from node.peer.gateway.plans import PlanRotation
from node.peer.notifier import CommitNotifier
from node.peer.peer_clients import RemoteEndorsers
from node.peer.policy_provider import LifecyclePolicies

DEFAULT_COMMIT_TIMEOUT_MS = 30_000
MAX_COMMIT_TIMEOUT_MS = 300_000


@dataclass(frozen=True)
class GatewayDeps:
    """Injected collaborators of the gateway RPCs."""

    org: str
    endorser: Endorser
    ledger: Ledger
    configs: ConfigView
    policies: LifecyclePolicies
    notifier: CommitNotifier
    remotes: RemoteEndorsers
    broadcast: BroadcastClient
    on_submit: Callable[[], None] | None = None
    # Monotonic seconds for the bounded waits (CommitStatus); injected for tests.
    clock: Callable[[], float] = time.monotonic
    # Endorsement plan rotations by (parsed policy object, own org, remote orgs); small and
    # bounded (endorse.PlanRotation).
    plans: dict[tuple[Policy, str, tuple[str, ...]], PlanRotation] = field(
        default_factory=dict
    )
