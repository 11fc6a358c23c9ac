"""factory-boy factories for the control plane's models: rows made directly, without the
services (no audit rows, no pool claims, no Celery messages). Use them to seed data for reads
(selectors, admin pages, list endpoints); use the services when the test is about a write.

    server = ContainerInstanceFactory(owner=alice, status="stopped")
    OperationFactory(instance=server, kind="start", state="queued")   # holds the active slot
    seeded = seed_server(owner=alice)                                 # server + related rows
"""
from __future__ import annotations

import hashlib
import ipaddress
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any

import factory
from django.contrib.auth import get_user_model
from django.contrib.auth.hashers import make_password
from django.utils import timezone
from factory.django import DjangoModelFactory

from lifecycle.choices import (
    ACTIVE_OPERATION_STATES,
    ActorKind,
    AllocationState,
    DesiredState,
    InstanceStatus,
    Kind,
    OperationKind,
    OperationState,
    Plan,
    PoolKind,
    Variant,
)
from lifecycle.models import (
    AccountQuota,
    Allocation,
    AllocationPool,
    ApiToken,
    AuditEvent,
    ContainerInstance,
    Node,
    Operation,
)
from notifications.choices import Channel, DeliveryState
from notifications.models import AlertState, ChannelState, Notification
from reconciler.choices import ACTION_LEVEL, Action, FindingType, RepairState, RunOutcome
from reconciler.models import Breaker, ControllerLease, ControllerRun, Finding, RepairEvent


TEST_PASSWORD = "pw-for-tests"


# --- accounts ------------------------------------------------------------------------------------
class UserFactory(DjangoModelFactory):
    class Meta:
        model = get_user_model()
        django_get_or_create = ("username",)
        skip_postgeneration_save = True

    username = factory.Sequence(lambda n: f"user{n}")
    email = factory.LazyAttribute(lambda o: f"{o.username}@example.com")
    first_name = factory.Faker("first_name")
    last_name = factory.Faker("last_name")
    # Unusable by default: hashing a real password costs ~0.3 s (PBKDF2), and the test client's
    # force_login / DRF's force_authenticate need none. `with_password=True` sets TEST_PASSWORD.
    password = factory.LazyFunction(lambda: make_password(None))
    is_staff = False
    is_superuser = False

    class Params:
        staff = factory.Trait(is_staff=True)
        superuser = factory.Trait(is_staff=True, is_superuser=True)
        with_password = factory.Trait(password=factory.django.Password(TEST_PASSWORD))


class AccountQuotaFactory(DjangoModelFactory):
    class Meta:
        model = AccountQuota
        django_get_or_create = ("user",)

    user = factory.SubFactory(UserFactory)
    max_servers = 100
    max_memory_mb = 1_000_000


class ApiTokenFactory(DjangoModelFactory):
    """A token row; its raw value (`<prefix>-secret-<n>`) is not stored, so it cannot be used to
    log in: use lifecycle.services.accounts.api_token_create for that."""

    class Meta:
        model = ApiToken

    user = factory.SubFactory(UserFactory)
    name = factory.Sequence(lambda n: f"token-{n}")
    prefix = factory.Sequence(lambda n: f"zlh_t{n:06d}"[:12])
    key_hash = factory.LazyAttribute(
        lambda o: hashlib.sha256(f"{o.prefix}-secret-{o.name}".encode()).hexdigest())


# --- placement -----------------------------------------------------------------------------------
def _subnet(n: int) -> ipaddress.IPv4Network:
    """A distinct /24 per node: 10.<200 + n // 250>.<n % 250>.0/24."""
    return ipaddress.IPv4Network(f"10.{200 + (n // 250) % 50}.{n % 250}.0/24")


class NodeFactory(DjangoModelFactory):
    class Meta:
        model = Node
        django_get_or_create = ("name",)

    name = factory.Sequence(lambda n: f"pve-f{n}")
    enabled = True
    memory_mb = 65536
    cores = 16
    allocated_memory_mb = 0
    subnet = factory.Sequence(lambda n: str(_subnet(n)))
    gateway = factory.LazyAttribute(lambda o: str(ipaddress.IPv4Network(o.subnet)[1]))
    port_range_start = 30000
    port_range_end = 30999


class AllocationPoolFactory(DjangoModelFactory):
    """A VMID pool by default (cluster-wide); `kind=ip` / `kind=port` pools belong to a node."""

    class Meta:
        model = AllocationPool

    kind = PoolKind.VMID
    node = factory.Maybe(
        factory.LazyAttribute(lambda o: o.kind == PoolKind.VMID),
        yes_declaration=None,
        no_declaration=factory.SubFactory(NodeFactory),
    )
    name = factory.Sequence(lambda n: f"pool-{n}")


class AllocationFactory(DjangoModelFactory):
    class Meta:
        model = Allocation

    pool = factory.SubFactory(AllocationPoolFactory)
    value = factory.Sequence(lambda n: 100_000 + n)
    state = AllocationState.FREE
    instance = None
    role = ""

    class Params:
        claimed = factory.Trait(
            state=AllocationState.CLAIMED,
            claimed_at=factory.LazyFunction(timezone.now),
        )
        quarantined = factory.Trait(
            state=AllocationState.QUARANTINED,
            released_at=factory.LazyFunction(timezone.now),
            quarantine_until=factory.LazyFunction(lambda: timezone.now() + timedelta(days=1)),
        )


# --- servers -------------------------------------------------------------------------------------
class ContainerInstanceFactory(DjangoModelFactory):
    """A placed game server (running by default). name == slug == live_slug, except that a purged
    server has no live_slug (the table's check constraint)."""

    class Meta:
        model = ContainerInstance

    owner = factory.SubFactory(UserFactory)
    name = factory.Sequence(lambda n: f"srv-{n}")
    slug = factory.SelfAttribute("name")
    live_slug = factory.LazyAttribute(
        lambda o: None if o.status == InstanceStatus.PURGED else o.slug)
    kind = Kind.GAME
    variant = factory.LazyAttribute(lambda o: Variant.VANILLA if o.kind == Kind.GAME else "")
    version = factory.LazyAttribute(lambda o: "1.21.1" if o.kind == Kind.GAME else "")
    runtime = factory.LazyAttribute(lambda o: "python" if o.kind == Kind.DEV else "")
    runtime_version = factory.LazyAttribute(lambda o: "3.12" if o.kind == Kind.DEV else "")
    plan = Plan.VANILLA
    memory_mb = 2048
    cores = 2
    disk_gb = 8
    node = factory.SubFactory(NodeFactory)
    vmid = factory.Sequence(lambda n: 5000 + n)
    ip = factory.LazyAttributeSequence(
        lambda o, n: str(ipaddress.IPv4Network(o.node.subnet)[10 + n % 240]) if o.node else None)
    ports = factory.LazyAttributeSequence(
        lambda o, n: {"game" if o.kind == Kind.GAME else "ide": 30000 + n % 1000})
    status = InstanceStatus.RUNNING
    desired_state = factory.LazyAttribute(
        lambda o: {InstanceStatus.STOPPED: DesiredState.STOPPED,
                   InstanceStatus.DELETED: DesiredState.DELETED,
                   InstanceStatus.PURGED: DesiredState.PURGED}.get(o.status,
                                                                   DesiredState.RUNNING))
    deleted_at = factory.LazyAttribute(
        lambda o: timezone.now() if o.status in (InstanceStatus.DELETED,
                                                 InstanceStatus.PURGED) else None)
    purge_after = factory.LazyAttribute(
        lambda o: o.deleted_at + timedelta(days=1) if o.deleted_at else None)

    class Params:
        dev = factory.Trait(kind=Kind.DEV)
        unplaced = factory.Trait(node=None, vmid=None, ip=None, ports={},
                                 status=InstanceStatus.PENDING)


class OperationFactory(DjangoModelFactory):
    """An operation; queued and running ones hold the server's active slot (one per server)."""

    class Meta:
        model = Operation

    instance = factory.SubFactory(ContainerInstanceFactory)
    kind = OperationKind.START
    state = OperationState.SUCCEEDED
    active_slot = factory.LazyAttribute(
        lambda o: o.instance.id if o.state in ACTIVE_OPERATION_STATES else None)
    step = factory.LazyAttribute(lambda o: "done" if o.state == OperationState.SUCCEEDED else "")
    attempt = 1
    requested_by = "tests"
    started_at = factory.LazyFunction(timezone.now)
    finished_at = factory.LazyAttribute(
        lambda o: None if o.state in ACTIVE_OPERATION_STATES else timezone.now())
    log = factory.LazyAttribute(lambda o: [{"at": "2030-01-01T00:00:00Z", "attempt": 1,
                                            "msg": f"{o.kind} {o.state}"}])


class AuditEventFactory(DjangoModelFactory):
    class Meta:
        model = AuditEvent

    actor_kind = ActorKind.SYSTEM
    actor_user = None
    actor_label = "tests"
    instance = factory.SubFactory(ContainerInstanceFactory)
    action = factory.LazyAttribute(lambda o: f"status:{o.to_status}" if o.to_status else "note")
    from_status = InstanceStatus.PENDING
    to_status = InstanceStatus.RUNNING
    data = factory.Dict({"note": factory.Faker("sentence", nb_words=4)})


# --- reconciler ----------------------------------------------------------------------------------
class ControllerRunFactory(DjangoModelFactory):
    class Meta:
        model = ControllerRun

    epoch = 1
    holder = "tests-host:1"
    outcome = RunOutcome.COMPLETED
    finished_at = factory.LazyFunction(timezone.now)
    sources = factory.Dict({"database": "healthy", "proxmox": "healthy"})
    counts = factory.Dict({"findings": {}, "decisions": {}})
    calls = factory.Dict({"proxmox": 1})


class FindingFactory(DjangoModelFactory):
    class Meta:
        model = Finding

    instance = factory.SubFactory(ContainerInstanceFactory)
    finding_type = FindingType.STATUS_DRIFT
    action = Action.SYNC_STATUS
    level = factory.LazyAttribute(lambda o: ACTION_LEVEL[o.action])
    subject = factory.LazyAttribute(lambda o: str(o.instance.id) if o.instance else "ct-9999")
    key = factory.LazyAttributeSequence(lambda o, n: f"{o.finding_type}:{o.subject}:{n}")
    details = factory.Dict({"observed": "stopped"})
    open = True
    last_seen = factory.LazyFunction(timezone.now)


class RepairEventFactory(DjangoModelFactory):
    class Meta:
        model = RepairEvent

    instance = factory.SubFactory(ContainerInstanceFactory)
    finding_type = FindingType.STATUS_DRIFT
    action = Action.SYNC_STATUS
    level = factory.LazyAttribute(lambda o: ACTION_LEVEL[o.action])
    subject = factory.LazyAttribute(lambda o: str(o.instance.id) if o.instance else "ct-9999")
    dry_run = False
    state = RepairState.SUCCEEDED
    epoch = 1
    run = factory.SubFactory(ControllerRunFactory)
    active_slot = None
    reason = "status synced"
    finished_at = factory.LazyFunction(timezone.now)


class BreakerFactory(DjangoModelFactory):
    class Meta:
        model = Breaker
        django_get_or_create = ("action",)

    action = factory.Iterator(list(Action.values))
    last_failure = "Proxmox said no"


class ControllerLeaseFactory(DjangoModelFactory):
    class Meta:
        model = ControllerLease
        django_get_or_create = ("name",)

    name = factory.Sequence(lambda n: f"lease-{n}")
    epoch = 1
    holder = "tests-host:1"
    acquired_at = factory.LazyFunction(timezone.now)


# --- notifications -------------------------------------------------------------------------------
class NotificationFactory(DjangoModelFactory):
    class Meta:
        model = Notification

    channel = Channel.LIFECYCLE
    title = factory.Faker("sentence", nb_words=5)
    body = factory.Faker("paragraph", nb_sentences=2)
    subject = ""
    state = DeliveryState.SENT
    attempts = 1
    sent_at = factory.LazyFunction(timezone.now)


class ChannelStateFactory(DjangoModelFactory):
    class Meta:
        model = ChannelState
        django_get_or_create = ("channel",)

    channel = factory.Iterator(list(Channel.values))


class AlertStateFactory(DjangoModelFactory):
    class Meta:
        model = AlertState

    alert_key = factory.Sequence(lambda n: f"alert:{n}")
    channel = Channel.WARNING
    firing = True
    title = factory.Faker("sentence", nb_words=4)
    first_fired_at = factory.LazyFunction(timezone.now)
    last_fired_at = factory.LazyFunction(timezone.now)


# --- a server with everything around it ----------------------------------------------------------
@dataclass
class SeededServer:
    server: ContainerInstance
    operations: list[Operation] = field(default_factory=list)
    allocations: list[Allocation] = field(default_factory=list)
    findings: list[Finding] = field(default_factory=list)
    repairs: list[RepairEvent] = field(default_factory=list)
    audit: list[AuditEvent] = field(default_factory=list)
    notifications: list[Notification] = field(default_factory=list)


def pools_for(node: Node) -> dict[str, AllocationPool]:
    """The node's IP and port pools and the cluster's VMID pool (made on first use)."""
    vmid = AllocationPool.objects.filter(kind=PoolKind.VMID, node=None).first() or \
        AllocationPoolFactory(kind=PoolKind.VMID, name="vmids")
    ip = AllocationPool.objects.filter(kind=PoolKind.IP, node=node).first() or \
        AllocationPoolFactory(kind=PoolKind.IP, node=node, name=f"{node.name}-ips")
    port = AllocationPool.objects.filter(kind=PoolKind.PORT, node=node).first() or \
        AllocationPoolFactory(kind=PoolKind.PORT, node=node, name=f"{node.name}-ports")
    return {"vmid": vmid, "ip": ip, "port": port}


def seed_server(*, operations: int = 2, findings: int = 1, repairs: int = 1, audit: int = 2,
                notifications: int = 1, **server_kwargs: Any) -> SeededServer:
    """A placed server with its claimed allocations (VMID, IP, port), finished operations, open
    findings, repair events, audit rows and notifications."""
    server = ContainerInstanceFactory(**server_kwargs)
    seeded = SeededServer(server=server)
    if server.node is not None:
        pools = pools_for(server.node)
        port_role, port = next(iter(server.ports.items()))
        for role, pool, value in (("vmid", pools["vmid"], server.vmid),
                                  ("ip", pools["ip"], int(ipaddress.IPv4Address(server.ip))),
                                  (port_role, pools["port"], port)):
            seeded.allocations.append(AllocationFactory(pool=pool, value=value, instance=server,
                                                        role=role, claimed=True))
    kinds = [OperationKind.PROVISION, OperationKind.STOP, OperationKind.START]
    seeded.operations = [OperationFactory(instance=server, kind=kinds[i % len(kinds)])
                         for i in range(operations)]
    seeded.findings = FindingFactory.create_batch(findings, instance=server)
    seeded.repairs = RepairEventFactory.create_batch(repairs, instance=server)
    seeded.audit = AuditEventFactory.create_batch(audit, instance=server)
    seeded.notifications = NotificationFactory.create_batch(notifications,
                                                            subject=str(server.id))
    return seeded
