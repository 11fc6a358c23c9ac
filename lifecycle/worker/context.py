"""What a flow gets: the claimed operation, its server, and bookkeeping guarded by the lease.

Every write here names the claiming worker: a worker whose lease was taken over gets zero rows,
raises LeaseLost and stops at once.
"""
from __future__ import annotations

import json
import logging
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, TypeVar

from django.conf import settings
from django.db.models import F, Func, JSONField, Value
from django.db.models.functions import Coalesce, Now
from django.utils import timezone

from core.errors import ExternalError
from core.redaction import redact_text

from ..choices import OperationState as O
from ..errors import TransitionConflict
from ..models import ContainerInstance, Operation
from ..operation_kinds import OperationSpec, spec_for
from ..services.audit import Actor
from ..statemachines.operation import lease_expiry, operation_succeed
from .errors import LeaseLost, StepError

logger = logging.getLogger(__name__)
T = TypeVar("T")
#: Entries an operation's log keeps. Between two whole writes it may hold up to twice as many:
#: checkpoints append (JsonAppend) and the log is cut back to LOG_LIMIT when it passes that.
LOG_LIMIT = 60


class JsonAppend(Func):
    """`field`'s JSON array with `entries` appended by the database: a checkpoint sends its new
    log lines, not the whole log again (JSON_ARRAY_APPEND, MariaDB and MySQL alike)."""

    function = "JSON_ARRAY_APPEND"

    def __init__(self, field: str, entries: list[dict[str, Any]]) -> None:
        args: list[Any] = [Coalesce(F(field), Value("[]"), output_field=JSONField())]
        for entry in entries:
            args += [Value("$"), Func(Value(json.dumps(entry)), Value("$"),
                                      function="JSON_EXTRACT")]
        super().__init__(*args, output_field=JSONField())


@dataclass
class OperationContext:
    operation_id: uuid.UUID
    instance_id: uuid.UUID
    kind: str
    worker: str
    attempt: int
    params: dict[str, Any]
    log: list[dict[str, Any]] = field(default_factory=list)
    step: str = ""
    #: The operation has been retried for longer than OPERATION_RETRY_WINDOW_SECONDS.
    retry_window_over: bool = False
    #: Claimed back inside a bounded wait that goes on across looks (`wait_deadline` set, see
    #: errors.WaitLater): the flow resumes at that wait. `wait_over`: its deadline has passed.
    waiting: bool = False
    wait_over: bool = False
    _renewed_at: float = field(default_factory=time.monotonic)
    #: How many entries at the start of `log` the database holds (the rest are to be written).
    _saved: int = field(init=False)

    def __post_init__(self) -> None:
        self._saved = len(self.log)

    @property
    def spec(self) -> OperationSpec:
        return spec_for(self.kind)

    @property
    def last_attempt(self) -> bool:
        """This attempt is the last: a failure now ends the operation, no retry follows."""
        return self.attempt >= settings.OPERATION_MAX_ATTEMPTS or self.retry_window_over

    def ends_with(self, err: BaseException) -> bool:
        """Whether `err` ends the operation for good (the runner's rule): not for a lost lease
        (another worker carries on), at once for what is not retryable, else on the last
        attempt."""
        if isinstance(err, LeaseLost):
            return False
        if isinstance(err, ExternalError) and not err.retryable:
            return True
        return self.last_attempt

    @property
    def actor(self) -> Actor:
        return Actor.system(f"worker {self.worker.split(':')[0]}")

    # --- lease-guarded writes -------------------------------------------------------------------
    def _guarded(self) -> Any:
        return Operation.objects.filter(pk=self.operation_id, state=O.RUNNING, worker=self.worker)

    def renew(self, *, force: bool = False) -> None:
        """Extend the lease (at most every third of it unless forced); LeaseLost if it is gone."""
        fresh = time.monotonic() - self._renewed_at < settings.OPERATION_LEASE_SECONDS / 3
        if fresh and not force:
            return
        if not self._guarded().update(lease_expires_at=lease_expiry(), updated_at=Now()):
            raise LeaseLost(f"operation {self.operation_id}: lease lost")
        self._renewed_at = time.monotonic()

    def note(self, message: str) -> None:
        self.log.append({"at": timezone.now().isoformat(timespec="seconds"),
                         "attempt": self.attempt, "msg": redact_text(message)[:500]})
        logger.info("operation %s (%s): %s", self.operation_id, self.kind, message)

    def full_log(self) -> list[dict[str, Any]]:
        """The log cut to its last LOG_LIMIT entries, for a write of the whole log (the end of
        an attempt); the database holds all of it afterwards."""
        del self.log[:-LOG_LIMIT]
        self._saved = len(self.log)
        return self.log

    def checkpoint(self, step: str, message: str = "", *, wait_done: bool = False) -> None:
        """Record progress; also renews the lease. LeaseLost if another worker took over.
        `wait_done`: the flow has come out of its bounded wait (the deadline is cleared, in the
        same write).

        Only the log lines written since the last save travel, appended by the database; the
        whole (cut) log is written once it has grown past twice LOG_LIMIT."""
        self.step = step
        self.note(message or f"step {step}")
        if len(self.log) > 2 * LOG_LIMIT:
            log: Any = list(self.full_log())
        else:
            log = JsonAppend("log", self.log[self._saved:])
        extra: dict[str, Any] = {"wait_deadline": None} if wait_done else {}
        if not self._guarded().update(step=step, log=log, lease_expires_at=lease_expiry(),
                                      updated_at=Now(), **extra):
            raise LeaseLost(f"operation {self.operation_id}: lease lost at step {step}")
        self._saved = len(self.log)
        self._renewed_at = time.monotonic()
        if wait_done:
            self.waiting = self.wait_over = False

    def remember(self, **values: Any) -> None:
        """Keep values on the operation's params for the next attempts (a temporary VMID, …).
        LeaseLost if another worker took over."""
        self.params.update(values)
        if not self._guarded().update(params=self.params, updated_at=Now()):
            raise LeaseLost(f"operation {self.operation_id}: lease lost")

    def succeed(self) -> None:
        """Finish the operation; call inside the transaction of the final server transition."""
        self.note("succeeded")
        try:
            operation_succeed(operation_id=self.operation_id, worker=self.worker,
                              log=self.full_log())
        except TransitionConflict as exc:
            raise LeaseLost(str(exc)) from exc

    # --- reads and waits ------------------------------------------------------------------------
    def instance(self) -> ContainerInstance:
        return ContainerInstance.objects.select_related("node", "owner").get(pk=self.instance_id)

    def wait_for(self, check: Callable[[], T | None], *, timeout: float, what: str,
                 retryable: bool = True) -> T:
        """Poll `check` until it returns something, renewing the lease; bounded by `timeout`.

        Starts fast (50 ms) and backs off to 2 s. `check` may raise to abort the wait.
        """
        result = self.poll(check, seconds=timeout)
        if result is None:
            raise StepError(f"timed out after {timeout:.0f}s waiting for {what}",
                            retryable=retryable, kind="timeout")
        return result

    def poll(self, check: Callable[[], T | None], *, seconds: float) -> T | None:
        """`check`'s first answer that is not None, polled as `wait_for` does for at most
        `seconds` (checked at least once); None if there was none by then."""
        deadline = time.monotonic() + seconds
        delay = 0.05
        while True:
            result = check()
            if result is not None:
                return result
            if time.monotonic() >= deadline:
                return None
            self.renew()
            time.sleep(min(delay, max(0.0, deadline - time.monotonic())))
            delay = min(2.0, delay * 1.6)
