"""One spec per operation kind: everything the rest of the code needs to know about a kind.

The request service (`services.actions.server_request`) reads which statuses a kind may be
requested from, the desired state it sets and whether a suspended server may ask for it; the
worker reads the status it moves the server into while working, the status it ends in and
which flow carries it out; the API and the admin build their actions from the same rows.
Adding a kind means adding one row here and writing its flow in `lifecycle/worker/flows/`.
"""
from __future__ import annotations

from dataclasses import dataclass

from django.utils.module_loading import import_string

from .choices import LIVE_STATUSES, DesiredState, OperationKind
from .choices import InstanceStatus as S

K = OperationKind


@dataclass(frozen=True)
class OperationSpec:
    kind: str
    #: Statuses a request for this kind is accepted in (checked under the server's row lock).
    requestable_from: frozenset[str]
    #: Statuses the flow moves the server out of when it starts working.
    begins_from: frozenset[str]
    #: The status while the flow works (a transient one, watched by the reconciler); None for
    #: a kind that never changes the server's status (rotate_credential).
    working: str | None
    #: The status the flow ends in; None when the request chooses it (a restore's `target`).
    ends_in: str | None
    #: The desired state a request sets; None when the request chooses it (a restore's
    #: `target`) or when the kind leaves it alone (a kind without a `working` status).
    desired_after: str | None
    #: The flow that carries it out (`lifecycle.worker.flows.*`), loaded by the worker only.
    flow: str
    #: Refused while the server is suspended.
    needs_unsuspended: bool = False
    #: Only staff may request it through the API.
    staff_only: bool = False
    #: The API route: POST /servers/{id}/<api_action>; "" for DELETE /servers/{id}.
    api_action: str | None = None
    #: The admin action's name and label; the admin asks for confirmation first when `confirm`.
    admin_action: str = ""
    admin_label: str = ""
    confirm: bool = False
    #: One line for the API docs and the admin.
    description: str = ""

    def load_flow(self):
        return import_string(self.flow)


_FLOWS = "lifecycle.worker.flows"

SPECS: dict[str, OperationSpec] = {spec.kind: spec for spec in (
    OperationSpec(
        kind=K.PROVISION,
        requestable_from=frozenset({S.FAILED, S.MISSING}),
        begins_from=frozenset({S.PENDING, S.FAILED, S.MISSING}),
        working=S.PROVISIONING, ends_in=S.RUNNING, desired_after=DesiredState.RUNNING,
        flow=f"{_FLOWS}.provision.PROVISION", needs_unsuspended=True,
        api_action="retry", admin_action="retry_provisioning",
        admin_label="Retry provisioning",
        description="Provision a failed server again (it keeps its name, VMID, IP and ports)."),
    OperationSpec(
        kind=K.START,
        requestable_from=frozenset({S.STOPPED}),
        begins_from=frozenset({S.STOPPED}),
        working=S.STARTING, ends_in=S.RUNNING, desired_after=DesiredState.RUNNING,
        flow=f"{_FLOWS}.power.START", needs_unsuspended=True,
        api_action="start", admin_action="start", admin_label="Start",
        description="Start a stopped server."),
    OperationSpec(
        kind=K.STOP,
        requestable_from=frozenset({S.RUNNING}),
        begins_from=frozenset({S.RUNNING}),
        working=S.STOPPING, ends_in=S.STOPPED, desired_after=DesiredState.STOPPED,
        flow=f"{_FLOWS}.power.STOP",
        api_action="stop", admin_action="stop", admin_label="Stop (graceful)",
        description="Graceful: the game saves the world, the container shuts down cleanly."),
    OperationSpec(
        kind=K.RESTART,
        requestable_from=frozenset({S.RUNNING}),
        begins_from=frozenset({S.RUNNING}),
        working=S.RESTARTING, ends_in=S.RUNNING, desired_after=DesiredState.RUNNING,
        flow=f"{_FLOWS}.power.RESTART", needs_unsuspended=True,
        api_action="restart", admin_action="restart", admin_label="Restart",
        description="Stop gracefully, then start again."),
    OperationSpec(
        kind=K.DELETE,
        # A failed delete leaves the server in `deleting`: asking again carries on.
        requestable_from=frozenset(LIVE_STATUSES | {S.DELETING}),
        begins_from=frozenset(LIVE_STATUSES),
        working=S.DELETING, ends_in=S.DELETED, desired_after=DesiredState.DELETED,
        flow=f"{_FLOWS}.termination.DELETE",
        api_action="", admin_action="soft_delete",
        admin_label="Soft delete (restorable for 24 h)",
        description="Soft delete: stopped and unpublished now, restorable for 24 h, "
                    "then purged."),
    OperationSpec(
        kind=K.RESTORE,
        requestable_from=frozenset({S.DELETED, S.RESTORING}),
        begins_from=frozenset({S.DELETED}),
        working=S.RESTORING, ends_in=None, desired_after=None,
        flow=f"{_FLOWS}.termination.RESTORE", needs_unsuspended=True,
        api_action="restore", admin_action="restore", admin_label="Restore",
        description="Bring back a soft-deleted server within its window."),
    OperationSpec(
        kind=K.PURGE,
        requestable_from=frozenset({S.DELETED, S.PURGING}),
        begins_from=frozenset({S.DELETED}),
        working=S.PURGING, ends_in=S.PURGED, desired_after=DesiredState.PURGED,
        flow=f"{_FLOWS}.termination.PURGE", staff_only=True,
        api_action="purge", admin_action="purge_now",
        admin_label="Purge now (destroys the container)…", confirm=True,
        description="Staff: destroy a deleted server now and release its allocations to "
                    "quarantine."),
    OperationSpec(
        kind=K.ROTATE_CREDENTIAL,
        # Running: the new secret reaches the agent now. Stopped: the agent gets it at the next
        # start, authenticated by the secret it still holds. The status never changes.
        requestable_from=frozenset({S.RUNNING, S.STOPPED}),
        begins_from=frozenset({S.RUNNING, S.STOPPED}),
        working=None, ends_in=None, desired_after=None,
        flow=f"{_FLOWS}.credentials.ROTATE_CREDENTIAL", staff_only=True,
        api_action="rotate_credential", admin_action="rotate_agent_credential",
        admin_label="Rotate agent credential",
        description="Staff: give the server's agent a new secret of its own; the old one stops "
                    "working once the agent holds the new one (heartbeats signed with it are "
                    "accepted for AGENT_CREDENTIAL_OVERLAP_SECONDS more)."),
    OperationSpec(
        kind=K.BACKUP,
        # The server keeps running (vzdump snapshot mode) or stays stopped: no status change.
        # Requested through POST /servers/{id}/backups (services.backups.backup_request), which
        # makes the Backup row with the operation.
        requestable_from=frozenset({S.RUNNING, S.STOPPED}),
        begins_from=frozenset({S.RUNNING, S.STOPPED}),
        working=None, ends_in=None, desired_after=None,
        flow=f"{_FLOWS}.backups.BACKUP",
        description="Back up the server's container (its world) to the backup storage; a "
                    "running server keeps running."),
    OperationSpec(
        kind=K.RESTORE_BACKUP,
        # Requested through POST /servers/{id}/backups/{backup_id}/restore. The server keeps
        # its status (running stays running after the restore, stopped stays stopped).
        requestable_from=frozenset({S.RUNNING, S.STOPPED}),
        begins_from=frozenset({S.RUNNING, S.STOPPED}),
        working=None, ends_in=None, desired_after=None,
        flow=f"{_FLOWS}.restores.RESTORE_BACKUP",
        description="Replace the server's container by one restored from a backup (a backup "
                    "of the current state is taken first); IP, ports and address stay."),
    OperationSpec(
        kind=K.RESIZE,
        # Requested through POST /servers/{id}/resize (services.resizes.server_resize_request),
        # which moves the plan, the quota and the node's memory at once. The status stays.
        requestable_from=frozenset({S.RUNNING, S.STOPPED}),
        begins_from=frozenset({S.RUNNING, S.STOPPED}),
        working=None, ends_in=None, desired_after=None,
        flow=f"{_FLOWS}.resize.RESIZE", needs_unsuspended=True,
        description="Give the container its plan's memory, cores and disk (the disk only "
                    "grows); a running game server restarts to take the new memory."),
)}


def spec_for(kind: str) -> OperationSpec:
    return SPECS[kind]
