"""Rotate a server's agent credential (operation kind `rotate_credential`).

The new version is made once per operation (checkpoint `rotated`, in the same transaction).
A running server's agent gets it now, authenticated by the secret it holds; a stopped one at
its next start. The server's status never changes.
"""
from __future__ import annotations

from django.db import transaction

from notifications.services import alert_resolve

from ...choices import InstanceStatus as S
from ...services.agent_credentials import agent_credential_rotate
from ..context import OperationContext
from ..steps import Step
from ..steps.agent import agent_session
from ..steps.status import failure_alert_key, record_failure
from . import Flow


def _run(ctx: OperationContext) -> None:
    if not ctx.step:
        with transaction.atomic():
            version = agent_credential_rotate(instance_id=ctx.instance_id, actor=ctx.actor,
                                              reason=f"operation {ctx.operation_id}")
            ctx.checkpoint(Step.ROTATED, f"agent credential v{version} made")
    inst = ctx.instance()
    if inst.status == S.RUNNING:
        agent, _ = agent_session(ctx, inst)
        agent.close()
    else:
        ctx.note(f"the server is {inst.status}: its agent gets the new credential at the next "
                 "start")
    with transaction.atomic():
        alert_resolve(failure_alert_key(ctx.instance_id, ctx.kind),
                      body=f"The {ctx.kind} succeeded.")
        ctx.succeed()


ROTATE_CREDENTIAL = Flow(run=_run, on_failure=record_failure)
