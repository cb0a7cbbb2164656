from __future__ import annotations

from django.urls import path

from apps.hub import views

app_name = "hub"

urlpatterns = [
    path("sessions/", views.SessionListView.as_view(), name="sessions"),
    path("sessions/<uuid:session_id>/", views.SessionDetailView.as_view(), name="session"),
    path("sessions/<uuid:session_id>/heartbeat/", views.SessionHeartbeatView.as_view(), name="session-heartbeat"),
    path("sessions/<uuid:session_id>/close/", views.SessionCloseView.as_view(), name="session-close"),
    path("sessions/<uuid:session_id>/claim/", views.SessionClaimView.as_view(), name="session-claim"),
    path("takeovers/", views.TakeoverListView.as_view(), name="takeovers"),
    path("takeovers/force/", views.TakeoverForceView.as_view(), name="takeover-force"),
    path("takeovers/<int:request_id>/", views.TakeoverDetailView.as_view(), name="takeover"),
    path("takeovers/<int:request_id>/respond/", views.TakeoverRespondView.as_view(), name="takeover-respond"),
    path("drafts/", views.DraftView.as_view(), name="draft"),
]
