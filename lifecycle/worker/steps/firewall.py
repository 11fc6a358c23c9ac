"""The container's firewall, put in the desired state before the container first starts (the
agent takes its credential on first use: until then only the firewall keeps everyone but the
control plane away from it). See `lifecycle/firewall.py` for what is desired."""
from __future__ import annotations

from ...clients.proxmox import ProxmoxClient
from ...firewall import enabled
from ...models import ContainerInstance
from ...services.firewall import Target, firewall_apply
from ..context import OperationContext
from ..errors import StepError
from . import Step


def firewall_step(ctx: OperationContext, pve: ProxmoxClient, inst: ContainerInstance) -> None:
    """Apply the firewall (IP sets, net0, options, our rules) and check it took; checkpoint.
    Idempotent: a retry reads what is there and changes only what differs."""
    if not enabled():
        ctx.checkpoint(Step.FIREWALL, "container firewall off (PROXMOX_FIREWALL)")
        return
    changes, verdict = firewall_apply(pve, Target.of(inst), with_ipsets=True)
    if verdict is None:
        raise StepError(f"CT {inst.vmid} vanished while its firewall was set up",
                        retryable=True, kind="vanished")
    if not verdict.ok:
        raise StepError(f"the firewall of CT {inst.vmid} is not as desired after applying it: "
                        + "; ".join(verdict.problems[:3]), retryable=True, kind="firewall")
    done = "; ".join(changes) if changes else "already as desired"
    ctx.checkpoint(Step.FIREWALL, f"firewall of CT {inst.vmid}: {done}"[:500])
