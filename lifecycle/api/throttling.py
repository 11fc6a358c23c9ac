"""Rate limits kept in Redis, failing open: a wiped or unreachable Redis never blocks the API."""
from __future__ import annotations

import logging

from rest_framework.throttling import AnonRateThrottle, UserRateThrottle

logger = logging.getLogger(__name__)


class _FailOpen:
    def allow_request(self, request, view):
        try:
            return super().allow_request(request, view)
        except Exception:  # Redis down: serve the request rather than fail it
            logger.warning("throttle cache unavailable; not throttling", exc_info=True)
            return True


class UserBurstThrottle(_FailOpen, UserRateThrottle):
    scope = "user"


class AnonBurstThrottle(_FailOpen, AnonRateThrottle):
    scope = "anon"


class CreateThrottle(_FailOpen, UserRateThrottle):
    scope = "create"


class IdeTokenThrottle(_FailOpen, UserRateThrottle):
    scope = "ide_token"


class ConsoleThrottle(_FailOpen, UserRateThrottle):
    scope = "console"
