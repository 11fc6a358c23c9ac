"""Authoritative lifecycle models, one module per sub-domain."""
from .accounts import AccountProfile, AccountQuota, ApiToken
from .adoptions import Adoption
from .agents import AgentCredential, AgentHeartbeat
from .allocations import Allocation, AllocationPool
from .backups import Backup
from .audit import AuditEvent
from .ide import IdeToken
from .instances import ContainerInstance
from .nodes import Node
from .operations import Operation
from .schedules import ServerSchedule
from .slots import NodeTaskSlot

__all__ = (
    "AccountProfile",
    "AccountQuota",
    "Adoption",
    "AgentCredential",
    "AgentHeartbeat",
    "Allocation",
    "AllocationPool",
    "ApiToken",
    "AuditEvent",
    "Backup",
    "ContainerInstance",
    "IdeToken",
    "Node",
    "NodeTaskSlot",
    "Operation",
    "ServerSchedule",
)
