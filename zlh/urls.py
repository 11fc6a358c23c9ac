"""Root URLs: the portal API under /api/v1, its schema and docs, health probes, the admin."""
from django.contrib import admin
from django.urls import include, path
from drf_spectacular.views import SpectacularAPIView, SpectacularSwaggerView

from lifecycle.api import health
from observability.views import fleet, metrics
from reconciler.api import ServerStatusView

admin.site.site_header = "ZeroLagHub operator panel"
admin.site.site_title = "ZLH operator"
admin.site.index_title = "Platform"

urlpatterns = [
    # What is observed of a server comes from the reconciler (it observes); same API, same
    # authentication and owner scoping as the lifecycle routes beside it.
    path("api/v1/servers/<uuid:pk>/status", ServerStatusView.as_view(), name="server-status"),
    path("api/v1/", include("lifecycle.api.urls")),
    path("api/schema/", SpectacularAPIView.as_view(), name="schema"),
    path("api/docs/", SpectacularSwaggerView.as_view(url_name="schema"), name="api-docs"),
    path("healthz", health.healthz, name="healthz"),
    path("readyz", health.readyz, name="readyz"),
    path("api/v1/healthz", health.healthz),
    path("api/v1/readyz", health.readyz),
    path("metrics", metrics, name="metrics"),
    path("admin/fleet/", admin.site.admin_view(fleet), name="fleet-overview"),
    path("admin/", admin.site.urls),
]

handler404 = "lifecycle.api.errors.handler404"
handler500 = "lifecycle.api.errors.handler500"
