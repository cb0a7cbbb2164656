from __future__ import annotations

from django.apps import AppConfig
from django.db.models.signals import post_save


class SearchConfig(AppConfig):
    name = "apps.search"
    label = "search"
    verbose_name = "CMDB search"

    def ready(self) -> None:
        from apps.search import signals
        from apps.workspaces.cmdb import resources_changed
        from apps.workspaces.models import Workspace

        resources_changed.connect(signals.resources_changed, dispatch_uid="search.resources_changed")
        post_save.connect(signals.workspace_saved, sender=Workspace, dispatch_uid="search.workspace_saved")
