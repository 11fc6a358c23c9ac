"""Whether an outside source could be trusted this time. Unknown is not absent: nothing that
depends on an unknown source is concluded from it (no finding, no "it is gone")."""
from __future__ import annotations

from enum import StrEnum


class Health(StrEnum):
    HEALTHY = "healthy"
    UNKNOWN = "unknown"
