"""The flows that carry out operations, one per operation kind (see `lifecycle.operation_kinds`).

Each flow is idempotent step by step: every step looks at the real state first (the container's
config and tag in Proxmox, the agent's status) and only then acts, so a retry or a takeover by
another worker adopts what an earlier attempt did instead of doing it twice.
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from ..context import OperationContext


@dataclass(frozen=True)
class Flow:
    run: Callable[["OperationContext"], None]
    #: Puts the server in a readable state after the operation ended in failure; runs in the
    #: transaction that fails the operation.
    on_failure: Callable[["OperationContext", dict[str, Any]], None] | None = None
