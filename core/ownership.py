"""The ownership marker: how things outside our database say which server they belong to.

A container in Proxmox carries the tag `zlh-<server uuid>` (next to the plain `zlh` tag); a DNS
record carries the comment `zlh:<server uuid>`. A thing without our marker is foreign and is
never changed or deleted by us, only reported. This module is the only place that builds or
parses either form.
"""
from __future__ import annotations

import uuid
from collections.abc import Iterable
from typing import Any

#: The plain tag on every container we made (lets an operator filter them in Proxmox).
FLEET_TAG = "zlh"
TAG_PREFIX = "zlh-"
COMMENT_PREFIX = "zlh:"


def _server_id(value: Any) -> str | None:
    """A canonical lower-case UUID string, or None when `value` is not a UUID."""
    try:
        return str(uuid.UUID(str(value)))
    except (ValueError, TypeError, AttributeError):
        return None


def container_tag(server_id: Any) -> str:
    """The Proxmox tag naming a server as the owner of a container."""
    return f"{TAG_PREFIX}{server_id}"


def container_tags(server_id: Any) -> str:
    """The `tags` value a new container gets (PVE's ';'-separated form)."""
    return f"{FLEET_TAG};{container_tag(server_id)}"


def owner_from_tag(tag: str) -> str | None:
    """The server id in one tag, or None when the tag is not an ownership tag."""
    tag = tag.strip().lower()
    if not tag.startswith(TAG_PREFIX):
        return None
    return _server_id(tag[len(TAG_PREFIX):])


def owners_from_tags(tags: Iterable[str]) -> set[str]:
    """Every server id named by a set of (already split) tags."""
    return {owner for owner in (owner_from_tag(t) for t in tags) if owner is not None}


def record_comment(server_id: Any) -> str:
    """The comment that marks a DNS record as a server's."""
    return f"{COMMENT_PREFIX}{server_id}"


def owner_from_comment(comment: str | None) -> str | None:
    """The server id in a record's comment, or None for a record that is not ours."""
    if not comment or not comment.startswith(COMMENT_PREFIX):
        return None
    return _server_id(comment[len(COMMENT_PREFIX):])
