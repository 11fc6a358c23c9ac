"""Adoption: the journal of one container taken over from outside (`manage.py adopt`).

A container made by something else (the old API, a person in the Proxmox panel) becomes a
server of ours without being recreated. The row is written in the same transaction as the
server row and its allocations, before anything outside is changed, and holds everything
needed to finish the adoption after a crash and to undo it (`adopt --release`): the tags and
firewall the container had, and each DNS record or Velocity registration that was marked,
created, registered or unregistered, with what it was before.
"""
from __future__ import annotations

from django.db import models

from ..choices import AdoptionState

__all__ = ("Adoption",)


class Adoption(models.Model):
    instance = models.OneToOneField("lifecycle.ContainerInstance", on_delete=models.PROTECT,
                                    related_name="adoption")
    vmid = models.PositiveIntegerField(db_index=True)
    node = models.CharField(max_length=64)
    state = models.CharField(max_length=12, choices=AdoptionState.choices,
                             default=AdoptionState.CLAIMED)
    #: "mapping": an untagged container described by the mapping file; "tag": a container
    #: carrying our tag for a server this database did not know (restored from an older dump).
    source = models.CharField(max_length=8, default="mapping")
    #: The container's `tags` before adoption (PVE's ';'-joined form).
    original_tags = models.CharField(max_length=4096, blank=True)
    #: {"options": {...}, "net0": "..."} before our firewall was put in place; null until read.
    original_firewall = models.JSONField(null=True, blank=True)
    #: Allocation row id -> [state, note] before adoption, restored by a release.
    original_allocations = models.JSONField(default=dict, blank=True)
    #: What was done to the edge, each with what it was before (see edge/adoption.py: EdgeStep).
    edge = models.JSONField(default=list, blank=True)
    #: The plan line the adoption was made from (what the operator saw in the dry run).
    plan = models.JSONField(default=dict, blank=True)
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)
    released_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ("vmid",)

    def __str__(self) -> str:
        return f"adoption of CT {self.vmid} ({self.state})"
