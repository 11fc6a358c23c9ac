"""The control loop: one cycle = lease → observe → diff → policy → queue repairs → record.

Correct when run periodically alone (every 60 s from beat, or `manage.py reconcile`); a cycle
that cannot get the lease exits at once (skip-if-busy). Repairs run as tasks on the `repair`
queue, at most one active per (subject, action), each fenced by the cycle's epoch.
"""
from __future__ import annotations

import logging
from collections import Counter
from datetime import timedelta
from typing import Any

from django.conf import settings
from django.db import IntegrityError, transaction
from celery import current_app
from django.db.models.functions import Now
from django.utils import timezone

from core.clock import db_now
from core.health import Health
from core.redaction import redact, redact_text
from notifications.services import (
    alert_resolve,
    notify_critical,
    notify_info,
    notify_warning,
)

from .choices import (
    ACTIVE_REPAIR_STATES,
    SPENT_REPAIR_STATES,
    Action,
    BreakerState,
    Decision,
    FindingType,
    RepairState,
    RunOutcome,
)
from .diff import FindingSpec, diff
from .lease import FencedOut, Lease, LeaseLost, acquire, fenced
from .models import Breaker, ControllerRun, Finding, RepairEvent, ServerObservation
from .observe import World, observe
from .statemachine import repair_claim, repair_end, repairs_abandon, repairs_supersede

logger = logging.getLogger(__name__)

#: Findings an operator must hear about at once (critical, with the role mention).
CRITICAL_FINDINGS = frozenset({FindingType.CONTAINER_MISSING, FindingType.VMID_CONFLICT})
#: The alert of cycles that end in an error: one while they keep failing, resolved by the first
#: cycle that completes again.
CYCLE_ALERT_KEY = "reconciler-cycle-error"


def run_cycle(*, dry_run: bool | None = None, holder: str | None = None) -> dict[str, Any]:
    """One reconcile pass. Returns a summary (also stored on its ControllerRun)."""
    dry_run = settings.RECONCILER_DRY_RUN if dry_run is None else dry_run
    lease = acquire(holder)
    if lease is None:
        return {"outcome": "skipped", "reason": "another controller holds the lease"}
    run = ControllerRun.objects.create(epoch=lease.epoch, holder=lease.token[:128],
                                       dry_run=dry_run)
    summary: dict[str, Any] = {"run": run.pk, "epoch": lease.epoch, "dry_run": dry_run}
    try:
        with fenced(lease.epoch):
            _retire_superseded_repairs(lease.epoch)
        world = observe(renew=lease.renew)
        lease.renew()
        findings = diff(world)
        summary.update(_act(world, findings, lease, run, dry_run))
        outcome = summary.get("outcome", RunOutcome.COMPLETED)
    except (LeaseLost, FencedOut) as exc:
        logger.warning("reconcile cycle %s stopped: %s", run.pk, exc)
        outcome, summary["error"] = RunOutcome.LEASE_LOST, str(exc)
    except Exception as exc:  # recorded on the run; the next cycle starts afresh
        logger.exception("reconcile cycle %s failed", run.pk)
        outcome, summary["error"] = RunOutcome.ERROR, f"{type(exc).__name__}: {exc}"
    finally:
        lease.release()
    summary["error"] = redact_text(summary.get("error", ""))[:2000]
    ControllerRun.objects.filter(pk=run.pk).update(
        finished_at=Now(), outcome=outcome, counts=summary.get("counts", {}),
        sources=summary.get("sources", {}), calls=summary.get("calls", {}),
        error=summary["error"])
    summary["outcome"] = outcome
    _report_cycle(run, outcome, summary["error"])
    return summary


def _report_cycle(run: ControllerRun, outcome: str, error: str) -> None:
    """A cycle that errors is an outage of the reconciler itself: tell the operator once (the
    alert is deduped by key) and say so when a cycle completes again."""
    if outcome == RunOutcome.ERROR:
        notify_warning("Reconciler cycles are failing",
                       f"Cycle {run.pk} stopped with an error; until a cycle completes, drift "
                       "is neither found nor repaired.",
                       fields=[{"name": "error", "value": error or "-"}],
                       alert_key=CYCLE_ALERT_KEY)
    elif outcome in (RunOutcome.COMPLETED, RunOutcome.MASS_DRIFT):
        alert_resolve(CYCLE_ALERT_KEY, body=f"Cycle {run.pk} completed.")


def _retire_superseded_repairs(epoch: int) -> None:
    """Repairs queued by an older epoch would be fenced out anyway: free their slots now, so
    this cycle can queue them again (a lost message must not block a repair for ever)."""
    repairs_supersede(epoch=epoch)
    cutoff = db_now() - timedelta(seconds=settings.RECONCILER_LEASE_SECONDS * 5)
    repairs_abandon(epoch=epoch, started_before=cutoff)


def _act(world: World, findings: list[FindingSpec], lease: Lease, run: ControllerRun,
         dry_run: bool) -> dict[str, Any]:
    counts: Counter[str] = Counter(f.finding_type for f in findings)
    repairs_wanted = [f for f in findings if f.action != Action.NOTIFY
                      and f.level in settings.RECONCILER_ENABLED_LEVELS]
    limit = max(settings.RECONCILER_MASS_DRIFT_MIN,
                int(settings.RECONCILER_MASS_DRIFT_FRACTION * max(1, len(world.instances))))
    mass_drift = len(repairs_wanted) > limit
    result: dict[str, Any] = {"sources": world.sources, "calls": world.calls}
    with fenced(lease.epoch):
        observed = _record_observations(world)
        new_keys = _record_findings(world, findings)
        _resolve_cleared(world, findings)
        for source, problem in world.problems.items():
            notify_critical(f"Reconciler: {source} is unknown",
                            f"{problem}. No findings depend on it until it is healthy again.",
                            alert_key=f"source:{source}")
        for source, health in world.sources.items():
            if health == Health.HEALTHY:
                alert_resolve(f"source:{source}", body=f"{source} is healthy again.")
        if mass_drift:
            notify_critical(
                "Reconciler: mass drift, no repairs",
                f"{len(repairs_wanted)} repairs wanted in one cycle (limit {limit}); none "
                "was made. Look at the sources before enabling anything.",
                fields=[{"name": t, "value": str(n)} for t, n in counts.most_common(25)],
                alert_key="mass-drift")
        else:
            alert_resolve("mass-drift")
        decided = Counter()
        for finding in findings:
            decided[_decide(finding, lease.epoch, run, dry_run, mass_drift,
                            new=finding.key in new_keys, world=world)] += 1
    lease.renew()
    result["counts"] = {"findings": dict(counts), "decisions": dict(decided),
                        "servers": len(world.instances), "observations": observed}
    if mass_drift:
        result["outcome"] = RunOutcome.MASS_DRIFT
    return result


def _record_observations(world: World) -> dict[str, int]:
    """Keep ServerObservation in step with what this cycle saw: power and node where Proxmox
    was healthy, edge parts where the edge was observed. Only rows whose values changed are
    written (an unchanged fleet costs one read); a source that was unknown leaves its values as
    they were (the status says how old they are)."""
    stored = {str(o.instance_id): o for o in ServerObservation.objects.all()}
    created, changed = [], []
    for iid, inst in world.instances.items():
        row = stored.get(iid)
        fresh = row is None
        if fresh:
            row = ServerObservation(instance_id=iid)
        dirty = False
        if world.proxmox is not None and inst["vmid"]:
            ct = world.proxmox.get(inst["vmid"])
            power = str(ct.get("status") or "") if ct else "absent"
            node = str(ct.get("node") or "") if ct else ""
            if (row.power, row.node) != (power, node):
                if row.power != power:
                    row.power_since = world.now
                row.power, row.node, dirty = power, node, True
        if world.edge is not None:
            obs = world.edge.by_server.get(iid)
            edge = dict(obs.parts) if obs is not None else {}
            if row.edge != edge:
                row.edge, row.edge_since, dirty = edge, world.now, True
        if fresh and dirty:
            created.append(row)
        elif dirty:
            changed.append(row)
    ServerObservation.objects.bulk_create(created, batch_size=1000, ignore_conflicts=True)
    ServerObservation.objects.bulk_update(
        changed, ["power", "power_since", "node", "edge", "edge_since"], batch_size=1000)
    _record_firewalls(world)
    return {"created": len(created), "changed": len(changed)}


def _record_firewalls(world: World) -> None:
    """Store the firewall verdicts this cycle checked, with when (the database's clock, as
    `world.now`): the next cycles check the longest unchecked first."""
    if not world.firewalls_checked:
        return
    rows = []
    for iid in world.firewalls_checked:
        row = ServerObservation(instance_id=iid, firewall=world.firewalls[iid],
                                firewall_checked_at=world.now)
        rows.append(row)
    ServerObservation.objects.bulk_create(rows, batch_size=1000, ignore_conflicts=True)
    ServerObservation.objects.bulk_update(rows, ["firewall", "firewall_checked_at"],
                                          batch_size=1000)


def _record_findings(world: World, findings: list[FindingSpec]) -> set[str]:
    """Upsert the findings of this cycle; alert once for each new one. Returns new keys."""
    existing = {f.key: f for f in Finding.objects.filter(key__in=[f.key for f in findings])}
    new_keys = set()
    to_update = []
    for spec in findings:
        row = existing.get(spec.key)
        if row is None or not row.open:
            new_keys.add(spec.key)
        if row is None:
            row = Finding(key=spec.key, finding_type=spec.finding_type, level=spec.level,
                          action=spec.action, instance_id=spec.instance_id,
                          subject=spec.subject, details=_jsonable(spec.details),
                          last_seen=world.now)
            existing[spec.key] = row
            row.save()
        else:
            row.open, row.resolved_at, row.last_seen = True, None, world.now
            row.details = _jsonable(spec.details)
            row.seen_count += 1
            to_update.append(row)
    if to_update:
        Finding.objects.bulk_update(to_update, ["open", "resolved_at", "last_seen", "details",
                                                "seen_count"])
    for spec in findings:
        if spec.key in new_keys:
            _alert(spec)
    return new_keys


def _alert(spec: FindingSpec) -> None:
    slug = spec.details.get("slug") or spec.subject
    title = f"{spec.finding_type.replace('_', ' ')}: {slug}"
    body = (f"Recommended action: {spec.action} (level {spec.level}"
            f"{'' if spec.level in settings.RECONCILER_ENABLED_LEVELS else ', not enabled'}).")
    fields = [{"name": k, "value": str(v)} for k, v in spec.details.items()][:20]
    notify = notify_critical if spec.finding_type in CRITICAL_FINDINGS else notify_warning
    notify(title, body, fields=fields, alert_key=f"finding:{spec.key}",
           subject=spec.instance_id or "")


def _resolve_cleared(world: World, findings: list[FindingSpec]) -> None:
    """Open findings not seen this cycle are resolved — if the sources they depend on were
    healthy (unknown is not absent)."""
    if any(health != Health.HEALTHY for health in world.sources.values()):
        return
    seen = {f.key for f in findings}
    cleared = list(Finding.objects.filter(open=True).exclude(key__in=seen))
    for row in cleared:
        alert_resolve(f"finding:{row.key}", body="The reconciler no longer sees it.")
    if cleared:
        Finding.objects.filter(pk__in=[r.pk for r in cleared]).update(open=False,
                                                                      resolved_at=Now())


def _jsonable(data: dict[str, Any]) -> dict[str, Any]:
    """JSON-safe and redacted: what the reconciler stores about what it saw."""
    return redact({k: (v.isoformat() if hasattr(v, "isoformat") else v)
                   for k, v in data.items()})


def _decide(f: FindingSpec, epoch: int, run: ControllerRun, dry_run: bool, mass_drift: bool,
            *, new: bool, world: World) -> str:
    """What to do about one finding; returns the decision (for the run's counts)."""
    if f.action == Action.NOTIFY:
        return Decision.NOTIFIED
    base = {"finding_type": f.finding_type, "action": f.action, "level": f.level,
            "instance_id": f.instance_id, "subject": f.subject, "epoch": epoch, "run": run,
            "before": _jsonable(f.details)}
    if dry_run:
        RepairEvent.objects.create(**base, dry_run=True, state=RepairState.PROPOSED,
                                   reason="dry run")
        return Decision.PROPOSED
    refusal = None
    if f.level not in settings.RECONCILER_ENABLED_LEVELS:
        refusal = f"level {f.level} is not enabled"
    elif mass_drift:
        refusal = "mass-drift guard"
    elif f.instance_id and world.instances.get(f.instance_id, {}).get("suspended"):
        refusal = "server is suspended"
    elif f.instance_id and _over_budget(f.instance_id):
        refusal = (f"repair budget of {settings.RECONCILER_REPAIR_BUDGET_PER_HOUR}/hour "
                   "used up")
    else:
        refusal = _breaker_refusal(f.action)
    if refusal:
        if new or not RepairEvent.objects.filter(subject=f.subject, action=f.action,
                                                 state=RepairState.BLOCKED,
                                                 reason=refusal).exists():
            RepairEvent.objects.create(**base, state=RepairState.BLOCKED, reason=refusal)
            if refusal != "mass-drift guard":
                notify_warning(f"Repair refused: {f.action} for {f.details.get('slug', f.subject)}",
                               f"{f.finding_type}: {refusal}. An operator has to look.",
                               alert_key=f"refused:{f.key}:{refusal.split(' ')[0]}")
        return Decision.BLOCKED
    slot = f"{f.subject}:{f.action}"
    try:
        with transaction.atomic():
            event = RepairEvent.objects.create(**base, state=RepairState.QUEUED,
                                               active_slot=slot)
    except IntegrityError:
        return Decision.ALREADY_ACTIVE
    transaction.on_commit(lambda: _enqueue_repair(event.pk))
    return Decision.QUEUED


def _over_budget(instance_id: str) -> bool:
    since = timezone.now() - timedelta(hours=1)
    used = RepairEvent.objects.filter(
        instance_id=instance_id, created_at__gte=since,
        state__in=SPENT_REPAIR_STATES).count()
    return used >= settings.RECONCILER_REPAIR_BUDGET_PER_HOUR


def _breaker_refusal(action: str) -> str | None:
    breaker = Breaker.objects.filter(action=action).first()
    if breaker is None or breaker.state == BreakerState.CLOSED:
        return None
    cooled = breaker.opened_at and timezone.now() - breaker.opened_at >= timedelta(
        seconds=settings.RECONCILER_BREAKER_COOLDOWN_SECONDS)
    probing = RepairEvent.objects.filter(action=action, state__in=ACTIVE_REPAIR_STATES).exists()
    if breaker.state == BreakerState.OPEN and cooled and not probing:
        Breaker.objects.filter(pk=action, state=BreakerState.OPEN).update(
            state=BreakerState.HALF_OPEN)
        return None  # this one repair is the probe
    if breaker.state == BreakerState.HALF_OPEN and not probing:
        return None
    return f"breaker for {action} is {breaker.state}"


#: The task that runs one repair (reconciler/tasks.py), sent by name and routed by zlh/celery.py.
REPAIR_TASK = "reconciler.repair"


def _enqueue_repair(repair_id: int) -> None:
    try:
        current_app.send_task(REPAIR_TASK, args=[repair_id])
    except Exception:  # the next cycle retires and re-queues it
        logger.warning("could not enqueue repair %s", repair_id)


# --- running one repair ------------------------------------------------------------------------
def repair_run(*, repair_id: int) -> str:
    """Claim a queued repair, run it, record what was observed, update its breaker."""
    from .repairs import execute

    if not repair_claim(repair_id=repair_id):
        return "not-claimed"
    event = RepairEvent.objects.get(pk=repair_id)
    outcome = execute(event)
    repair_end(repair_id=repair_id, state=outcome.state,
               reason=redact_text(outcome.reason)[:300], after=redact(_jsonable(outcome.after)),
               before=redact(_jsonable({**event.before, **outcome.before})))
    _record_breaker(event, outcome.state, outcome.reason)
    slug = event.before.get("slug", event.subject)
    if outcome.state == RepairState.SUCCEEDED and event.action == Action.START_NODE_SERVERS:
        # One message for the node: its finding's alert, resolved once the servers run again.
        pass
    elif outcome.state == RepairState.SUCCEEDED:
        notify_info(f"Repaired: {event.action} for {slug}",
                    f"{event.finding_type}; post-check: {outcome.after}")
    elif outcome.state in (RepairState.FAILED, RepairState.ERRORED):
        notify_warning(f"Repair {outcome.state}: {event.action} for {slug}",
                       f"{event.finding_type}: {outcome.reason or 'post-check did not confirm'}",
                       alert_key=f"repair-failed:{event.subject}:{event.action}")
    return outcome.state


def _record_breaker(event: RepairEvent, state: str, reason: str) -> None:
    if state not in (RepairState.SUCCEEDED, RepairState.FAILED, RepairState.ERRORED):
        return
    Breaker.objects.get_or_create(action=event.action)
    with transaction.atomic():
        breaker = Breaker.objects.select_for_update().get(action=event.action)
        if state == RepairState.SUCCEEDED:
            if breaker.state != BreakerState.CLOSED:
                alert_resolve(f"breaker:{event.action}", body="A probe repair succeeded.")
            breaker.state, breaker.consecutive_failures, breaker.opened_at = (
                BreakerState.CLOSED, 0, None)
        else:
            breaker.consecutive_failures += 1
            breaker.last_failure = redact_text(reason)[:1000]
            if breaker.state == BreakerState.HALF_OPEN or (
                    breaker.consecutive_failures >= settings.RECONCILER_BREAKER_THRESHOLD):
                breaker.state, breaker.opened_at = BreakerState.OPEN, timezone.now()
                notify_critical(f"Breaker open: {event.action}",
                                f"{breaker.consecutive_failures} consecutive failures; last: "
                                f"{reason}. Repairs of this kind are paused.",
                                alert_key=f"breaker:{event.action}")
        breaker.save()


def breaker_reset(*, action: str) -> None:
    """Operator: close a breaker by hand."""
    Breaker.objects.filter(action=action).update(state=BreakerState.CLOSED,
                                                 consecutive_failures=0, opened_at=None)
    alert_resolve(f"breaker:{action}", body="Reset by an operator.")


def preview_servers(*, instance_ids: list[str]) -> list[dict[str, Any]]:
    """What the reconciler would find and do for these servers right now: observe and diff,
    no lease, no writes (the operator's "reconcile this server now" preview)."""
    world = observe()
    wanted = {str(i) for i in instance_ids}
    rows = []
    for f in diff(world):
        if f.instance_id in wanted:
            enabled = f.level in settings.RECONCILER_ENABLED_LEVELS
            rows.append({"server": world.instances[f.instance_id]["slug"],
                         "finding": f.finding_type, "action": f.action, "level": f.level,
                         "would_repair": (f.action != Action.NOTIFY and enabled
                                          and not settings.RECONCILER_DRY_RUN),
                         "details": _jsonable(f.details)})
    return [{"sources": world.sources}] + rows
