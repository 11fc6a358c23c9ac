"""Authoritative lifecycle models, one module per sub-domain."""
from .accounts import AccountQuota, ApiToken
from .allocations import Allocation, AllocationPool
from .audit import AuditEvent
from .instances import ContainerInstance
from .nodes import Node
from .operations import Operation

__all__ = (
    "AccountQuota",
    "Allocation",
    "AllocationPool",
    "ApiToken",
    "AuditEvent",
    "ContainerInstance",
    "Node",
    "Operation",
)
