"""Settings for the ZLH control plane, read from the environment (django-environ).

Every value has a local default that works with `deploy/services.sh` on one machine; production
sets the variables documented in `deploy/env.example`. Secrets (SECRET_KEY, tokens, webhook URLs,
passwords) are only ever read from the environment.
"""
from __future__ import annotations

import os
from datetime import timedelta
from pathlib import Path
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import environ
from django.core.exceptions import ImproperlyConfigured

BASE_DIR = Path(__file__).resolve().parent.parent

env = environ.Env()

# ---------------------------------------------------------------------------------------------
# Core
# ---------------------------------------------------------------------------------------------
DEBUG = env.bool("DEBUG", default=False)
# The default key is only good for a laptop; production settings refuse to start without one.
SECRET_KEY = env.str("SECRET_KEY", default="dev-insecure-zlh-key-do-not-use-in-production")
ALLOWED_HOSTS = env.list("ALLOWED_HOSTS", default=["127.0.0.1", "localhost", "testserver"])
CSRF_TRUSTED_ORIGINS = env.list("CSRF_TRUSTED_ORIGINS", default=[])

INSTALLED_APPS = [
    "django.contrib.admin",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "django.contrib.staticfiles",
    "rest_framework",
    "drf_spectacular",
    "django_celery_beat",
    "notifications",
    "edge",
    "lifecycle",
    "reconciler",
    "observability",
]

MIDDLEWARE = [
    "core.logs.RequestIdMiddleware",
    "core.metrics.RequestMetricsMiddleware",
    "django.middleware.security.SecurityMiddleware",
    "whitenoise.middleware.WhiteNoiseMiddleware",
    # ETags from the answer's body on every GET, and 304 for a matching If-None-Match (a portal
    # polling many servers gets no body while nothing changed); it must see the final headers.
    "django.middleware.http.ConditionalGetMiddleware",
    "lifecycle.api.middleware.ApiCacheHeadersMiddleware",
    "lifecycle.api.middleware.ApiBodySizeLimitMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
]

ROOT_URLCONF = "zlh.urls"
WSGI_APPLICATION = "zlh.wsgi.application"

TEMPLATES = [
    {
        "BACKEND": "django.template.backends.django.DjangoTemplates",
        "DIRS": [BASE_DIR / "zlh" / "templates"],
        "APP_DIRS": True,
        "OPTIONS": {
            "context_processors": [
                "django.template.context_processors.request",
                "django.contrib.auth.context_processors.auth",
                "django.contrib.messages.context_processors.messages",
            ],
        },
    },
]

# ---------------------------------------------------------------------------------------------
# Database: MariaDB >= 10.6 (SKIP LOCKED), InnoDB, READ COMMITTED, utf8mb4.
# ---------------------------------------------------------------------------------------------
DATABASE_URL = env.str("DATABASE_URL", default="mysql://zlh:zlh@127.0.0.1:3306/zlh")
_db = env.db_url_config(DATABASE_URL)
_db.setdefault("OPTIONS", {})
_db["OPTIONS"].update(
    {
        "charset": "utf8mb4",
        "isolation_level": "read committed",
        # Short lock waits: a create that waits longer is retried as a whole (see core.db).
        # The session time zone is pinned to UTC: `Now()` (the database clock every deadline
        # is judged by, see core/clock.py) is then UTC like every datetime Django writes,
        # whatever the server's global time zone (Debian's default: the host's).
        "init_command": (
            "SET sql_mode='STRICT_TRANS_TABLES', time_zone='+00:00', "
            f"innodb_lock_wait_timeout={env.int('DB_LOCK_WAIT_TIMEOUT', default=20)}"
        ),
        "connect_timeout": 10,
    }
)
_db["CONN_MAX_AGE"] = env.int("DB_CONN_MAX_AGE", default=60)
_db["CONN_HEALTH_CHECKS"] = True
_db["TEST"] = {"CHARSET": "utf8mb4", "COLLATION": "utf8mb4_unicode_ci"}
DATABASES = {"default": _db}
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"

# ---------------------------------------------------------------------------------------------
# Redis: Celery broker, throttling cache. Ephemeral by design: it may be wiped at any time.
# ---------------------------------------------------------------------------------------------
REDIS_URL = env.str("REDIS_URL", default="redis://127.0.0.1:6379/0")
REDIS_SOCKET_TIMEOUT = env.float("REDIS_SOCKET_TIMEOUT", default=5.0)

CACHES = {
    "default": {
        "BACKEND": "django.core.cache.backends.redis.RedisCache",
        "LOCATION": REDIS_URL,
        "KEY_PREFIX": "zlh",
        "OPTIONS": {
            "socket_timeout": REDIS_SOCKET_TIMEOUT,
            "socket_connect_timeout": REDIS_SOCKET_TIMEOUT,
        },
    }
}

# ---------------------------------------------------------------------------------------------
# Celery (zlh/celery.py reads every CELERY_* name below; queues and routes are there).
# ---------------------------------------------------------------------------------------------
CELERY_BROKER_URL = env.str("CELERY_BROKER_URL", default=REDIS_URL)
CELERY_RESULT_BACKEND = None  # results live on Operation rows, not in Redis
CELERY_TASK_IGNORE_RESULT = True
CELERY_TASK_ACKS_LATE = True
CELERY_WORKER_PREFETCH_MULTIPLIER = 1
CELERY_TASK_DEFAULT_QUEUE = "lifecycle"
# Longer than the longest task (an operation is bounded by OPERATION_MAX_SECONDS); redelivery
# after this is harmless because every task claims its row first (docs/design.md).
CELERY_VISIBILITY_TIMEOUT = env.int("CELERY_VISIBILITY_TIMEOUT", default=2 * 3600)
CELERY_BROKER_TRANSPORT_OPTIONS = {
    "visibility_timeout": CELERY_VISIBILITY_TIMEOUT,
    "socket_timeout": REDIS_SOCKET_TIMEOUT,
    "socket_connect_timeout": REDIS_SOCKET_TIMEOUT,
}
CELERY_BROKER_CONNECTION_RETRY_ON_STARTUP = True
CELERY_BEAT_SCHEDULER = "django_celery_beat.schedulers:DatabaseScheduler"

# The beat schedule, the one table of periodic work (run by exactly one beat). Each entry expires
# after one interval, so a backlog after an outage never replays old ticks. Beat writes this
# into django-celery-beat's tables when it starts (an entry disabled in the admin stays so).
ZLH_SWEEP_INTERVAL_SECONDS = env.int("ZLH_SWEEP_INTERVAL_SECONDS", default=30)
ZLH_PURGE_DUE_INTERVAL_SECONDS = env.int("ZLH_PURGE_DUE_INTERVAL_SECONDS", default=300)
ZLH_QUARANTINE_RELEASE_INTERVAL_SECONDS = env.int("ZLH_QUARANTINE_RELEASE_INTERVAL_SECONDS",
                                                  default=600)
NOTIFY_FLUSH_INTERVAL_SECONDS = env.int("NOTIFY_FLUSH_INTERVAL_SECONDS", default=30)
RECONCILER_INTERVAL_SECONDS = env.int("RECONCILER_INTERVAL_SECONDS", default=60)
ZLH_BACKUP_SCHEDULE_INTERVAL_SECONDS = env.int("ZLH_BACKUP_SCHEDULE_INTERVAL_SECONDS",
                                               default=300)
ZLH_BACKUP_VERIFY_INTERVAL_SECONDS = env.int("ZLH_BACKUP_VERIFY_INTERVAL_SECONDS",
                                             default=6 * 3600)
ZLH_SERVER_SCHEDULE_INTERVAL_SECONDS = env.int("ZLH_SERVER_SCHEDULE_INTERVAL_SECONDS",
                                               default=30)


def _every(seconds: int, task: str) -> dict:
    return {"task": task, "schedule": timedelta(seconds=seconds),
            "options": {"expire_seconds": seconds}}


CELERY_BEAT_SCHEDULE = {
    "lifecycle: sweep operations": _every(ZLH_SWEEP_INTERVAL_SECONDS,
                                          "lifecycle.sweep_operations"),
    "lifecycle: purge due servers": _every(ZLH_PURGE_DUE_INTERVAL_SECONDS, "lifecycle.purge_due"),
    "lifecycle: release quarantine": _every(ZLH_QUARANTINE_RELEASE_INTERVAL_SECONDS,
                                            "lifecycle.release_quarantine"),
    "notifications: flush outbox": _every(NOTIFY_FLUSH_INTERVAL_SECONDS, "notifications.flush"),
    "reconciler: run cycle": _every(RECONCILER_INTERVAL_SECONDS, "reconciler.run_cycle"),
    "lifecycle: scheduled backups": _every(ZLH_BACKUP_SCHEDULE_INTERVAL_SECONDS,
                                           "lifecycle.backup_schedule"),
    "lifecycle: verify backups": _every(ZLH_BACKUP_VERIFY_INTERVAL_SECONDS,
                                        "lifecycle.backup_verify"),
    "lifecycle: server schedules": _every(ZLH_SERVER_SCHEDULE_INTERVAL_SECONDS,
                                          "lifecycle.server_schedules"),
}
CELERY_TIMEZONE = "UTC"
# A publish that cannot reach Redis fails fast instead of hanging the request; the operation row
# stays queued and the sweeper re-enqueues it.
CELERY_BROKER_CONNECTION_TIMEOUT = env.float("CELERY_BROKER_CONNECTION_TIMEOUT", default=5.0)
CELERY_TASK_PUBLISH_RETRY_POLICY = {"max_retries": 2, "interval_start": 0.1, "interval_step": 0.5}
# Workers log through Django's LOGGING (below), so every line passes the secret-masking filter.
CELERY_WORKER_HIJACK_ROOT_LOGGER = False

# ---------------------------------------------------------------------------------------------
# REST API
# ---------------------------------------------------------------------------------------------
REST_FRAMEWORK = {
    "DEFAULT_AUTHENTICATION_CLASSES": ["lifecycle.api.auth.BearerTokenAuthentication"],
    "DEFAULT_PERMISSION_CLASSES": ["rest_framework.permissions.IsAuthenticated"],
    "DEFAULT_RENDERER_CLASSES": ["rest_framework.renderers.JSONRenderer"],
    "DEFAULT_PARSER_CLASSES": ["rest_framework.parsers.JSONParser"],
    "DEFAULT_PAGINATION_CLASS": "lifecycle.api.pagination.ServerPagination",
    "PAGE_SIZE": 50,
    "DEFAULT_SCHEMA_CLASS": "drf_spectacular.openapi.AutoSchema",
    "EXCEPTION_HANDLER": "lifecycle.api.errors.api_exception_handler",
    "DEFAULT_THROTTLE_CLASSES": [
        "lifecycle.api.throttling.UserBurstThrottle",
        "lifecycle.api.throttling.AnonBurstThrottle",
    ],
    "DEFAULT_THROTTLE_RATES": {
        "user": env.str("API_THROTTLE_USER", default="600/min"),
        "anon": env.str("API_THROTTLE_ANON", default="60/min"),
        "create": env.str("API_THROTTLE_CREATE", default="60/min"),
        "ide_token": env.str("API_THROTTLE_IDE_TOKEN", default="10/min"),
        "console": env.str("API_THROTTLE_CONSOLE", default="30/min"),
    },
    "UNAUTHENTICATED_USER": "django.contrib.auth.models.AnonymousUser",
}
# Bodies above this are refused with 413 before any parsing (the API takes small JSON only).
API_MAX_BODY_BYTES = env.int("API_MAX_BODY_BYTES", default=16 * 1024)
DATA_UPLOAD_MAX_MEMORY_SIZE = 1024 * 1024

SPECTACULAR_SETTINGS = {
    "TITLE": "ZeroLagHub control plane API",
    "DESCRIPTION": "Portal API: create and manage game servers and dev containers.",
    "VERSION": "1.0.0",
    "SERVE_INCLUDE_SCHEMA": False,
    "COMPONENT_SPLIT_REQUEST": True,
    "SCHEMA_PATH_PREFIX": r"/api/v1",
    "ENUM_NAME_OVERRIDES": {
        "ServerKindEnum": "lifecycle.choices.Kind",
        "OperationKindEnum": "lifecycle.choices.OperationKind",
        "InstanceStatusEnum": "lifecycle.choices.InstanceStatus",
        "OperationStateEnum": "lifecycle.choices.OperationState",
    },
}

# ---------------------------------------------------------------------------------------------
# Platform policy
# ---------------------------------------------------------------------------------------------
ZLH_DEFAULT_MAX_SERVERS = env.int("ZLH_DEFAULT_MAX_SERVERS", default=3)
ZLH_DEFAULT_MAX_MEMORY_MB = env.int("ZLH_DEFAULT_MAX_MEMORY_MB", default=16384)
# Released VMIDs/IPs/ports wait this long before reuse (VMIDs also need Proxmox to confirm).
ZLH_QUARANTINE_SECONDS = env.int("ZLH_QUARANTINE_SECONDS", default=24 * 3600)
ZLH_SOFT_DELETE_WINDOW_SECONDS = env.int("ZLH_SOFT_DELETE_WINDOW_SECONDS", default=24 * 3600)
# Whole-transaction retries on deadlock (1213) / lock wait timeout (1205).
ZLH_DB_RETRY_ATTEMPTS = env.int("ZLH_DB_RETRY_ATTEMPTS", default=6)

# ---------------------------------------------------------------------------------------------
# Proxmox: API-token auth; internal address from settings, never a player domain.
# ---------------------------------------------------------------------------------------------
PROXMOX_URL = env.str("PROXMOX_URL", default="https://127.0.0.1:8006")
PROXMOX_TOKEN_ID = env.str("PROXMOX_TOKEN_ID", default="root@pam!zlh")
PROXMOX_TOKEN_SECRET = env.str("PROXMOX_TOKEN_SECRET", default="")
# true, false, or the path of a CA bundle to verify the node's certificate with.
PROXMOX_VERIFY_SSL = env.str("PROXMOX_VERIFY_SSL", default="true")
# Proxmox legitimately blocks 5-10 s on a config lock: never less than 30 s in production.
PROXMOX_TIMEOUT = env.float("PROXMOX_TIMEOUT", default=30.0)
PROXMOX_OSTEMPLATE = env.str(
    "PROXMOX_OSTEMPLATE", default="local:vztmpl/debian-12-standard_12.7-1_amd64.tar.zst"
)
PROXMOX_STORAGE = env.str("PROXMOX_STORAGE", default="local-lvm")
PROXMOX_BRIDGE = env.str("PROXMOX_BRIDGE", default="vmbr0")
# Bound on waiting for one Proxmox task (create, start, shutdown, destroy).
PROXMOX_TASK_TIMEOUT = env.float("PROXMOX_TASK_TIMEOUT", default=300.0)
# At most this many Proxmox tasks of each kind at once per node, across every worker and host
# (lifecycle/services/node_slots.py; 0 = no limit). An operation that finds no free place
# waits without holding a worker: it is queued again and looks every PROXMOX_SLOT_WAIT_SECONDS.
PROXMOX_NODE_LIMIT_CREATE = env.int("PROXMOX_NODE_LIMIT_CREATE", default=8)
PROXMOX_NODE_LIMIT_START = env.int("PROXMOX_NODE_LIMIT_START", default=8)
PROXMOX_NODE_LIMIT_STOP = env.int("PROXMOX_NODE_LIMIT_STOP", default=8)
PROXMOX_NODE_LIMIT_BACKUP = env.int("PROXMOX_NODE_LIMIT_BACKUP", default=2)
PROXMOX_NODE_LIMIT_RESTORE = env.int("PROXMOX_NODE_LIMIT_RESTORE", default=2)
PROXMOX_SLOT_WAIT_SECONDS = env.float("PROXMOX_SLOT_WAIT_SECONDS", default=2.0)
# World backups (lifecycle/services/backups.py): vzdump archives in this Proxmox storage (a
# Proxmox Backup Server storage in production; it must allow the `backup` content type),
# snapshot mode so a running server keeps running.
PROXMOX_BACKUP_STORAGE = env.str("PROXMOX_BACKUP_STORAGE", default="local")
# Bound on waiting for one vzdump task (PVE runs one job per node at a time: it may queue).
BACKUP_TASK_TIMEOUT_SECONDS = env.int("BACKUP_TASK_TIMEOUT_SECONDS", default=3600)
# Per-account backup limits unless the account's quota row says otherwise.
BACKUP_QUOTA_COUNT = env.int("BACKUP_QUOTA_COUNT", default=10)
BACKUP_QUOTA_GB = env.int("BACKUP_QUOTA_GB", default=50)
# Scheduled backups (lifecycle/services/backup_schedule.py): per plan an interval and a
# retention (lifecycle/catalog.py BACKUP_POLICIES); at most this many backup or restore
# operations in flight per Proxmox node (PVE runs one vzdump per node at a time anyway).
BACKUP_SCHEDULED = env.bool("BACKUP_SCHEDULED", default=True)
BACKUP_NODE_CONCURRENCY = env.int("BACKUP_NODE_CONCURRENCY", default=2)
# Replaces every plan's interval (tests, or a fleet that wants hourly backups); 0 = the plans'.
BACKUP_SCHEDULE_INTERVAL_SECONDS = env.int("BACKUP_SCHEDULE_INTERVAL_SECONDS", default=0)
# Verification: every ZLH_BACKUP_VERIFY_INTERVAL_SECONDS (beat) up to BACKUP_VERIFY_SAMPLE backups
# never checked are restored into a scratch container (a spare VMID and IP) and their world
# loaded; a claim older than BACKUP_VERIFY_TIMEOUT_SECONDS is taken over.
BACKUP_VERIFY = env.bool("BACKUP_VERIFY", default=True)
BACKUP_VERIFY_SAMPLE = env.int("BACKUP_VERIFY_SAMPLE", default=2)
BACKUP_VERIFY_TIMEOUT_SECONDS = env.int("BACKUP_VERIFY_TIMEOUT_SECONDS", default=3600)
# Per-server schedules (lifecycle/services/schedules.py), checked every
# ZLH_SERVER_SCHEDULE_INTERVAL_SECONDS by beat: at most SERVER_SCHEDULES_MAX per server; a time
# first seen more than SERVER_SCHEDULE_MISFIRE_SECONDS late (beat was down) is recorded as
# missed, not run late. An account without a time zone of its own uses
# ACCOUNT_DEFAULT_TIME_ZONE (an IANA name).
SERVER_SCHEDULES_ENABLED = env.bool("SERVER_SCHEDULES_ENABLED", default=True)
SERVER_SCHEDULES_MAX = env.int("SERVER_SCHEDULES_MAX", default=10)
SERVER_SCHEDULE_MISFIRE_SECONDS = env.int("SERVER_SCHEDULE_MISFIRE_SECONDS", default=900)
ACCOUNT_DEFAULT_TIME_ZONE = env.str("ACCOUNT_DEFAULT_TIME_ZONE", default="UTC")
try:
    ZoneInfo(ACCOUNT_DEFAULT_TIME_ZONE)
except (ValueError, ZoneInfoNotFoundError) as exc:
    raise ImproperlyConfigured(
        f"ACCOUNT_DEFAULT_TIME_ZONE={ACCOUNT_DEFAULT_TIME_ZONE!r} is not an IANA time zone "
        "name (e.g. UTC, Europe/Berlin).") from exc
# A server whose container is gone (`missing`) is provisioned again from its latest ready
# backup, when it has one (the user's retry, or the reconciler's level-2 recreate).
RECREATE_FROM_LATEST_BACKUP = env.bool("RECREATE_FROM_LATEST_BACKUP", default=True)
# A purge takes a final backup first (no archive, no purge), kept this many days after the
# server is gone, then removed by the sweep. Not counted against the owner's backup quota.
BACKUP_BEFORE_PURGE = env.bool("BACKUP_BEFORE_PURGE", default=True)
BACKUP_PRE_PURGE_KEEP_DAYS = env.int("BACKUP_PRE_PURGE_KEEP_DAYS", default=14)
# A restore from a backup takes one of the current state first, kept this many days.
BACKUP_PRE_RESTORE_KEEP_DAYS = env.int("BACKUP_PRE_RESTORE_KEEP_DAYS", default=7)
# A backup whose archive removal has not finished after this is removed again by the sweep.
BACKUP_DELETE_RETRY_SECONDS = env.int("BACKUP_DELETE_RETRY_SECONDS", default=300)
# The container firewall (lifecycle/firewall.py): every container's net0 gets firewall=1,
# incoming policy DROP and one rule per port, each open only to one cluster IP set that these
# lists fill (addresses or CIDRs, comma-separated): the agent port to the control plane's
# addresses (workers, reconciler), the game port to Velocity's, the IDE port to the IDE
# proxy's. Enable the datacenter firewall yourself (it also filters the nodes); the
# reconciler reports it while it is off.
PROXMOX_FIREWALL = env.bool("PROXMOX_FIREWALL", default=True)
FIREWALL_CONTROL_PLANE_SOURCES = env.list("FIREWALL_CONTROL_PLANE_SOURCES",
                                          default=["127.0.0.1"])
FIREWALL_VELOCITY_SOURCES = env.list("FIREWALL_VELOCITY_SOURCES", default=[])
FIREWALL_IDE_PROXY_SOURCES = env.list("FIREWALL_IDE_PROXY_SOURCES", default=[])

# ---------------------------------------------------------------------------------------------
# The agent inside each container. {ip} and {vmid} are filled in per server.
# ---------------------------------------------------------------------------------------------
AGENT_URL_TEMPLATE = env.str("AGENT_URL_TEMPLATE", default="http://{ip}:18888")
AGENT_TIMEOUT = env.float("AGENT_TIMEOUT", default=5.0)
# Each server's agent has a secret of its own (lifecycle/services/agent_credentials.py), stored
# encrypted with these Fernet keys: comma-separated, the first encrypts, every one decrypts (add
# a new key in front, re-encrypt with `manage.py agentkeys --reencrypt`, then drop the old one).
# Empty: a key derived from SECRET_KEY (development and tests only; production requires it).
AGENT_CREDENTIAL_KEYS = env.list("AGENT_CREDENTIAL_KEYS", default=[])
# After a rotation the agent's previous secret still signs heartbeats for this long.
AGENT_CREDENTIAL_OVERLAP_SECONDS = env.int("AGENT_CREDENTIAL_OVERLAP_SECONDS", default=300)
# Migration from the old shared token (was AGENT_TOKEN, still read under that name): an agent
# too old to take a credential of its own (it answers 404 to /credential) is driven with this
# token until AGENT_LEGACY_TOKEN_UNTIL (an ISO date, UTC midnight; empty = never), and each
# server driven so is recorded (AgentCredential.legacy_since) and reported.
AGENT_LEGACY_TOKEN = env.str("AGENT_LEGACY_TOKEN", default="") or env.str("AGENT_TOKEN",
                                                                          default="")
AGENT_LEGACY_TOKEN_UNTIL = env.str("AGENT_LEGACY_TOKEN_UNTIL", default="")
# Heartbeats: each agent POSTs its status every AGENT_HEARTBEAT_INTERVAL_SECONDS to
# AGENT_HEARTBEAT_URL ({server_id} filled in), told both when it is enrolled. The URL is the
# control plane's address as the containers reach it (AGENT_CONTROL_PLANE_URL by default).
AGENT_HEARTBEAT_INTERVAL_SECONDS = env.int("AGENT_HEARTBEAT_INTERVAL_SECONDS", default=30)
AGENT_CONTROL_PLANE_URL = env.str("AGENT_CONTROL_PLANE_URL", default="http://127.0.0.1:8000")
AGENT_HEARTBEAT_URL = env.str(
    "AGENT_HEARTBEAT_URL",
    default=AGENT_CONTROL_PLANE_URL.rstrip("/") + "/api/v1/agents/{server_id}/heartbeat")
# A heartbeat whose memory use is above this share of the limit counts towards the streak of
# memory pressure the reconciler reads (AgentHeartbeat.memory_high_streak).
AGENT_MEMORY_PRESSURE_PERCENT = env.int("AGENT_MEMORY_PRESSURE_PERCENT", default=90)
# How long provisioning waits for the agent to answer, and for the server to become ready.
AGENT_WAIT_SECONDS = env.float("AGENT_WAIT_SECONDS", default=180.0)
READY_WAIT_SECONDS = env.float("READY_WAIT_SECONDS", default=900.0)
# The wait for readiness holds a worker thread for READY_HOLD_SECONDS at most (a quick start is
# seen at once); after that the operation is queued again and looks every READY_LOOK_SECONDS
# (worker.errors.WaitLater), so a game installing for minutes holds no worker and a host can
# have far more servers installing than it has threads. Provision, start and restart wait so.
READY_HOLD_SECONDS = max(0.0, env.float("READY_HOLD_SECONDS", default=5.0))
READY_LOOK_SECONDS = max(0.05, env.float("READY_LOOK_SECONDS", default=3.0))
# Graceful stop: seconds the game gets to save, then the container's shutdown timeout.
GAME_STOP_WAIT_SECONDS = env.float("GAME_STOP_WAIT_SECONDS", default=60.0)
CONTAINER_SHUTDOWN_TIMEOUT = env.int("CONTAINER_SHUTDOWN_TIMEOUT", default=60)
# The smallest plan (memory) a new dev container may use: code-server alone has filled 2 GB.
DEV_MIN_MEMORY_MB = env.int("DEV_MIN_MEMORY_MB", default=4096)
# Where a dev container's browser IDE is served (the IDE proxy's wildcard route); {vmid} is
# filled in per server.
IDE_URL_TEMPLATE = env.str("IDE_URL_TEMPLATE", default="https://dev-{vmid}.ide.zerolaghub.com/")
# Browser-IDE tokens (lifecycle/services/ide_tokens.py): HS256 keys shared with the IDE proxy,
# comma-separated (the first signs, every one verifies: put a new key in front, give the proxy
# both, drop the old one after IDE_TOKEN_TTL_SECONDS). Empty: the endpoint answers 503.
IDE_TOKEN_SECRETS = env.list("IDE_TOKEN_SECRETS", default=[])
IDE_TOKEN_TTL_SECONDS = env.int("IDE_TOKEN_TTL_SECONDS", default=300)
# What the IDE proxy presents (Bearer) to read the revoked tokens (GET /api/v1/ide/revoked).
IDE_PROXY_TOKEN = env.str("IDE_PROXY_TOKEN", default="")
# Velocity "modern forwarding" secret, written into FabricProxy-Lite.toml / paper-global.yml.
VELOCITY_FORWARDING_SECRET = env.str("VELOCITY_FORWARDING_SECRET", default="")

# ---------------------------------------------------------------------------------------------
# Edge: public DNS on Cloudflare, internal DNS on Technitium, the Velocity proxy.
# ---------------------------------------------------------------------------------------------
EDGE_ZONE = env.str("EDGE_ZONE", default="play.zerolaghub.com")
EDGE_TTL = env.int("EDGE_TTL", default=60)
CLOUDFLARE_API_URL = env.str("CLOUDFLARE_API_URL", default="https://api.cloudflare.com/client/v4")
CLOUDFLARE_API_TOKEN = env.str("CLOUDFLARE_API_TOKEN", default="")
CLOUDFLARE_ZONE_ID = env.str("CLOUDFLARE_ZONE_ID", default="")
CLOUDFLARE_TIMEOUT = env.float("CLOUDFLARE_TIMEOUT", default=15.0)
CLOUDFLARE_PAGE_SIZE = env.int("CLOUDFLARE_PAGE_SIZE", default=1000)
# Longest a call waits out 429s (retry-after) before giving up as retryable.
CLOUDFLARE_MAX_RETRY_WAIT = env.float("CLOUDFLARE_MAX_RETRY_WAIT", default=300.0)
TECHNITIUM_URL = env.str("TECHNITIUM_URL", default="http://127.0.0.1:5380")
TECHNITIUM_TOKEN = env.str("TECHNITIUM_TOKEN", default="")
TECHNITIUM_ZONE = env.str("TECHNITIUM_ZONE", default="zlh.internal")
TECHNITIUM_TIMEOUT = env.float("TECHNITIUM_TIMEOUT", default=10.0)
VELOCITY_BRIDGE_URL = env.str("VELOCITY_BRIDGE_URL", default="http://127.0.0.1:8081")
VELOCITY_BRIDGE_TOKEN = env.str("VELOCITY_BRIDGE_TOKEN", default="")
VELOCITY_TIMEOUT = env.float("VELOCITY_TIMEOUT", default=10.0)
VELOCITY_PUBLIC_IP = env.str("VELOCITY_PUBLIC_IP", default="203.0.113.10")
VELOCITY_PUBLIC_PORT = env.int("VELOCITY_PUBLIC_PORT", default=25565)

# ---------------------------------------------------------------------------------------------
# Notifications: Discord webhook URLs come only from the environment.
# ---------------------------------------------------------------------------------------------
DISCORD_WEBHOOKS = {
    "critical": env.str("DISCORD_WEBHOOK_CRITICAL", default=""),
    "warning": env.str("DISCORD_WEBHOOK_WARNING", default=""),
    "info": env.str("DISCORD_WEBHOOK_INFO", default=""),
    "lifecycle": env.str("DISCORD_WEBHOOK_LIFECYCLE", default=""),
}
DISCORD_CRITICAL_ROLE_ID = env.str("DISCORD_CRITICAL_ROLE_ID", default="")
DISCORD_TIMEOUT = env.float("DISCORD_TIMEOUT", default=10.0)
# One alert key is not repeated within this interval; clearing it sends one "resolved".
NOTIFY_REPEAT_INTERVAL_SECONDS = env.int("NOTIFY_REPEAT_INTERVAL_SECONDS", default=4 * 3600)
NOTIFY_BACKOFF_MAX_SECONDS = env.int("NOTIFY_BACKOFF_MAX_SECONDS", default=300)

# ---------------------------------------------------------------------------------------------
# Operations: claims, leases, retries, sweeping
# ---------------------------------------------------------------------------------------------
# A worker holds an operation for this long unless it renews; then another may take it over.
OPERATION_LEASE_SECONDS = env.float("OPERATION_LEASE_SECONDS", default=90.0)
# Retryable failures are retried until the operation has been at it for the retry window (long
# enough to outlive an ordinary Cloudflare or Proxmox outage) or has used its attempts, whichever
# comes first; every attempt is in the operation's log. Then it fails, and the operator is told.
OPERATION_MAX_ATTEMPTS = env.int("OPERATION_MAX_ATTEMPTS", default=40)
OPERATION_RETRY_WINDOW_SECONDS = env.int("OPERATION_RETRY_WINDOW_SECONDS", default=1800)
# Retry backoff for retryable errors: base * 2**attempt, capped (kept short: no long countdowns).
OPERATION_RETRY_BASE_SECONDS = env.float("OPERATION_RETRY_BASE_SECONDS", default=2.0)
OPERATION_RETRY_MAX_SECONDS = env.float("OPERATION_RETRY_MAX_SECONDS", default=60.0)
# A request that never started within this is expired (cancelled, with a readable reason)
# rather than run late: after a host move replays old jobs, a week-old "stop" must not run.
OPERATION_MAX_QUEUED_AGE_SECONDS = env.int("OPERATION_MAX_QUEUED_AGE_SECONDS", default=3600)
# A queued operation whose message was sent longer ago than this is sent again by the sweeper.
OPERATION_REENQUEUE_AFTER_SECONDS = env.float("OPERATION_REENQUEUE_AFTER_SECONDS", default=60.0)

# ---------------------------------------------------------------------------------------------
# Reconciler
# ---------------------------------------------------------------------------------------------
# Levels whose repairs run: 0 observe/notify, 1 safe repairs; 2 (destructive) is off by default.
RECONCILER_ENABLED_LEVELS = env.list("RECONCILER_ENABLED_LEVELS", cast=int, default=[0, 1])
RECONCILER_DRY_RUN = env.bool("RECONCILER_DRY_RUN", default=False)
# The Redis lease: held for this long unless renewed (renewed at every step of a cycle).
RECONCILER_LEASE_SECONDS = env.float("RECONCILER_LEASE_SECONDS", default=120.0)
# Mass-drift guard: more repairs than max(MIN, FRACTION * servers) in one cycle -> no repairs.
RECONCILER_MASS_DRIFT_MIN = env.int("RECONCILER_MASS_DRIFT_MIN", default=10)
# This many servers of one node found stopped though they should run, in one cycle, are one
# event for the node (it restarted): one finding, one message, one repair starting them all.
RECONCILER_NODE_EVENT_MIN = env.int("RECONCILER_NODE_EVENT_MIN", default=3)
RECONCILER_MASS_DRIFT_FRACTION = env.float("RECONCILER_MASS_DRIFT_FRACTION", default=0.2)
# Repairs per server per hour before further ones are refused (and escalated).
RECONCILER_REPAIR_BUDGET_PER_HOUR = env.int("RECONCILER_REPAIR_BUDGET_PER_HOUR", default=3)
# A breaker opens after this many consecutive failures of one action, probes after cool-down.
RECONCILER_BREAKER_THRESHOLD = env.int("RECONCILER_BREAKER_THRESHOLD", default=3)
RECONCILER_BREAKER_COOLDOWN_SECONDS = env.int("RECONCILER_BREAKER_COOLDOWN_SECONDS", default=300)
# Deadlines: an operation whose lease expired this long ago is stale; a transient status
# without an active operation for this long is stuck; a purge this late is overdue.
RECONCILER_STALE_OPERATION_SECONDS = env.int("RECONCILER_STALE_OPERATION_SECONDS", default=900)
RECONCILER_STUCK_TRANSITION_SECONDS = env.int("RECONCILER_STUCK_TRANSITION_SECONDS",
                                              default=1800)
RECONCILER_PURGE_GRACE_SECONDS = env.int("RECONCILER_PURGE_GRACE_SECONDS", default=3600)
# Agent checks: bounded parallelism and a short timeout each.
RECONCILER_AGENT_PARALLELISM = env.int("RECONCILER_AGENT_PARALLELISM", default=16)
RECONCILER_AGENT_TIMEOUT = env.float("RECONCILER_AGENT_TIMEOUT", default=2.0)
RECONCILER_CRASH_LOOP_THRESHOLD = env.int("RECONCILER_CRASH_LOOP_THRESHOLD", default=3)
# Heartbeats instead of polling: an agent whose heartbeat is fresher than
# AGENT_HEARTBEAT_STALE_SECONDS (0: three intervals) is not asked; at most
# RECONCILER_AGENT_PROBE_BUDGET of the others are asked directly per cycle (never heard from
# first, then the stalest). RECONCILER_EXPECT_HEARTBEATS: an agent that answers when asked but
# sends no heartbeats is a finding (off while old agents without heartbeats are still about).
AGENT_HEARTBEAT_STALE_SECONDS = env.int("AGENT_HEARTBEAT_STALE_SECONDS", default=0)
RECONCILER_AGENT_PROBE_BUDGET = env.int("RECONCILER_AGENT_PROBE_BUDGET", default=50)
RECONCILER_EXPECT_HEARTBEATS = env.bool("RECONCILER_EXPECT_HEARTBEATS", default=True)
# Memory pressure: this many heartbeats in a row above AGENT_MEMORY_PRESSURE_PERCENT.
RECONCILER_MEMORY_PRESSURE_HEARTBEATS = env.int("RECONCILER_MEMORY_PRESSURE_HEARTBEATS",
                                                default=3)
# Container firewalls checked per cycle (3 Proxmox calls each; never checked first, then the
# longest unchecked), so a fleet of N is swept every N / this many cycles; 0: none.
RECONCILER_FIREWALL_CHECKS = env.int("RECONCILER_FIREWALL_CHECKS", default=30)
RECONCILER_FIREWALL_PARALLELISM = env.int("RECONCILER_FIREWALL_PARALLELISM", default=4)

# ---------------------------------------------------------------------------------------------
# Answers from outside systems (core/http.py): the largest body read from each, in bytes. Each
# call's timeout above is also its deadline for the whole answer, not only per socket read.
# ---------------------------------------------------------------------------------------------
PROXMOX_MAX_ANSWER_BYTES = env.int("PROXMOX_MAX_ANSWER_BYTES", default=32 * 1024**2)
AGENT_MAX_ANSWER_BYTES = env.int("AGENT_MAX_ANSWER_BYTES", default=256 * 1024)
CLOUDFLARE_MAX_ANSWER_BYTES = env.int("CLOUDFLARE_MAX_ANSWER_BYTES", default=16 * 1024**2)
TECHNITIUM_MAX_ANSWER_BYTES = env.int("TECHNITIUM_MAX_ANSWER_BYTES", default=64 * 1024**2)
VELOCITY_MAX_ANSWER_BYTES = env.int("VELOCITY_MAX_ANSWER_BYTES", default=16 * 1024**2)
DISCORD_MAX_ANSWER_BYTES = env.int("DISCORD_MAX_ANSWER_BYTES", default=256 * 1024)

# ---------------------------------------------------------------------------------------------
# Misc
# ---------------------------------------------------------------------------------------------
LANGUAGE_CODE = "en-us"
TIME_ZONE = "UTC"
USE_I18N = True
USE_TZ = True
STATIC_URL = "static/"
STATIC_ROOT = env.str("STATIC_ROOT", default=str(BASE_DIR / "staticfiles"))
# The admin's CSS/JS are served by the app itself (WhiteNoise), so gunicorn needs no web server
# in front of it for the operator panel.
STORAGES = {
    "default": {"BACKEND": "django.core.files.storage.FileSystemStorage"},
    "staticfiles": {"BACKEND": "whitenoise.storage.CompressedStaticFilesStorage"},
}
AUTH_PASSWORD_VALIDATORS = [
    {"NAME": "django.contrib.auth.password_validation.MinimumLengthValidator"},
    {"NAME": "django.contrib.auth.password_validation.CommonPasswordValidator"},
]

LOG_LEVEL = env.str("LOG_LEVEL", default="INFO")
# GET /metrics (Prometheus) answers only a scraper sending `Authorization: Bearer METRICS_TOKEN`;
# empty: /metrics is off (404).
METRICS_TOKEN = env.str("METRICS_TOKEN", default="")
# Counts made inside processes (outside calls) are written by every process of a host to files
# in METRICS_DIR and added up by /metrics (prometheus_client's multi-process mode); empty: each
# process keeps its own and /metrics shows the serving process's only. Exported here, before
# anything imports prometheus_client; the directory should be emptied at boot (a tmpfs).
METRICS_DIR = env.str("METRICS_DIR", default="")
if METRICS_DIR:
    try:
        os.makedirs(METRICS_DIR, exist_ok=True)
    except OSError as exc:
        raise ImproperlyConfigured(f"METRICS_DIR={METRICS_DIR!r} cannot be created ({exc}); "
                                   "create it for this user or leave it empty.") from exc
    os.environ.setdefault("PROMETHEUS_MULTIPROC_DIR", METRICS_DIR)
# LOG_FORMAT=json: one JSON object per line (for Loki and the like), else the plain line. Both
# carry the request, operation, server, attempt and task a line was written for (core/logs.py).
LOG_FORMAT = env.str("LOG_FORMAT", default="plain")
if LOG_FORMAT not in ("plain", "json"):
    raise ImproperlyConfigured(f"LOG_FORMAT={LOG_FORMAT!r}: use 'plain' or 'json'.")
LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "formatters": {
        "plain": {"()": "core.logs.PlainFormatter",
                  "format": "%(asctime)s %(levelname)s %(name)s %(message)s"},
        "json": {"()": "core.logs.JsonFormatter"},
    },
    "filters": {"redact": {"()": "core.redaction.RedactingFilter"},
                "context": {"()": "core.logs.ContextFilter"}},
    "handlers": {"console": {"class": "logging.StreamHandler", "formatter": LOG_FORMAT,
                             "filters": ["redact", "context"]}},
    "root": {"handlers": ["console"], "level": LOG_LEVEL},
    "loggers": {"django.db.backends": {"level": "WARNING"}},
}
