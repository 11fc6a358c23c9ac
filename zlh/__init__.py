"""Project wiring: settings, the Celery app, root URLs. No business logic lives here."""
from .celery import app as celery_app

__all__ = ("celery_app",)
