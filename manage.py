#!/usr/bin/env python
"""Django's command-line utility for administrative tasks."""

import os
import sys


def main() -> None:
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "iacplatform.settings")
    from django.conf import settings
    from django.core.exceptions import ImproperlyConfigured
    from django.core.management import execute_from_command_line

    # Load the settings first: Django's command runner swallows their ImproperlyConfigured and the
    # command then fails later with an unrelated AppRegistryNotReady ("Models aren't loaded yet").
    try:
        settings.INSTALLED_APPS  # noqa: B018 - the access imports the settings module
    except ImproperlyConfigured as exc:
        sys.exit("manage.py: the settings are incomplete: %s" % exc)
    execute_from_command_line(sys.argv)


if __name__ == "__main__":
    main()
