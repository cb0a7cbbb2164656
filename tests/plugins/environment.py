"""Loaded with ``-p`` first: the suite runs on its own settings, not the caller's.

Every variable iacplatform/settings.py reads is removed from the environment, except where the
suite's database is and how to reach it (``DATABASE_*``, ``DB_*``, documented in the README), and
the suite's own values are set. Processes the tests start inherit this environment, so a
``SECRET_KEY`` or ``CHANNEL_LAYER_BACKEND`` exported in the caller's shell reaches neither the
tests nor the daphne, runleader and runagent processes they spawn.
"""

from __future__ import annotations

import os

from tests.deploy.settings_source import project_settings

SECRET_KEY = "test-secret-key-not-for-production"
SUITE_ENVIRONMENT = {"SECRET_KEY": SECRET_KEY, "PROCESS_ROLE": "test", "POD_NAME": "pytest"}
KEPT_PREFIXES = ("DATABASE_", "DB_")


def caller_settings(environ: dict[str, str] | os._Environ[str]) -> list[str]:
    """The settings variables of ``environ`` the suite does not take from its caller."""
    return sorted(name for name in project_settings().read if name in environ and not name.startswith(KEPT_PREFIXES))


for _name in caller_settings(os.environ):
    del os.environ[_name]
os.environ.update(SUITE_ENVIRONMENT)
