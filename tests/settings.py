"""Settings for the test run: the project's settings with a Redis database of its own and
throttles opened up. pytest-django swaps the database NAME for `test_<name>` at start."""
import os
from urllib.parse import urlsplit, urlunsplit


def _test_redis_url() -> str:
    if os.environ.get("TEST_REDIS_URL"):
        return os.environ["TEST_REDIS_URL"]
    parts = urlsplit(os.environ.get("REDIS_URL", "redis://127.0.0.1:6379/0"))
    return urlunsplit((parts.scheme, parts.netloc, "/15", "", ""))


os.environ["REDIS_URL"] = _test_redis_url()
os.environ.pop("CELERY_BROKER_URL", None)
os.environ.setdefault("API_THROTTLE_USER", "100000/min")
os.environ.setdefault("API_THROTTLE_CREATE", "100000/min")
os.environ.setdefault("API_THROTTLE_ANON", "100000/min")

from zlh.settings import *  # noqa: E402,F401,F403

# Serve static files from the apps' folders (no collectstatic needed in tests).
STATIC_ROOT = None
WHITENOISE_USE_FINDERS = True
