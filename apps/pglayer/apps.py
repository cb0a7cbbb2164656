from __future__ import annotations

from django.apps import AppConfig


class PglayerConfig(AppConfig):
    name = "apps.pglayer"
    label = "pglayer"
    verbose_name = "Channel layer"
