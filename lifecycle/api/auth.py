"""Bearer-token authentication for the portal API (tokens stored hashed, see services.accounts)."""
from __future__ import annotations

import hmac

from django.conf import settings
from django.contrib.auth.models import AnonymousUser
from drf_spectacular.extensions import OpenApiAuthenticationExtension
from rest_framework import authentication, exceptions, permissions

from ..services.accounts import api_token_authenticate


class BearerTokenAuthentication(authentication.BaseAuthentication):
    keyword = "Bearer"

    def authenticate(self, request):
        header = authentication.get_authorization_header(request).split()
        if not header or header[0].lower() != self.keyword.lower().encode():
            return None
        if len(header) != 2:
            raise exceptions.AuthenticationFailed(
                "Malformed Authorization header; expected 'Bearer <token>'."
            )
        try:
            raw = header[1].decode("ascii")
        except UnicodeDecodeError as exc:
            raise exceptions.AuthenticationFailed("The token contains invalid characters.") from exc
        return self.authenticate_credentials(raw)

    def authenticate_credentials(self, raw: str):
        token = api_token_authenticate(raw=raw)
        if token is None:
            raise exceptions.AuthenticationFailed("Invalid or revoked token.")
        return token.user, token

    def authenticate_header(self, request) -> str:
        # Makes DRF answer 401 (with WWW-Authenticate) rather than 403 to anonymous callers.
        return f'{self.keyword} realm="api"'


class BearerTokenScheme(OpenApiAuthenticationExtension):
    target_class = "lifecycle.api.auth.BearerTokenAuthentication"
    name = "bearerAuth"

    def get_security_definition(self, auto_schema):
        return {"type": "http", "scheme": "bearer"}


class IdeProxyAuthentication(BearerTokenAuthentication):
    """The IDE proxy: `Authorization: Bearer <IDE_PROXY_TOKEN>` (compared in constant time; no
    user behind it). Only the revoked-token list takes it."""

    def authenticate_credentials(self, raw: str):
        expected = settings.IDE_PROXY_TOKEN.strip()
        if not expected or not hmac.compare_digest(raw.encode(), expected.encode()):
            raise exceptions.AuthenticationFailed("Invalid IDE proxy token.")
        return AnonymousUser(), "ide-proxy"


class IsIdeProxy(permissions.BasePermission):
    def has_permission(self, request, view) -> bool:
        return request.auth == "ide-proxy"


class IdeProxyScheme(OpenApiAuthenticationExtension):
    target_class = "lifecycle.api.auth.IdeProxyAuthentication"
    name = "ideProxyAuth"

    def get_security_definition(self, auto_schema):
        return {"type": "http", "scheme": "bearer",
                "description": "IDE_PROXY_TOKEN (the IDE proxy only)"}
