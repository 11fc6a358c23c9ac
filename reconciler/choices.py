"""What the reconciler finds, how dangerous each repair is, and the states of its records."""
from __future__ import annotations

from enum import StrEnum

from django.db import models


class FindingType(models.TextChoices):
    STALE_OPERATION = "stale_operation", "Stale operation"
    STUCK_TRANSITION = "stuck_transition", "Stuck transition"
    CONTAINER_MISSING = "container_missing", "Container missing"
    #: Ours, under the server's VMID, on another node than the row says (Proxmox HA, a
    #: manual migration): not missing, only moved.
    CONTAINER_MOVED = "container_moved", "Container moved to another node"
    ORPHAN_CONTAINER = "orphan_container", "Orphan container"
    #: Our tag names a server this database never knew (it was restored from an older dump,
    #: or another control plane made it): never destroyed, adoptable by its tag.
    UNKNOWN_CONTAINER = "unknown_container", "Container of a server unknown to the database"
    VMID_CONFLICT = "vmid_conflict", "VMID conflict"
    POWER_DRIFT = "power_drift", "Power drift"
    #: Many servers of one node found stopped although they should run, at once: the node
    #: restarted (or came back from being offline). One finding, one repair, one message.
    NODE_SERVERS_DOWN = "node_servers_down", "A node's servers down (node restarted?)"
    STATUS_DRIFT = "status_drift", "Status drift"
    EDGE_DRIFT = "edge_drift", "Edge drift"
    EDGE_ORPHAN = "edge_orphan", "Edge orphan"
    AGENT_UNREACHABLE = "agent_unreachable", "Agent unreachable"
    CRASH_LOOP = "crash_loop", "Crash loop"
    #: The agent answers when asked, but its heartbeats do not arrive.
    HEARTBEAT_STALE = "heartbeat_stale", "Heartbeats not arriving"
    #: Memory above AGENT_MEMORY_PRESSURE_PERCENT for several heartbeats in a row.
    MEMORY_PRESSURE = "memory_pressure", "Memory pressure"
    #: The agent is still driven with the old shared token (migration path).
    AGENT_LEGACY_CREDENTIAL = "agent_legacy_credential", "Agent on the shared token"
    PURGE_DUE = "purge_due", "Purge overdue"
    #: The container's firewall (net0 flag, options, our rules) or the cluster IP sets our
    #: rules name differ from the desired state.
    FIREWALL_DRIFT = "firewall_drift", "Firewall drift"
    #: Rules in a container's firewall that are not ours (never touched; someone decided).
    FIREWALL_FOREIGN_RULE = "firewall_foreign_rule", "Foreign firewall rule"
    #: The datacenter firewall is off: no guest rule filters anything.
    FIREWALL_DISABLED = "firewall_disabled", "Datacenter firewall off"


class Action(models.TextChoices):
    NOTIFY = "notify", "Notify only"
    CLEAR_STALE_OPERATION_LOCK = "clear_stale_operation_lock", "Clear stale operation lock"
    SYNC_STATUS = "sync_status", "Sync status"
    EDGE_REPUBLISH = "edge_republish", "Republish edge"
    DNS_REPUBLISH = "dns_republish", "Republish DNS"
    VELOCITY_REGISTER = "velocity_register", "Register with Velocity"
    VELOCITY_UNREGISTER = "velocity_unregister", "Unregister from Velocity"
    RECORD_MOVE = "record_move", "Record the container's new node"
    FIREWALL_APPLY = "firewall_apply", "Apply the container firewall"
    START_CONTAINER = "start_container", "Start container"
    START_NODE_SERVERS = "start_node_servers", "Start a node's servers again"
    STOP_CONTAINER = "stop_container", "Stop container"
    RECREATE_CONTAINER = "recreate_container", "Recreate container"
    DESTROY_ORPHAN = "destroy_orphan", "Destroy orphan container"
    DELETE_EDGE_ORPHAN = "delete_edge_orphan", "Delete orphan edge records"
    PURGE = "purge", "Purge server"


#: Level of each action: 0 observe/notify, 1 safe repair, 2 destructive (off by default).
ACTION_LEVEL = {
    Action.NOTIFY: 0,
    Action.CLEAR_STALE_OPERATION_LOCK: 1,
    Action.SYNC_STATUS: 1,
    Action.EDGE_REPUBLISH: 1,
    Action.DNS_REPUBLISH: 1,
    Action.VELOCITY_REGISTER: 1,
    # What a stop or delete does itself: nothing is destroyed.
    Action.VELOCITY_UNREGISTER: 1,
    # Only the row changes (node, memory accounting), to follow what Proxmox already did.
    Action.RECORD_MOVE: 1,
    # Our own rules and IP sets put back; nothing else in the firewall is touched.
    Action.FIREWALL_APPLY: 1,
    Action.START_CONTAINER: 1,
    # Each server through its normal start operation; the node's start limit staggers them.
    Action.START_NODE_SERVERS: 1,
    Action.STOP_CONTAINER: 1,
    Action.RECREATE_CONTAINER: 2,
    Action.DESTROY_ORPHAN: 2,
    Action.DELETE_EDGE_ORPHAN: 2,
    Action.PURGE: 2,
}


class RepairState(models.TextChoices):
    PROPOSED = "proposed", "Proposed (dry run)"
    QUEUED = "queued", "Queued"
    RUNNING = "running", "Running"
    SUCCEEDED = "succeeded", "Succeeded"
    #: The repair ran and the post-check did not confirm it (or an outside system failed).
    FAILED = "failed", "Failed"
    #: Our own code failed while repairing (a platform error, not the world's).
    ERRORED = "errored", "Errored (platform error)"
    SKIPPED = "skipped", "Skipped (precondition no longer true)"
    BLOCKED = "blocked", "Blocked (level, budget or breaker)"


ACTIVE_REPAIR_STATES = frozenset({RepairState.QUEUED, RepairState.RUNNING})
#: Repairs that ran to an end, good or bad: they count against a server's hourly budget.
SPENT_REPAIR_STATES = frozenset({RepairState.QUEUED, RepairState.RUNNING, RepairState.SUCCEEDED,
                                 RepairState.FAILED, RepairState.ERRORED})


class Decision(StrEnum):
    """What one cycle decided about one finding (counted on its ControllerRun)."""

    NOTIFIED = "notified"              # level 0: an alert only
    PROPOSED = "proposed"              # dry run: a RepairEvent to read, nothing done
    BLOCKED = "blocked"                # level not enabled, mass drift, budget, breaker, suspended
    ALREADY_ACTIVE = "already_active"  # the same repair is queued or running
    QUEUED = "queued"                  # a repair task was queued


class BreakerState(models.TextChoices):
    CLOSED = "closed", "Closed"
    OPEN = "open", "Open"
    HALF_OPEN = "half_open", "Half-open (probing)"


class RunOutcome(models.TextChoices):
    RUNNING = "running", "Running"
    COMPLETED = "completed", "Completed"
    MASS_DRIFT = "mass_drift", "Mass drift: no repairs"
    LEASE_LOST = "lease_lost", "Lease lost"
    ERROR = "error", "Error"
