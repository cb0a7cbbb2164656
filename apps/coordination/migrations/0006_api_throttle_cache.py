"""The table of the database cache that REST throttling counts in (CACHES["throttle"]): shared by
every web replica, so a client's rate is one count whichever replica it reaches."""

from __future__ import annotations

from typing import Any

from django.core.management import call_command
from django.db import migrations


def create_cache_table(apps: Any, schema_editor: Any) -> None:
    # createcachetable is idempotent and reads the table name from CACHES.
    call_command("createcachetable", database=schema_editor.connection.alias, verbosity=0)


def drop_cache_table(apps: Any, schema_editor: Any) -> None:
    schema_editor.execute("DROP TABLE IF EXISTS iacplatform_throttle_cache")


class Migration(migrations.Migration):
    dependencies = [("coordination", "0005_jobrun_covering_start_order")]

    operations = [migrations.RunPython(create_cache_table, drop_cache_table)]
