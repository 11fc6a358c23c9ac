"""NodeTaskSlot: the places for Proxmox tasks of one kind on one node (a counting semaphore in
the database: it holds across workers and hosts, and outlives a wiped Redis)."""
from __future__ import annotations

from django.db import models

from ..choices import NodeTaskKind

__all__ = ("NodeTaskSlot",)


class NodeTaskSlot(models.Model):
    """One place: free while `holder` is empty (or its `expires_at` has passed: a worker that
    died holding it gives it up by itself). Rows are made on demand up to the limit of the
    kind; a lowered limit simply leaves the higher-numbered rows unused."""

    node = models.CharField(max_length=64)
    kind = models.CharField(max_length=8, choices=NodeTaskKind.choices)
    slot = models.PositiveSmallIntegerField()
    #: The operation (or another worker's task) holding it.
    holder = models.CharField(max_length=64, blank=True, default="")
    acquired_at = models.DateTimeField(null=True, blank=True)
    expires_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ("node", "kind", "slot")
        constraints = [
            models.UniqueConstraint(fields=("node", "kind", "slot"), name="node_task_slot_unique"),
        ]
        indexes = [models.Index(fields=("holder",), name="node_task_slot_holder_idx")]

    def __str__(self) -> str:
        return f"{self.node} {self.kind} #{self.slot}"
