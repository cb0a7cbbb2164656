from __future__ import annotations

from rest_framework.routers import SimpleRouter

from apps.access.tokenviews import ApiTokenViewSet

router = SimpleRouter()
router.register("tokens", ApiTokenViewSet, basename="api-token")
urlpatterns = router.urls
