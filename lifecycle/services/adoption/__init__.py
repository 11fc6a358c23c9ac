"""Taking over containers made outside the control plane (`manage.py adopt`), and giving them
back (`adopt --release`).

Two kinds of container can be adopted:
- **untagged** containers (made by the old API or by hand), described by a mapping file
  (VMID -> owner, name, kind, variant/version or runtime, plan, port), so an export of the old
  database can feed it;
- containers carrying our tag for a server this database does not know (the database was
  restored from a dump older than the server): they keep their server id, and what the
  mapping file does not say is read from the metadata line provisioning writes into the
  container's description (`container_description`), so re-adopting them needs no mapping.

`adoption_plan` reads everything once (one Proxmox listing plus one config read per candidate,
one listing per edge system, a handful of queries) and says, per container, what adopting it
claims and changes, or why it is skipped. `adoption_apply` adopts the containers planned for
it, one at a time per thread:

1. one transaction (the account's quota row locked, as creates do): the server row in the
   observed state (running/stopped, under a maintenance lock so the reconciler keeps its hands
   off until the end), its VMID, IP and port claimed under row locks, the node's memory
   reserved, and the `Adoption` journal row with everything the container had;
2. our tag added to the container's tags (the others kept), guarded by the config's digest;
3. the container firewall put in place (when PROXMOX_FIREWALL is on; what it was is kept);
4. the edge steps (`edge.adoption`): exactly matching records marked, missing ones made;
5. the maintenance lock lifted, and a running server's agent given its own credential (a
   `rotate_credential` operation).

Nothing is created, started, stopped, restarted or destroyed. A crash anywhere leaves the
journal row in the last state reached; the next `--apply` carries on from there (each step is
idempotent). A second `--apply` finds every container adopted and changes nothing.
`adoption_release` undoes it all in the reverse order and leaves the server row as a purged
tombstone (its history stays readable), its allocations as they were before adoption. A server
adopted back by its own tag is not released: it was ours all along (its leftovers would name a
purged server, and those are orphans); it is deleted like any server.

The parts: `mapping.py` (the mapping file, the description's metadata line), `plan.py`,
`apply.py` (the journaled steps), `release.py`; the edge side is `edge/adoption.py`.
"""
from __future__ import annotations

from ...errors import AdoptionRefused, MappingInvalid
from .apply import Outcome, adoption_apply
from .mapping import MappingRow, container_description, description_meta, mapping_load, \
    mapping_parse
from .plan import AdoptionPlan, ContainerPlan, Verdict, adoption_plan
from .release import adoption_release

__all__ = ("AdoptionPlan", "AdoptionRefused", "ContainerPlan", "MappingInvalid", "MappingRow",
           "Outcome", "Verdict", "adoption_apply", "adoption_plan", "adoption_release",
           "container_description", "description_meta", "mapping_load", "mapping_parse")
