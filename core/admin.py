"""Display helpers every app's admin uses: coloured state badges, redacted JSON, read-only
model admins and inlines. Presentation only; no app's models are imported here."""
from __future__ import annotations

import json
from typing import Any

from django.contrib import admin
from django.utils.html import format_html

from .redaction import redact

#: Colours of state badges by state value (server statuses, desired states, operation and
#: repair states share these words); anything else is a transient state, in blue.
COLOURS = {
    "running": "#2e7d32", "succeeded": "#2e7d32",
    "stopped": "#616161", "cancelled": "#616161",
    "failed": "#c62828", "missing": "#c62828", "errored": "#8e24aa",
    "pending": "#6d4c41", "queued": "#6d4c41",
    "deleted": "#455a64", "purged": "#212121", "stale": "#ef6c00",
}
TRANSIENT_COLOUR = "#1565c0"


def badge(text: str) -> str:
    colour = COLOURS.get(str(text), TRANSIENT_COLOUR)
    return format_html('<span class="zlh-badge" data-state="{}" style="background:{};color:#fff;'
                       'padding:2px 8px;border-radius:10px;font-weight:600">{}</span>',
                       text, colour, text)


def pretty_json(value: Any) -> str:
    """JSON for a read-only field, with secrets masked on display (on top of at write)."""
    if value in (None, {}, []):
        return "-"
    return format_html("<pre style='white-space:pre-wrap;margin:0'>{}</pre>",
                       json.dumps(redact(value), indent=2, default=str))


class ReadOnlyAdmin(admin.ModelAdmin):
    """Rows written only by services: shown, never added, changed or deleted here."""

    def has_add_permission(self, request):
        return False

    def has_change_permission(self, request, obj=None):
        return False

    def has_delete_permission(self, request, obj=None):
        return False


class ReadOnlyInline(admin.TabularInline):
    extra = 0
    can_delete = False
    show_change_link = False

    def has_add_permission(self, request, obj=None):
        return False

    def has_change_permission(self, request, obj=None):
        return False
