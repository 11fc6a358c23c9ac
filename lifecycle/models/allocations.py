"""Pools of VMIDs, container IPs and ports, one row per value.

A value is claimed inside the create transaction with `SELECT … FOR UPDATE SKIP LOCKED`; the
unique (pool, value) key makes a double hand-out impossible even if that logic were wrong.
Released values go to quarantine; only a sweep that has confirmed them unused makes them free.
"""
from __future__ import annotations

import ipaddress

from django.db import models

from ..choices import AllocationState, PoolKind

__all__ = ("Allocation", "AllocationPool")


class AllocationPool(models.Model):
    name = models.CharField(max_length=64, unique=True)
    kind = models.CharField(max_length=8, choices=PoolKind.choices)
    # VMIDs are cluster-wide (node is NULL); IPs and ports belong to one node.
    node = models.ForeignKey(
        "lifecycle.Node", null=True, blank=True, on_delete=models.PROTECT, related_name="pools"
    )

    class Meta:
        ordering = ("name",)
        constraints = [
            models.UniqueConstraint(fields=("node", "kind"), name="one_pool_per_node_and_kind"),
        ]

    def __str__(self) -> str:
        return self.name


class Allocation(models.Model):
    pool = models.ForeignKey(AllocationPool, on_delete=models.PROTECT, related_name="allocations")
    # VMID, port number, or an IPv4 address as an integer (see `display`).
    value = models.BigIntegerField()
    state = models.CharField(
        max_length=12, choices=AllocationState.choices, default=AllocationState.FREE
    )
    instance = models.ForeignKey(
        "lifecycle.ContainerInstance",
        null=True,
        blank=True,
        on_delete=models.PROTECT,
        related_name="allocations",
    )
    role = models.CharField(max_length=16, blank=True, help_text="vmid, ip, game, ide, …")
    claimed_at = models.DateTimeField(null=True, blank=True)
    released_at = models.DateTimeField(null=True, blank=True)
    quarantine_until = models.DateTimeField(null=True, blank=True)
    # VMIDs leave quarantine only once Proxmox has been seen not to have them.
    verified_absent_at = models.DateTimeField(null=True, blank=True)
    note = models.CharField(max_length=255, blank=True)

    class Meta:
        ordering = ("pool", "value")
        constraints = [
            models.UniqueConstraint(fields=("pool", "value"), name="allocation_unique_value"),
        ]
        indexes = [
            # The claim scans free values of one pool in order.
            models.Index(fields=("pool", "state", "value"), name="allocation_claim_idx"),
        ]

    def __str__(self) -> str:
        return f"{self.pool.name}:{self.display}"

    @property
    def display(self) -> str:
        if self.pool.kind == PoolKind.IP:
            return str(ipaddress.IPv4Address(self.value))
        return str(self.value)
