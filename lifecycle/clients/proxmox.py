"""Proxmox VE through proxmoxer, with API-token auth and PVE's errors classified.

PVE reports almost every failure as HTTP 500 with the reason in the status line ("CT 101 already
exists on node 'pve1'", "Configuration file '…' does not exist", "CT is locked (create)", "can't
lock file … got timeout"); task failures only show in the task's `exitstatus`. This module turns
both into ProxmoxError with a `kind` and a `retryable` flag, so the flows never parse strings.

Answers are bounded (size cap and whole-call deadline, core/http.py, mounted on proxmoxer's
session) and checked against the schemas below: a listing with a row of the wrong shape, an HTML
page where JSON belongs (proxmoxer hands that over as `{"errors": b"…"}`) or a task status
without a status is a retryable `bad_answer`, never a KeyError in a flow or the reconciler.
"""
from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from enum import StrEnum
from typing import Any
from urllib.parse import urlsplit

import pydantic
import requests
from django.conf import settings
from proxmoxer import ProxmoxAPI, ResourceException

from core.errors import ExternalError
from core.http import (
    Answer,
    BadAnswer,
    bounded_session,
    ca_bundle,
    clipped,
    parse,
    per_thread_client,
)

logger = logging.getLogger(__name__)


class PowerState(StrEnum):
    """A container's `status` as PVE reports it (`/status/current`, `/cluster/resources`)."""

    RUNNING = "running"
    STOPPED = "stopped"


class TaskStatus(StrEnum):
    RUNNING = "running"
    STOPPED = "stopped"  # finished; `exitstatus` says how


class PveErrorKind(StrEnum):
    """What a Proxmox failure means, classified once (ProxmoxError.kind)."""

    NOT_FOUND = "not_found"
    ALREADY_EXISTS = "already_exists"
    LOCKED = "locked"
    LOCK_TIMEOUT = "lock_timeout"
    NOT_RUNNING = "not_running"
    ALREADY_RUNNING = "already_running"
    SHUTDOWN_TIMEOUT = "shutdown_timeout"
    TIMEOUT = "timeout"
    UNAVAILABLE = "unavailable"
    AUTH = "auth"
    FORBIDDEN = "forbidden"
    BAD_REQUEST = "bad_request"
    TASK_FAILED = "task_failed"
    BAD_ANSWER = "bad_answer"  # not JSON, the wrong shape, too large or too slow
    ERROR = "error"


class ProxmoxError(ExternalError):
    """`kind` is a PveErrorKind."""

    system = "proxmox"


# (substring of PVE's message, kind, retryable), first match wins.
_CLASSIFY: tuple[tuple[str, str, bool], ...] = (
    ("does not exist", PveErrorKind.NOT_FOUND, False),
    ("already exists", PveErrorKind.ALREADY_EXISTS, False),
    ("got timeout", PveErrorKind.LOCK_TIMEOUT, True),
    ("is locked", PveErrorKind.LOCKED, True),
    ("already running", PveErrorKind.ALREADY_RUNNING, False),
    ("not running", PveErrorKind.NOT_RUNNING, False),
    ("no quorum", PveErrorKind.UNAVAILABLE, True),
    ("container did not stop", PveErrorKind.SHUTDOWN_TIMEOUT, True),
)


def classify_message(message: str, status: int | None = None) -> tuple[str, bool]:
    low = message.lower()
    for needle, kind, retryable in _CLASSIFY:
        if needle in low:
            return kind, retryable
    if status in (401,):
        return PveErrorKind.AUTH, False
    if status in (403,):
        return PveErrorKind.FORBIDDEN, False
    if status == 400:
        return PveErrorKind.BAD_REQUEST, False
    if status is not None and status >= 500:
        return PveErrorKind.UNAVAILABLE, True
    return PveErrorKind.ERROR, False


def _error_from(exc: Exception, what: str) -> ProxmoxError:
    if isinstance(exc, BadAnswer):
        return ProxmoxError(f"{what}: {exc}", kind=PveErrorKind.BAD_ANSWER, retryable=True)
    if isinstance(exc, ResourceException):
        message = f"{exc.content or exc.status_message}"
        if exc.errors:
            message += f" {exc.errors}"
        kind, retryable = classify_message(message, exc.status_code)
        return ProxmoxError(f"{what}: {exc.status_code} {message}", kind=kind,
                            retryable=retryable)
    if isinstance(exc, requests.exceptions.Timeout):
        return ProxmoxError(f"{what}: timed out ({exc.__class__.__name__})",
                            kind=PveErrorKind.TIMEOUT, retryable=True)
    if isinstance(exc, requests.exceptions.RequestException):
        return ProxmoxError(f"{what}: {exc.__class__.__name__}", kind=PveErrorKind.UNAVAILABLE,
                            retryable=True)
    return ProxmoxError(f"{what}: {exc!r}", kind=PveErrorKind.ERROR, retryable=True)


def _plain(value: Any) -> Any:
    """Checked answers back as the plain data the callers read (absent fields left out)."""
    if isinstance(value, pydantic.BaseModel):
        return value.model_dump(exclude_none=True)
    if isinstance(value, list):
        return [_plain(v) for v in value]
    return value


def bool01(value: bool) -> int:
    """PVE's schema takes booleans as 1/0."""
    return 1 if value else 0


def parse_tags(tags: str | None) -> set[str]:
    """PVE normalises tags (lower-case, sorted, ';'-joined); accept any of ';', ',', ' '."""
    if not tags:
        return set()
    for sep in (",", " "):
        tags = tags.replace(sep, ";")
    return {t.strip().lower() for t in tags.split(";") if t.strip()}


class ClusterResource(Answer):
    """One row of `/cluster/resources?type=vm` (the fields we read)."""

    vmid: int = pydantic.Field(gt=0)
    type: str = pydantic.Field(max_length=16)
    node: str = pydantic.Field(min_length=1, max_length=64)
    status: str | None = pydantic.Field(default=None, max_length=32)
    tags: str | None = pydantic.Field(default=None, max_length=4096)
    name: str | None = pydantic.Field(default=None, max_length=255)


class ContainerConfig(Answer):
    """`/nodes/{node}/lxc/{vmid}/config`: an object; the fields we read have their types."""

    model_config = pydantic.ConfigDict(extra="allow", frozen=True)

    tags: str | None = pydantic.Field(default=None, max_length=4096)
    lock: str | None = pydantic.Field(default=None, max_length=32)
    hostname: str | None = None


class PendingEntry(Answer):
    """One key of `/nodes/{node}/lxc/{vmid}/pending`."""

    key: str = pydantic.Field(max_length=64)
    value: Any = None
    pending: Any = None
    delete: int | None = None


class ContainerStatus(Answer):
    status: str = pydantic.Field(max_length=32)


class TaskState(Answer):
    status: str = pydantic.Field(max_length=32)
    exitstatus: str | None = pydantic.Field(default=None, max_length=4096)


class FirewallOptions(Answer):
    """`…/firewall/options` of a container or of the cluster (the fields we read)."""

    enable: int | None = None
    policy_in: str | None = pydantic.Field(default=None, max_length=16)
    policy_out: str | None = pydantic.Field(default=None, max_length=16)


class FirewallRule(Answer):
    """One rule of `…/firewall/rules`. Free text is clipped: anyone with access to the
    Proxmox panel may have written it."""

    pos: int = pydantic.Field(ge=0, lt=100_000)
    type: str = pydantic.Field(max_length=16)
    action: str = pydantic.Field(max_length=64)
    enable: int | None = None
    proto: str | None = pydantic.Field(default=None, max_length=32)
    dport: str | None = pydantic.Field(default=None, max_length=256)
    sport: str | None = pydantic.Field(default=None, max_length=256)
    source: str | None = pydantic.Field(default=None, max_length=4096)
    dest: str | None = pydantic.Field(default=None, max_length=4096)
    macro: str | None = pydantic.Field(default=None, max_length=64)
    iface: str | None = pydantic.Field(default=None, max_length=32)
    comment: clipped(512) | None = None  # type: ignore[valid-type]
    digest: str | None = pydantic.Field(default=None, max_length=64)


class IpsetName(Answer):
    name: str = pydantic.Field(min_length=1, max_length=64)


class IpsetEntry(Answer):
    cidr: str = pydantic.Field(min_length=1, max_length=64)
    nomatch: int | None = None


class BackupVolume(Answer):
    """One item of `…/storage/{storage}/content?content=backup`. Notes are free text anyone with
    access to the storage may have written: clipped."""

    volid: str = pydantic.Field(min_length=1, max_length=512)
    size: int | None = pydantic.Field(default=None, ge=0)
    ctime: int | None = pydantic.Field(default=None, ge=0)
    vmid: int | None = pydantic.Field(default=None, ge=0)
    notes: clipped(1024) | None = None  # type: ignore[valid-type]
    protected: int | None = None


#: A UPID: "UPID:node:pid:pstart:starttime:type:id:user:" (PVE's task id).
Upid = pydantic.constr(pattern=r"^UPID:[^:]+:", max_length=512)


@dataclass(frozen=True)
class TaskResult:
    upid: str
    ok: bool
    exitstatus: str


_PROXMOX_SETTINGS = ("PROXMOX_URL", "PROXMOX_TOKEN_ID", "PROXMOX_TOKEN_SECRET",
                     "PROXMOX_VERIFY_SSL", "PROXMOX_TIMEOUT", "PROXMOX_MAX_ANSWER_BYTES")


class ProxmoxClient:
    def __init__(self, *, url: str, token_id: str, token_secret: str, verify_ssl: bool | str,
                 timeout: float) -> None:
        parts = urlsplit(url)
        user, _, token_name = token_id.partition("!")
        if verify_ssl is True:
            verify_ssl = ca_bundle()  # proxmoxer passes it with every call
        self.api = ProxmoxAPI(
            parts.hostname, port=parts.port or 8006, user=user, token_name=token_name,
            token_value=token_secret, verify_ssl=verify_ssl, timeout=timeout,
        )
        # proxmoxer reads bodies through this session: bound every answer in size and time.
        bounded_session(max_bytes=settings.PROXMOX_MAX_ANSWER_BYTES,
                        session=self.api._store["session"], system="proxmox")
        self.calls = 0

    @classmethod
    def shared(cls) -> "ProxmoxClient":
        """This thread's client for the settings in force: a worker's flows reuse its HTTP
        session (connection and TLS) instead of opening one per step. Per thread, since a
        session is not to be shared between threads."""
        return per_thread_client("proxmox", _PROXMOX_SETTINGS, cls.from_settings)

    @classmethod
    def from_settings(cls) -> "ProxmoxClient":
        verify: bool | str = settings.PROXMOX_VERIFY_SSL
        if str(verify).lower() in ("true", "1", "yes"):
            verify = True
        elif str(verify).lower() in ("false", "0", "no"):
            verify = False
        return cls(url=settings.PROXMOX_URL, token_id=settings.PROXMOX_TOKEN_ID,
                   token_secret=settings.PROXMOX_TOKEN_SECRET, verify_ssl=verify,
                   timeout=settings.PROXMOX_TIMEOUT)

    def _call(self, what: str, fn: Callable[[], Any], schema: Any = None) -> Any:
        """`fn()`'s answer, checked against `schema` (when given) and returned as plain data."""
        self.calls += 1
        try:
            try:
                data = fn()
            except (KeyError, IndexError, TypeError, ValueError) as exc:
                # proxmoxer reads `answer["data"]` itself: JSON without PVE's envelope.
                raise BadAnswer(f"the answer has no PVE envelope ({type(exc).__name__})") from exc
            if isinstance(data, dict) and isinstance(data.get("errors"), bytes):
                raise BadAnswer("the answer is not JSON")
            if schema is None:
                return data
            return _plain(parse(schema, data, what=what))
        except (ResourceException, requests.exceptions.RequestException) as exc:
            raise _error_from(exc, what) from exc

    # --- reads ----------------------------------------------------------------------------------
    def ct_config(self, node: str, vmid: int) -> dict[str, Any] | None:
        """The container's config, or None when it does not exist (on that node)."""
        try:
            return self._call(f"read config of CT {vmid}",
                              lambda: self.api.nodes(node).lxc(vmid).config.get(),
                              ContainerConfig)
        except ProxmoxError as err:
            if err.kind == PveErrorKind.NOT_FOUND:
                return None
            raise

    def ct_status(self, node: str, vmid: int) -> dict[str, Any] | None:
        try:
            return self._call(f"read status of CT {vmid}",
                              lambda: self.api.nodes(node).lxc(vmid).status.current.get(),
                              ContainerStatus)
        except ProxmoxError as err:
            if err.kind == PveErrorKind.NOT_FOUND:
                return None
            raise

    def cluster_resources(self) -> list[dict[str, Any]]:
        """Every guest in the cluster (qemu and lxc), on every node."""
        return self._call("list cluster resources",
                          lambda: self.api.cluster.resources.get(type="vm"),
                          list[ClusterResource])

    # --- firewall (PVE keeps a guest's firewall by VMID: it travels with a migration) -------------
    def cluster_firewall_options(self) -> dict[str, Any]:
        return self._call("read the cluster firewall options",
                          lambda: self.api.cluster.firewall.options.get(), FirewallOptions)

    def ipsets(self) -> list[str]:
        """The names of the cluster's IP sets."""
        rows = self._call("list the cluster IP sets",
                          lambda: self.api.cluster.firewall.ipset.get(), list[IpsetName])
        return [row["name"] for row in rows]

    def ipset(self, name: str) -> list[dict[str, Any]]:
        return self._call(f"read IP set {name}",
                          lambda: self.api.cluster.firewall.ipset(name).get(), list[IpsetEntry])

    def ipset_create(self, name: str, *, comment: str) -> None:
        self._call(f"create IP set {name}",
                   lambda: self.api.cluster.firewall.ipset.post(name=name, comment=comment))

    def ipset_add(self, name: str, cidr: str) -> None:
        self._call(f"add {cidr} to IP set {name}",
                   lambda: self.api.cluster.firewall.ipset(name).post(cidr=cidr))

    def ipset_remove(self, name: str, cidr: str) -> None:
        self._call(f"remove {cidr} from IP set {name}",
                   lambda: self.api.cluster.firewall.ipset(name)(cidr).delete())

    def ct_firewall_options(self, node: str, vmid: int) -> dict[str, Any]:
        return self._call(f"read the firewall options of CT {vmid}",
                          lambda: self.api.nodes(node).lxc(vmid).firewall.options.get(),
                          FirewallOptions)

    def ct_firewall_options_set(self, node: str, vmid: int, **options: Any) -> None:
        self._call(f"set the firewall options of CT {vmid}",
                   lambda: self.api.nodes(node).lxc(vmid).firewall.options.put(**options))

    def ct_firewall_rules(self, node: str, vmid: int) -> list[dict[str, Any]]:
        """The container's rules in order (`pos` 0 is evaluated first)."""
        return self._call(f"read the firewall rules of CT {vmid}",
                          lambda: self.api.nodes(node).lxc(vmid).firewall.rules.get(),
                          list[FirewallRule])

    def ct_firewall_rule_add(self, node: str, vmid: int, **rule: Any) -> None:
        """Add a rule (PVE puts it first)."""
        self._call(f"add a firewall rule to CT {vmid}",
                   lambda: self.api.nodes(node).lxc(vmid).firewall.rules.post(**rule))

    def ct_firewall_rule_delete(self, node: str, vmid: int, pos: int, *, digest: str) -> None:
        """Delete the rule at `pos`, only if the rules are still those `digest` was read with
        (PVE refuses otherwise: someone changed them meanwhile)."""
        self._call(f"delete firewall rule {pos} of CT {vmid}",
                   lambda: self.api.nodes(node).lxc(vmid).firewall.rules(pos).delete(
                       digest=digest))

    def ct_config_set(self, node: str, vmid: int, *, digest: str | None = None,
                      **params: Any) -> None:
        """Change the container's config (synchronous for network options); with `digest`,
        only if the config is still the one read."""
        if digest:
            params["digest"] = digest
        self._call(f"change the config of CT {vmid}",
                   lambda: self.api.nodes(node).lxc(vmid).config.put(**params))

    def ct_pending(self, node: str, vmid: int) -> list[dict[str, Any]]:
        """`/pending`: each config key with its value and, when a change waits for the next
        start (a running container could not take it), `pending` (or `delete`)."""
        return self._call(f"read the pending changes of CT {vmid}",
                          lambda: self.api.nodes(node).lxc(vmid).pending.get(),
                          list[PendingEntry])

    def ct_resize(self, node: str, vmid: int, *, disk: str, size: str) -> str | None:
        """Grow a volume of the container (`size` absolute, e.g. "32G"; PVE refuses to
        shrink); a UPID, or None when PVE did it at once."""
        return self._call(f"resize {disk} of CT {vmid} to {size}",
                          lambda: self.api.nodes(node).lxc(vmid).resize.put(disk=disk,
                                                                            size=size),
                          Upid | None)

    # --- writes (each returns a UPID) -------------------------------------------------------------
    def ct_create(self, node: str, vmid: int, **params: Any) -> str:
        return self._call(f"create CT {vmid}",
                          lambda: self.api.nodes(node).lxc.post(vmid=vmid, **params), Upid)

    def ct_start(self, node: str, vmid: int) -> str:
        return self._call(f"start CT {vmid}",
                          lambda: self.api.nodes(node).lxc(vmid).status.start.post(), Upid)

    def ct_shutdown(self, node: str, vmid: int, *, timeout: int) -> str:
        return self._call(f"shut down CT {vmid}",
                          lambda: self.api.nodes(node).lxc(vmid).status.shutdown.post(
                              timeout=timeout), Upid)

    def ct_stop(self, node: str, vmid: int) -> str:
        return self._call(f"stop CT {vmid}",
                          lambda: self.api.nodes(node).lxc(vmid).status.stop.post(), Upid)

    def ct_destroy(self, node: str, vmid: int) -> str:
        return self._call(f"destroy CT {vmid}",
                          lambda: self.api.nodes(node).lxc(vmid).delete(
                              purge=bool01(True), **{"destroy-unreferenced-disks": bool01(True)}),
                          Upid)

    # --- backups (vzdump) --------------------------------------------------------------------------
    def vzdump(self, node: str, vmid: int, *, storage: str, notes: str,
               mode: str = "snapshot") -> str:
        """Back up one container into `storage`; `notes` become the archive's notes (PVE
        expands {{guestname}} and {{vmid}} in them). Never prunes (`remove=0`): which archives
        go is the control plane's decision."""
        return self._call(f"back up CT {vmid}",
                          lambda: self.api.nodes(node).vzdump.post(
                              vmid=str(vmid), storage=storage, mode=mode, compress="zstd",
                              remove=bool01(False), **{"notes-template": notes}), Upid)

    def backup_volumes(self, node: str, storage: str, *, vmid: int | None = None,
                       ) -> list[dict[str, Any]]:
        """The backup archives in `storage` (of container `vmid` when given)."""
        params: dict[str, Any] = {"content": "backup"}
        if vmid is not None:
            params["vmid"] = vmid
        return self._call(f"list the backups in {storage}",
                          lambda: self.api.nodes(node).storage(storage).content.get(**params),
                          list[BackupVolume])

    def volume_delete(self, node: str, storage: str, volid: str) -> str | None:
        """Remove a volume (a backup archive); a UPID, or None when PVE did it at once."""
        return self._call(f"delete {volid}",
                          lambda: self.api.nodes(node).storage(storage).content(volid).delete(),
                          Upid | None)

    # --- tasks ----------------------------------------------------------------------------------
    def task_wait(self, upid: str, *, timeout: float, on_tick: Callable[[], None] | None = None,
                  ) -> TaskResult:
        """Poll the task until it stops: fast at first (50 ms), backing off by 1.3× to 2 s (a
        task is seen ended at most about 30 % of its run late, or 2 s: its node's place is held
        until then), bounded by `timeout`. Tolerates PVE's brief 400 "no such task" right after
        dispatch."""
        node = upid.split(":")[1]
        deadline = time.monotonic() + timeout
        delay = 0.05
        while True:
            try:
                status = self._call("read task status",
                                    lambda: self.api.nodes(node).tasks(upid).status.get(),
                                    TaskState)
            except ProxmoxError as err:
                if err.kind != PveErrorKind.BAD_REQUEST and not err.retryable:
                    raise
                status = None
            if status and status.get("status") == TaskStatus.STOPPED:
                exit_status = str(status.get("exitstatus", ""))
                ok = exit_status == "OK" or exit_status.startswith("WARNINGS")
                return TaskResult(upid=upid, ok=ok, exitstatus=exit_status)
            if time.monotonic() >= deadline:
                raise ProxmoxError(f"task {upid} did not finish within {timeout:.0f}s",
                                   kind=PveErrorKind.TIMEOUT, retryable=True)
            if on_tick is not None:
                on_tick()
            time.sleep(delay)
            delay = min(2.0, delay * 1.3)

    def task_error(self, result: TaskResult, what: str) -> ProxmoxError:
        """A failed task as a classified error (its exitstatus is PVE's message)."""
        kind, retryable = classify_message(result.exitstatus)
        if kind == PveErrorKind.ERROR:
            kind, retryable = PveErrorKind.TASK_FAILED, False
        return ProxmoxError(f"{what}: task ended with '{result.exitstatus}'", kind=kind,
                            retryable=retryable)
