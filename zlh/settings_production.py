"""Production settings: the base settings, hardened. Refuses to start without the secrets and
hosts it needs. Passes `python manage.py check --deploy` with deploy/env.example's variables
(and the secrets filled in)."""
from cryptography.fernet import Fernet
from django.core.exceptions import ImproperlyConfigured

from .settings import *  # noqa: F401,F403
from .settings import env

#: Secrets the running system cannot work without; the base settings default them to "" (a
#: laptop talks to the devstack), production refuses to start while any is missing or empty.
REQUIRED_SECRETS = {
    "SECRET_KEY": "Django's signing key (50+ random characters)",
    "PROXMOX_TOKEN_SECRET": "the Proxmox API token's secret (PROXMOX_TOKEN_ID's uuid)",
    "AGENT_CREDENTIAL_KEYS": "Fernet key(s) encrypting each container's agent secret at rest "
                             "(comma-separated; make one with python3 -c 'from "
                             "cryptography.fernet import Fernet; "
                             "print(Fernet.generate_key().decode())')",
    # Paper and Fabric are offered (lifecycle/catalog.py): their proxy config needs it.
    "VELOCITY_FORWARDING_SECRET": "Velocity's modern-forwarding secret (FabricProxy-Lite, Paper)",
    "CLOUDFLARE_API_TOKEN": "a Cloudflare API token with DNS edit on the players' zone",
    "CLOUDFLARE_ZONE_ID": "the Cloudflare zone id of EDGE_ZONE",
    "TECHNITIUM_TOKEN": "the Technitium DNS API token",
    "VELOCITY_BRIDGE_TOKEN": "the Velocity bridge's API token",
}


def _required(name: str) -> str:
    value = env.str(name, default="").strip()
    if not value:
        raise ImproperlyConfigured(
            f"{name} is not set: {REQUIRED_SECRETS[name]}. zlh.settings_production refuses to "
            f"start without it; set {name} in the environment (see deploy/env.example).")
    return value


DEBUG = False
SECRET_KEY = _required("SECRET_KEY")
PROXMOX_TOKEN_SECRET = _required("PROXMOX_TOKEN_SECRET")
AGENT_CREDENTIAL_KEYS = [k.strip() for k in _required("AGENT_CREDENTIAL_KEYS").split(",")
                         if k.strip()]
try:  # a key that is not a Fernet key would only show at the first provision: refuse it now
    for _key in AGENT_CREDENTIAL_KEYS:
        Fernet(_key)
except (ValueError, TypeError) as _exc:
    raise ImproperlyConfigured(
        "AGENT_CREDENTIAL_KEYS holds a value that is not a Fernet key (32 url-safe base64 "
        "bytes); zlh.settings_production refuses to start with it (see deploy/env.example)."
    ) from _exc
VELOCITY_FORWARDING_SECRET = _required("VELOCITY_FORWARDING_SECRET")
CLOUDFLARE_API_TOKEN = _required("CLOUDFLARE_API_TOKEN")
CLOUDFLARE_ZONE_ID = _required("CLOUDFLARE_ZONE_ID")
TECHNITIUM_TOKEN = _required("TECHNITIUM_TOKEN")
VELOCITY_BRIDGE_TOKEN = _required("VELOCITY_BRIDGE_TOKEN")
ALLOWED_HOSTS = env.list("ALLOWED_HOSTS")

# The browser IDE is optional; when it is configured, its keys must be strong and the IDE proxy
# must be able to learn revocations.
IDE_TOKEN_SECRETS = [k.strip() for k in IDE_TOKEN_SECRETS if k.strip()]  # noqa: F405
_ide_weak = any(len(k) < 32 for k in IDE_TOKEN_SECRETS)
if IDE_TOKEN_SECRETS and (_ide_weak or not IDE_PROXY_TOKEN.strip()):  # noqa: F405
    raise ImproperlyConfigured(
        "IDE_TOKEN_SECRETS needs keys of 32 or more random characters each, and IDE_PROXY_TOKEN "
        "set (the IDE proxy reads revoked tokens with it); zlh.settings_production refuses to "
        "start otherwise (see deploy/env.example).")

# /metrics is optional; when it is on, its token must be strong (it shows the whole fleet).
if METRICS_TOKEN and len(METRICS_TOKEN.strip()) < 32:  # noqa: F405
    raise ImproperlyConfigured(
        "METRICS_TOKEN is shorter than 32 characters; zlh.settings_production refuses to start "
        "with it (leave it empty to turn /metrics off; see deploy/env.example).")

# With the container firewall on, empty source lists would shut the control plane out of
# every agent and Velocity out of every game server: refuse to start with them.
if PROXMOX_FIREWALL:  # noqa: F405
    for _name in ("FIREWALL_CONTROL_PLANE_SOURCES", "FIREWALL_VELOCITY_SOURCES"):
        if not [a for a in env.list(_name, default=[]) if a.strip()]:
            raise ImproperlyConfigured(
                f"{_name} is not set: the container firewall (PROXMOX_FIREWALL) opens each "
                "container's ports only to these addresses; set them (see deploy/env.example) "
                "or set PROXMOX_FIREWALL=false.")

#: Database passwords that are not secrets: the development default and the example's
#: placeholder. Production refuses them, and refuses to fall back to the default URL.
PLACEHOLDER_DB_PASSWORDS = frozenset({"", "zlh", "CHANGE-ME"})
if not env.str("DATABASE_URL", default="").strip():
    raise ImproperlyConfigured(
        "DATABASE_URL is not set: the MariaDB URL with the zlh user's password. "
        "zlh.settings_production refuses to start without it; set DATABASE_URL in the "
        "environment (see deploy/env.example).")
if str(DATABASES["default"].get("PASSWORD") or "") in PLACEHOLDER_DB_PASSWORDS:
    raise ImproperlyConfigured(
        "DATABASE_URL carries a placeholder password (empty, the development default or "
        "CHANGE-ME). zlh.settings_production refuses to start with it; set the real one in "
        "the environment (see deploy/env.example).")

# TLS ends at the reverse proxy in front of gunicorn.
SECURE_PROXY_SSL_HEADER = ("HTTP_X_FORWARDED_PROTO", "https")
SECURE_SSL_REDIRECT = env.bool("SECURE_SSL_REDIRECT", default=True)
SECURE_REDIRECT_EXEMPT = [r"^healthz$", r"^readyz$"]  # probes talk plain HTTP on 127.0.0.1
SECURE_HSTS_SECONDS = env.int("SECURE_HSTS_SECONDS", default=31536000)
SECURE_HSTS_INCLUDE_SUBDOMAINS = True
SECURE_HSTS_PRELOAD = True
SECURE_CONTENT_TYPE_NOSNIFF = True
SESSION_COOKIE_SECURE = True
CSRF_COOKIE_SECURE = True
SESSION_COOKIE_HTTPONLY = True
X_FRAME_OPTIONS = "DENY"
