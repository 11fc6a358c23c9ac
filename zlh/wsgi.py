"""WSGI entry point (gunicorn zlh.wsgi)."""
import os

from django.core.wsgi import get_wsgi_application
from django.urls import get_resolver

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "zlh.settings")
application = get_wsgi_application()
# Load the URLconf, and with it every view, serializer and the schema machinery, now: else
# each API worker imports them at its first request, which in a burst (a launch, a restart
# under load) puts a second of imports per worker in front of the first answers.
get_resolver().url_patterns
