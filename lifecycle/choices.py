"""Enumerations of the lifecycle app, with the named state groups code asks about.

Code never compares against literal lists of states: it asks "is it in LIVE_STATUSES",
"is it in ACTIVE_OPERATION_STATES".
"""
from __future__ import annotations

from django.db import models


class Kind(models.TextChoices):
    GAME = "game", "Game server"
    DEV = "dev", "Dev container"


class Variant(models.TextChoices):
    VANILLA = "vanilla", "Vanilla"
    FABRIC = "fabric", "Fabric"
    PAPER = "paper", "Paper"


class Plan(models.TextChoices):
    VANILLA = "vanilla", "Vanilla"
    MODDED = "modded", "Modded"
    HEAVY = "heavy", "Heavy"


class InstanceStatus(models.TextChoices):
    PENDING = "pending", "Pending"
    PROVISIONING = "provisioning", "Provisioning"
    RUNNING = "running", "Running"
    STOPPING = "stopping", "Stopping"
    STOPPED = "stopped", "Stopped"
    STARTING = "starting", "Starting"
    RESTARTING = "restarting", "Restarting"
    FAILED = "failed", "Failed"
    MISSING = "missing", "Missing"
    DELETING = "deleting", "Deleting"
    DELETED = "deleted", "Deleted"
    RESTORING = "restoring", "Restoring"
    PURGING = "purging", "Purging"
    PURGED = "purged", "Purged"


S = InstanceStatus
#: States a worker is in the middle of; each has a deadline the reconciler watches.
TRANSIENT_STATUSES = frozenset(
    {S.PROVISIONING, S.STOPPING, S.STARTING, S.RESTARTING, S.DELETING, S.RESTORING, S.PURGING}
)
#: The server exists for its owner (not soft-deleted, not purged).
LIVE_STATUSES = frozenset(
    {S.PENDING, S.PROVISIONING, S.RUNNING, S.STOPPING, S.STOPPED, S.STARTING, S.RESTARTING,
     S.FAILED, S.MISSING}
)
#: Soft-deleted and on the way out.
DELETED_STATUSES = frozenset({S.DELETING, S.DELETED, S.RESTORING, S.PURGING})
#: Nothing more happens; the row is a tombstone.
TERMINAL_STATUSES = frozenset({S.PURGED})
#: Statuses that hold allocations and count against an account's quota.
QUOTA_STATUSES = frozenset(set(S) - TERMINAL_STATUSES)


class DesiredState(models.TextChoices):
    RUNNING = "running", "Running"
    STOPPED = "stopped", "Stopped"
    DELETED = "deleted", "Deleted"
    PURGED = "purged", "Purged"


class OperationKind(models.TextChoices):
    PROVISION = "provision", "Provision"
    START = "start", "Start"
    STOP = "stop", "Stop"
    RESTART = "restart", "Restart"
    DELETE = "delete", "Delete"
    RESTORE = "restore", "Restore"
    PURGE = "purge", "Purge"
    ROTATE_CREDENTIAL = "rotate_credential", "Rotate agent credential"
    BACKUP = "backup", "Back up"
    RESTORE_BACKUP = "restore_backup", "Restore from a backup"
    RESIZE = "resize", "Change plan"


class OperationState(models.TextChoices):
    QUEUED = "queued", "Queued"
    RUNNING = "running", "Running"
    SUCCEEDED = "succeeded", "Succeeded"
    #: The work failed: an outside system refused or stayed down past the retries.
    FAILED = "failed", "Failed"
    #: The platform failed: a bug or an unexpected exception in our own code.
    ERRORED = "errored", "Errored (platform error)"
    STALE = "stale", "Stale"
    CANCELLED = "cancelled", "Cancelled"


#: An operation in these states holds its instance's active slot.
ACTIVE_OPERATION_STATES = frozenset({OperationState.QUEUED, OperationState.RUNNING})
#: A queued operation's `waiting_for` while its game installs (the wait for readiness goes on
#: without a worker); "<node>/<kind>" while it waits for a node's place (services.node_slots).
WAITING_FOR_READY = "agent/ready"
TERMINAL_OPERATION_STATES = frozenset(
    {OperationState.SUCCEEDED, OperationState.FAILED, OperationState.ERRORED,
     OperationState.STALE, OperationState.CANCELLED}
)


class BackupKind(models.TextChoices):
    MANUAL = "manual", "Manual"
    SCHEDULED = "scheduled", "Scheduled"
    #: Taken by a purge before the container is destroyed; kept BACKUP_PRE_PURGE_KEEP_DAYS.
    PRE_PURGE = "pre_purge", "Before purge"
    #: Taken by a restore of the current state before it is replaced.
    PRE_RESTORE = "pre_restore", "Before restore"


class BackupState(models.TextChoices):
    #: Requested: its operation is queued or running.
    CREATING = "creating", "Creating"
    READY = "ready", "Ready"
    FAILED = "failed", "Failed"
    #: Its archive is being removed from the backup storage.
    DELETING = "deleting", "Deleting"
    DELETED = "deleted", "Deleted"


#: Backups that count against the account's backup quota (their archive exists or will).
BACKUP_COUNTED_STATES = frozenset({BackupState.CREATING, BackupState.READY})
#: Backups the platform takes before a destructive step: never refused by the quota, not
#: counted in it, and removed by themselves after a while.
PLATFORM_BACKUP_KINDS = frozenset({BackupKind.PRE_PURGE, BackupKind.PRE_RESTORE})


class PoolKind(models.TextChoices):
    VMID = "vmid", "VMID"
    IP = "ip", "Container IP"
    PORT = "port", "Port"


class AllocationState(models.TextChoices):
    FREE = "free", "Free"
    CLAIMED = "claimed", "Claimed"
    QUARANTINED = "quarantined", "Quarantined"
    #: Found in use outside our control (e.g. a foreign container on a VMID); never handed out.
    CONFLICTED = "conflicted", "Conflicted"


class ActorKind(models.TextChoices):
    USER = "user", "API user"
    ADMIN = "admin", "Admin user"
    SYSTEM = "system", "System"
    RECONCILER = "reconciler", "Reconciler"


class AdoptionState(models.TextChoices):
    #: Rows and allocations written; nothing outside changed yet.
    CLAIMED = "claimed", "Claimed"
    #: Our ownership tag is on the container.
    TAGGED = "tagged", "Tagged"
    #: The container firewall is ours (or the firewall is off).
    FIREWALLED = "firewalled", "Firewall in place"
    #: Records marked or created, Velocity put right.
    EDGE_DONE = "edge_done", "Edge marked"
    DONE = "done", "Adopted"
    #: `adopt --release` is undoing it.
    RELEASING = "releasing", "Releasing"
    RELEASED = "released", "Released"


class NodeTaskKind(models.TextChoices):
    """The kinds of Proxmox task whose number at once per node is limited (NodeTaskSlot)."""

    CREATE = "create", "Create a container"
    START = "start", "Start a container"
    STOP = "stop", "Stop or shut down a container"
    BACKUP = "backup", "Back up (vzdump)"
    RESTORE = "restore", "Restore from a backup"


class ScheduleAction(models.TextChoices):
    """What a server's schedule asks for at its time: the operation of the same name."""

    RESTART = "restart", "Restart"
    STOP = "stop", "Stop"
    START = "start", "Start"


class ScheduleResult(models.TextChoices):
    """What happened the last time a schedule's time came."""

    REQUESTED = "requested", "Requested"
    #: Another operation was in progress: this time is skipped, the next one stands.
    SKIPPED_BUSY = "skipped_busy", "Skipped: another operation in progress"
    #: The server was not in a state the action applies to (a restart of a stopped server).
    SKIPPED_STATE = "skipped_state", "Skipped: not applicable in the server's state"
    #: Its time passed while no tick ran (beat down longer than SERVER_SCHEDULE_MISFIRE_SECONDS):
    #: not run late, and never run more than once for the times missed.
    MISSED = "missed", "Missed: too late to run"
