"""Backups proven restorable (beat task `lifecycle.backup_verify`).

A sample of recent backups that were never checked is restored, one at a time, into a scratch
container: a spare VMID and a spare IP of the node (claimed for the server as `verify`, so
nobody else gets them meanwhile), the firewall with the agent port open to the control plane
only and no game or IDE port, tags `zlh-verify` plus the server's own. It is started, its agent
is reached with the credential the backup holds and at once re-enrolled with a throwaway
credential and no heartbeat target (the scratch container can never speak for the live
server), and asked whether the world loads. The scratch container is destroyed and its VMID
and IP go to quarantine, whatever happened.

The result is recorded on the backup (`verify_state` ok / failed, `verification`). A backup
whose world does not load is an operator alert (once per backup). A check that could not be
carried out (Proxmox, the node or the agent unavailable) leaves the backup unchecked for the
next run. A claim (`verifying`) older than BACKUP_VERIFY_TIMEOUT_SECONDS is taken over, and
its scratch container destroyed first.
"""
from __future__ import annotations

import ipaddress
import logging
import secrets
import time
from typing import Any

from django.conf import settings
from django.db.models import Q
from django.db.models.functions import Now

from core.agent_tokens import control_token
from core.clock import db_before
from core.errors import ExternalError
from core.ownership import container_tags, owners_from_tags
from notifications.services import alert_resolve, notify_warning

from ..choices import BackupState, NodeTaskKind
from ..choices import InstanceStatus as S
from ..clients.agent import AgentClient, AgentError
from ..clients.proxmox import ProxmoxClient, PveErrorKind, bool01, parse_tags
from ..firewall import enabled as firewall_enabled
from ..models import Allocation, Backup, ContainerInstance
from ..services.allocations import allocation_claim_spares, allocation_release_role
from ..services.firewall import Target, firewall_apply
from ..services.node_slots import node_slot_acquire, node_slot_release
from .steps.backups import held_credentials

logger = logging.getLogger(__name__)

ROLE = "verify"
VERIFY_TAG = "zlh-verify"


class NotCarriedOut(Exception):
    """The check could not be made (not the backup's fault): try again at the next run."""


def _wait(check, *, timeout: float, what: str):
    deadline = time.monotonic() + timeout
    delay = 0.05
    while True:
        result = check()
        if result is not None:
            return result
        if time.monotonic() >= deadline:
            raise NotCarriedOut(f"timed out after {timeout:.0f}s waiting for {what}")
        time.sleep(delay)
        delay = min(2.0, delay * 1.6)


def _task(pve: ProxmoxClient, upid: str, what: str) -> None:
    result = pve.task_wait(upid, timeout=settings.PROXMOX_TASK_TIMEOUT)
    if not result.ok:
        raise pve.task_error(result, what)


def _destroy_scratch(pve: ProxmoxClient, inst: ContainerInstance, node: str, vmid: int) -> None:
    """Destroy the scratch container if it is there and is ours (a foreign guest never)."""
    cfg = pve.ct_config(node, vmid)
    if cfg is None:
        return
    tags = parse_tags(cfg.get("tags"))
    if VERIFY_TAG not in tags or str(inst.id) not in owners_from_tags(tags):
        logger.warning("VMID %s holds a guest that is not our scratch container; left alone", vmid)
        return
    if cfg.get("lock"):
        _wait(lambda: None if (pve.ct_config(node, vmid) or {}).get("lock") else True,
              timeout=settings.PROXMOX_TASK_TIMEOUT, what=f"CT {vmid} to be unlocked")
    try:
        _task(pve, pve.ct_stop(node, vmid), f"stop CT {vmid}")
    except ExternalError as err:
        if getattr(err, "kind", None) not in (PveErrorKind.NOT_RUNNING, PveErrorKind.NOT_FOUND):
            raise
    try:
        _task(pve, pve.ct_destroy(node, vmid), f"destroy CT {vmid}")
    except ExternalError as err:
        if getattr(err, "kind", None) != PveErrorKind.NOT_FOUND:
            raise


def _clean_up(pve: ProxmoxClient, inst: ContainerInstance, node: str) -> None:
    """Destroy every scratch container of the server (by its `verify` VMIDs), release them."""
    vmid_rows = Allocation.objects.filter(instance_id=inst.id, role=ROLE, state="claimed",
                                          pool__kind="vmid").values_list("value", flat=True)
    for vmid in vmid_rows:
        _destroy_scratch(pve, inst, node, int(vmid))
    allocation_release_role(instance_id=inst.id, role=ROLE)


def _scratch_params(inst: ContainerInstance, backup: Backup, ip: str) -> dict[str, Any]:
    net = ipaddress.IPv4Network(inst.node.subnet, strict=False)
    return {
        "ostemplate": backup.volid, "restore": 1,
        "hostname": f"verify-{inst.slug}"[:63],
        "memory": inst.memory_mb, "swap": 512, "cores": inst.cores,
        "rootfs": f"{settings.PROXMOX_STORAGE}:{inst.disk_gb}",
        "net0": (f"name=eth0,bridge={settings.PROXMOX_BRIDGE},ip={ip}/{net.prefixlen},"
                 f"gw={inst.node.gateway}" + (",firewall=1" if firewall_enabled() else "")),
        "tags": f"{container_tags(inst.id)};{VERIFY_TAG}",
        "unprivileged": bool01(True), "onboot": bool01(False), "features": "nesting=1",
        "description": f"ZeroLagHub: verifying backup {backup.id} of {inst.slug}; "
                       "destroyed after the check",
    }


def _agent_world(inst: ContainerInstance, backup: Backup, vmid: int, ip: str) -> dict[str, Any]:
    """Reach the scratch agent with the backup's credential, re-enrol it with a throwaway one
    (no heartbeats), and ask whether the world loads."""
    url = settings.AGENT_URL_TEMPLATE.format(ip=ip, vmid=vmid)
    held = [secret for secret, _sid in held_credentials(backup)]

    def reach():
        for secret in held:
            agent = AgentClient(base_url=url, token=control_token(secret, backup.instance_id),
                                timeout=settings.AGENT_TIMEOUT)
            try:
                agent.status()
                return agent
            except AgentError:
                agent.close()
        return None

    if not held:
        raise NotCarriedOut("the backup holds no agent credential to reach its agent with")
    agent = _wait(reach, timeout=settings.AGENT_WAIT_SECONDS, what="the scratch agent")
    throwaway = secrets.token_urlsafe(32)
    try:
        agent.credential({"secret": throwaway, "version": 0,
                          "serverId": str(backup.instance_id),
                          "heartbeat": {"url": "", "intervalSeconds": 86400}})
    finally:
        agent.close()
    scratch = AgentClient(base_url=url, token=control_token(throwaway, backup.instance_id),
                          timeout=settings.AGENT_TIMEOUT)
    try:
        return scratch.world()
    finally:
        scratch.close()


def backup_verify_one(backup: Backup, pve: ProxmoxClient) -> str:
    """Check one claimed backup and record the result; returns ok, failed or unchecked."""
    inst = ContainerInstance.objects.select_related("node").get(pk=backup.instance_id)
    node = inst.node.name
    seen: dict[str, Any] = {}
    state = "unchecked"
    try:
        _clean_up(pve, inst, node)  # a check that died halfway left its scratch container
        vmid, ip = allocation_claim_spares(instance_id=inst.id, node_id=inst.node_id, role=ROLE)
        seen.update(vmid=vmid, ip=ip, node=node)
        holder = f"verify:{backup.id}"
        if not node_slot_acquire(node=node, kind=NodeTaskKind.RESTORE, holder=holder,
                                 ttl_seconds=settings.PROXMOX_TASK_TIMEOUT + 120):
            raise NotCarriedOut(f"every restore place on {node} is in use; checked later")
        try:
            _task(pve, pve.ct_create(node, vmid, **_scratch_params(inst, backup, ip)),
                  f"restore {backup.volid} into CT {vmid}")
        except ExternalError as err:
            if err.retryable:
                raise
            seen["error"] = f"the archive could not be restored: {err.message}"[:500]
            state = "failed"
        finally:
            node_slot_release(holder=holder)
        if state != "failed":
            if firewall_enabled():
                target = Target(server_id=inst.id, kind=inst.kind, ports={}, node=node,
                                vmid=vmid)
                firewall_apply(pve, target)
            _task(pve, pve.ct_start(node, vmid), f"start CT {vmid}")
            world = _agent_world(inst, backup, vmid, ip)
            seen["world"] = {k: world.get(k) for k in ("loads", "generation", "error")}
            state = "ok" if world.get("loads") else "failed"
            if state == "failed":
                seen["error"] = f"the world does not load: {world.get('error')}"[:500]
    except (ExternalError, NotCarriedOut) as err:
        seen["error"] = f"not checked: {getattr(err, 'message', str(err))}"[:500]
        state = "unchecked"
    finally:
        try:
            _clean_up(pve, inst, node)
        except (ExternalError, NotCarriedOut) as err:
            # Left for the next run (it cleans up first); the VMID and IP stay claimed.
            logger.warning("scratch container of backup %s not removed yet: %s", backup.id, err)
            seen["cleanup"] = "pending"
    _record(backup, inst, state, seen)
    return state


def _record(backup: Backup, inst: ContainerInstance, state: str, seen: dict[str, Any]) -> None:
    if state == "unchecked":
        Backup.objects.filter(pk=backup.pk, verify_state="verifying").update(
            verify_state="", verify_started_at=None, verification=seen, updated_at=Now())
        return
    Backup.objects.filter(pk=backup.pk, verify_state="verifying").update(
        verify_state=state, verified_at=Now(), verification=seen, updated_at=Now())
    key = f"backup-verify:{backup.id}"
    if state == "failed":
        notify_warning(
            f"Backup of {inst.slug} cannot be restored",
            f"{seen.get('error')}\n\nBackup {backup.id} ({backup.kind}, "
            f"{backup.created_at:%Y-%m-%d %H:%M} UTC, {backup.volid}). Take a new backup and "
            "check the backup storage.",
            alert_key=key, subject=str(inst.id))
    else:
        alert_resolve(key, body="The backup was verified.")


def _claim(limit: int) -> list[Backup]:
    """Claim up to `limit` backups to check: ready, of a live server, never checked (or whose
    check was abandoned), newest first."""
    stale = db_before(settings.BACKUP_VERIFY_TIMEOUT_SECONDS)
    candidates = list(Backup.objects.filter(
        state=BackupState.READY, volid__isnull=False,
        instance__status__in=(S.RUNNING, S.STOPPED))
        .filter(Q(verify_state="") | Q(verify_state="verifying", verify_started_at__lt=stale))
        .order_by("-created_at").values_list("id", "verify_state")[:limit * 4])
    claimed = []
    for backup_id, was in candidates:
        if len(claimed) >= limit:
            break
        rows = Backup.objects.filter(pk=backup_id, verify_state=was)
        if was == "verifying":
            rows = rows.filter(verify_started_at__lt=stale)
        if rows.update(verify_state="verifying", verify_started_at=Now(), updated_at=Now()):
            claimed.append(Backup.objects.get(pk=backup_id))
    return claimed


def backup_verify_run(*, limit: int | None = None) -> dict[str, int]:
    """Check a sample of backups (BACKUP_VERIFY_SAMPLE), one after the other."""
    counts = {"ok": 0, "failed": 0, "unchecked": 0}
    if not settings.BACKUP_VERIFY:
        return counts
    pve = ProxmoxClient.from_settings()
    for backup in _claim(settings.BACKUP_VERIFY_SAMPLE if limit is None else limit):
        counts[backup_verify_one(backup, pve)] += 1
    logger.info("backup verification: %s", counts)
    return counts
