"""API middleware: refuse oversized bodies before anything reads them; mark answers as
private to the caller and to be revalidated (their ETag, from Django's ConditionalGetMiddleware,
makes revalidation a 304 without a body)."""
from __future__ import annotations

from django.conf import settings
from django.http import JsonResponse
from django.utils.cache import patch_vary_headers


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


class ApiCacheHeadersMiddleware:
    """Every API answer depends on who asks (Vary: Authorization). Unless a view says otherwise
    (the public catalog), a cache must not share it and must ask again before reusing it."""

    def __init__(self, get_response):
        self.get_response = get_response

    def __call__(self, request):
        response = self.get_response(request)
        if request.path.startswith("/api/"):
            patch_vary_headers(response, ("Authorization",))
            if not response.has_header("Cache-Control"):
                response["Cache-Control"] = "private, no-cache"
        return response
