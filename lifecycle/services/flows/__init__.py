"""The flows that carry out operations (DESIGN §4), one per operation kind.

Each flow is idempotent step by step: every step looks at the real state first (the container's
config and tag in Proxmox, the agent's status) and only then acts, so a retry or a takeover by
another worker adopts what an earlier attempt did instead of doing it twice.
"""
from __future__ import annotations

from ...choices import OperationKind
from .power import RESTART, START, STOP
from .provision import PROVISION
from .termination import DELETE, PURGE, RESTORE

FLOWS = {
    OperationKind.PROVISION: PROVISION,
    OperationKind.START: START,
    OperationKind.STOP: STOP,
    OperationKind.RESTART: RESTART,
    OperationKind.DELETE: DELETE,
    OperationKind.RESTORE: RESTORE,
    OperationKind.PURGE: PURGE,
}
