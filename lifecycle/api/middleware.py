"""Refuse oversized API bodies before anything reads them."""
from __future__ import annotations

from django.conf import settings
from django.http import JsonResponse


class ApiBodySizeLimitMiddleware:
    def __init__(self, get_response):
        self.get_response = get_response

    def __call__(self, request):
        if request.path.startswith("/api/"):
            try:
                length = int(request.META.get("CONTENT_LENGTH") or 0)
            except ValueError:
                length = -1
            limit = settings.API_MAX_BODY_BYTES
            if length < 0 or length > limit:
                return JsonResponse(
                    {"code": "payload_too_large",
                     "message": f"The request body is larger than {limit} bytes.", "fields": {}},
                    status=413,
                )
        return self.get_response(request)
