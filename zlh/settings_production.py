"""Production settings: the base settings, hardened. Refuses to start without the secrets and
hosts it needs. Passes `python manage.py check --deploy` with deploy/env.example's variables."""
from .settings import *  # noqa: F401,F403
from .settings import env

DEBUG = False
SECRET_KEY = env.str("SECRET_KEY")  # no default: a missing key is a start-up error
ALLOWED_HOSTS = env.list("ALLOWED_HOSTS")

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
