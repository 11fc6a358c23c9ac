"""The steps flows are made of, split by the outside system they talk to: `proxmox` (the
container), `agent` (the agent inside it), `edge` (DNS and Velocity), `payload` (what the agent
installs), `status` (the server's status moves and announcements). `Step` names the checkpoints
a flow records, so a retry knows how far an earlier attempt got."""
from __future__ import annotations

from enum import StrEnum


class Step(StrEnum):
    CONTAINER = "container"      # our container exists (created or adopted)
    FIREWALL = "firewall"        # its firewall is as desired (before it first starts)
    STARTED = "started"          # the container runs
    AGENT = "agent"              # the agent answers
    CREDENTIAL = "credential"    # the agent holds the server's current credential
    ROTATED = "rotated"          # a new credential version was made (rotation, restore)
    PAYLOAD = "payload"          # the agent has the provisioning payload
    READY = "ready"              # the game (or IDE) is ready
    EDGE = "edge"                # DNS and Velocity published and seen live
    UNPUBLISHED = "unpublished"  # DNS and Velocity removed
    STOPPED = "stopped"          # the container is stopped
    DESTROYED = "destroyed"      # the container is gone
    BACKUP_STARTED = "backup_started"  # the backup's vzdump task was started (UPID kept)
    BACKED_UP = "backed_up"      # the backup a destructive step takes first is ready
    RESTORED = "restored"        # a backup was restored into the temporary container
    SWAPPED = "swapped"          # the server's VMID is the restored container's now
    RESIZED = "resized"          # the container has the plan's memory, cores and disk
    DONE = "done"                # the operation succeeded


#: Checkpoints after which a restart's stop half is done.
RESTART_STOP_DONE = frozenset({Step.STOPPED, Step.STARTED, Step.AGENT, Step.CREDENTIAL,
                               Step.READY})
