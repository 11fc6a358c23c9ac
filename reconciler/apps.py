from django.apps import AppConfig


class ReconcilerConfig(AppConfig):
    name = "reconciler"
    default_auto_field = "django.db.models.BigAutoField"
