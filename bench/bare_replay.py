"""The same outside calls without the control plane: a bare client replays the devstack's
journals (devstack/sim.py, `/_sim/journal`) in the order they arrived, against a devstack reset
to the state it had before, so a benchmark can say how much time the control plane adds.

Answers carry values the replay cannot repeat (task UPIDs, record ids): each string that differs
between the recorded answer and the replayed one at the same place is mapped, and later paths
and bodies get the replay's value.
"""
from __future__ import annotations

import base64
import json
import time
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import quote

import requests


@dataclass
class Replay:
    calls: int = 0
    seconds: float = 0.0
    #: Calls whose status differed from the recorded one (0: the replay did the same work).
    mismatched: list[tuple[str, str, int, int]] = field(default_factory=list)


def _walk(old: Any, new: Any, mapping: dict[str, str]) -> None:
    if isinstance(old, dict) and isinstance(new, dict):
        for key in old.keys() & new.keys():
            _walk(old[key], new[key], mapping)
    elif isinstance(old, list) and isinstance(new, list):
        for a, b in zip(old, new):
            _walk(a, b, mapping)
    elif (isinstance(old, str) and isinstance(new, str) and old != new and len(old) >= 8
          and " " not in old and any(ch.isdigit() for ch in old)):
        mapping[old] = new  # an id or a UPID, not a word such as "running"


def _json(text: str | None) -> Any:
    try:
        return json.loads(text) if text else None
    except ValueError:
        return None


def _substitute(text: str, mapping: dict[str, str]) -> str:
    for old, new in mapping.items():
        if old in text:
            text = text.replace(old, new)
        quoted = quote(old, safe="")
        if quoted != old and quoted in text:
            text = text.replace(quoted, quote(new, safe=""))
    return text


def replay(journals: dict[str, tuple[str, list[dict[str, Any]]]], *, timeout: float = 30.0,
           ) -> Replay:
    """Send every journaled call again, one after the other in arrival order, with one bare
    `requests.Session` per system (connections kept, no retries, no parsing beyond the id
    mapping). `journals`: system -> (origin URL, its journal)."""
    calls = sorted(((entry["t"], system, entry) for system, (_, entries) in journals.items()
                    for entry in entries), key=lambda c: c[0])
    sessions = {system: requests.Session() for system in journals}
    mapping: dict[str, str] = {}
    result = Replay(calls=len(calls))
    started = time.monotonic()
    for _, system, entry in calls:
        origin = journals[system][0]
        path = _substitute(entry["path"], mapping)
        body = base64.b64decode(entry["body"])
        if body and mapping:
            body = _substitute(body.decode("utf-8", "replace"), mapping).encode()
        resp = sessions[system].request(entry["method"], origin + path, data=body or None,
                                        headers=entry["headers"], timeout=timeout,
                                        verify=False)
        if resp.status_code != entry["status"]:
            result.mismatched.append((system, entry["method"], entry["status"],
                                      resp.status_code))
        recorded = _json(entry.get("answer"))
        if recorded is not None and len(resp.content) <= 4096:
            _walk(recorded, _json(resp.text), mapping)
    result.seconds = time.monotonic() - started
    for session in sessions.values():
        session.close()
    return result
