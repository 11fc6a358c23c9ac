"""Proxmox nodes: capacity, container subnet and the port range servers are given."""
from __future__ import annotations

import ipaddress

from django.core.exceptions import ValidationError
from django.db import models
from django.db.models import F, Q

__all__ = ("Node",)


class Node(models.Model):
    name = models.CharField(max_length=64, unique=True, help_text="Proxmox node name, e.g. pve1")
    enabled = models.BooleanField(default=True, help_text="Disabled nodes receive no new servers")
    memory_mb = models.PositiveIntegerField(help_text="Memory we may hand out on this node")
    cores = models.PositiveIntegerField()
    # Kept by placement with a conditional UPDATE (allocated + wanted <= capacity) inside the
    # create transaction, so two creates can never overshoot a node.
    allocated_memory_mb = models.PositiveIntegerField(default=0)
    subnet = models.CharField(max_length=43, help_text="Container network, CIDR (10.10.1.0/24)")
    gateway = models.GenericIPAddressField(protocol="IPv4")
    port_range_start = models.PositiveIntegerField()
    port_range_end = models.PositiveIntegerField()
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        ordering = ("name",)
        constraints = [
            models.CheckConstraint(
                condition=Q(allocated_memory_mb__lte=F("memory_mb")),
                name="node_allocated_within_capacity",
            ),
            models.CheckConstraint(
                condition=Q(port_range_start__lte=F("port_range_end"))
                & Q(port_range_start__gte=1024)
                & Q(port_range_end__lte=65535),
                name="node_port_range_valid",
            ),
        ]

    def __str__(self) -> str:
        return self.name

    @property
    def network(self) -> ipaddress.IPv4Network:
        return ipaddress.IPv4Network(self.subnet, strict=False)

    def clean(self) -> None:
        try:
            net = ipaddress.IPv4Network(self.subnet, strict=True)
        except ValueError as exc:
            raise ValidationError({"subnet": f"not an IPv4 network in CIDR form: {exc}"}) from exc
        if self.gateway and ipaddress.IPv4Address(self.gateway) not in net:
            raise ValidationError({"gateway": f"{self.gateway} is outside {net}"})
