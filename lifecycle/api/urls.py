"""URLs of the portal API (mounted at /api/v1/)."""
from django.urls import path
from rest_framework.routers import SimpleRouter

from .agents import HeartbeatView
from .views import (
    CatalogView,
    IdeRevokedView,
    NodeListView,
    ProfileView,
    OperationDetailView,
    QuotaView,
    ServerBackupDetailView,
    ServerBackupRestoreAsNewView,
    ServerBackupRestoreView,
    ServerBackupsView,
    ServerConsoleView,
    ServerIdeTokenView,
    ServerLogsView,
    ServerResizeView,
    ServerScheduleDetailView,
    ServerSchedulesView,
    ServerViewSet,
    VelocityResyncView,
)

router = SimpleRouter(trailing_slash=False)
router.register("servers", ServerViewSet, basename="server")

urlpatterns = [
    path("servers/<uuid:server_id>/backups", ServerBackupsView.as_view(), name="server-backups"),
    path("servers/<uuid:server_id>/backups/<uuid:backup_id>", ServerBackupDetailView.as_view(),
         name="server-backup-detail"),
    path("servers/<uuid:server_id>/backups/<uuid:backup_id>/restore",
         ServerBackupRestoreView.as_view(), name="server-backup-restore"),
    path("servers/<uuid:server_id>/backups/<uuid:backup_id>/restore-as-new",
         ServerBackupRestoreAsNewView.as_view(), name="server-backup-restore-as-new"),
    path("operations/<uuid:pk>", OperationDetailView.as_view(), name="operation-detail"),
    path("catalog", CatalogView.as_view(), name="catalog"),
    path("servers/<uuid:server_id>/ide-token", ServerIdeTokenView.as_view(),
         name="server-ide-token"),
    path("servers/<uuid:server_id>/resize", ServerResizeView.as_view(), name="server-resize"),
    path("servers/<uuid:server_id>/logs", ServerLogsView.as_view(), name="server-logs"),
    path("servers/<uuid:server_id>/console", ServerConsoleView.as_view(),
         name="server-console"),
    path("ide/revoked", IdeRevokedView.as_view(), name="ide-revoked"),
    path("servers/<uuid:server_id>/schedules", ServerSchedulesView.as_view(),
         name="server-schedules"),
    path("servers/<uuid:server_id>/schedules/<uuid:schedule_id>",
         ServerScheduleDetailView.as_view(), name="server-schedule-detail"),
    path("me/quota", QuotaView.as_view(), name="me-quota"),
    path("me/profile", ProfileView.as_view(), name="me-profile"),
    path("nodes", NodeListView.as_view(), name="node-list"),
    path("velocity/resync", VelocityResyncView.as_view(), name="velocity-resync"),
    path("agents/<str:server_id>/heartbeat", HeartbeatView.as_view(), name="agent-heartbeat"),
    *router.urls,
]
