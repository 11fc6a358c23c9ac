"""Reads of the lifecycle app: what a user may see, with the queries the API needs."""
from __future__ import annotations

from typing import Any

from django.db.models import OuterRef, QuerySet, Subquery

from .models import ContainerInstance, Operation


def _with_last_operation(qs: QuerySet[ContainerInstance]) -> QuerySet[ContainerInstance]:
    last = Operation.objects.filter(instance=OuterRef("pk")).order_by("-created_at")
    return qs.annotate(
        last_op_id=Subquery(last.values("id")[:1]),
        last_op_kind=Subquery(last.values("kind")[:1]),
        last_op_state=Subquery(last.values("state")[:1]),
    )


def server_list_for(*, user: Any) -> QuerySet[ContainerInstance]:
    """Servers `user` may see: their own, or all for staff; newest first, with the node and the
    last operation joined in (a constant number of queries per page)."""
    qs = ContainerInstance.objects.select_related("node")
    if not user.is_staff:
        qs = qs.filter(owner_id=user.pk)
    return _with_last_operation(qs).order_by("-created_at", "id")


def server_get_for(*, user: Any, server_id: Any) -> ContainerInstance | None:
    return server_list_for(user=user).filter(pk=server_id).first()


def operation_get_for(*, user: Any, operation_id: Any) -> Operation | None:
    qs = Operation.objects.select_related("instance")
    if not user.is_staff:
        qs = qs.filter(instance__owner_id=user.pk)
    return qs.filter(pk=operation_id).first()
