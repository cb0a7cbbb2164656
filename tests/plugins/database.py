"""Loaded with ``-p`` before pytest-django configures Django: when DATABASE_URL is unset, start
the embedded PostgreSQL (iacplatform.devdb) and point the suite at it, so that ``pytest`` on a fresh
clone needs nothing but Python."""

from __future__ import annotations

import os

if not os.environ.get("DATABASE_URL"):
    from iacplatform.devdb import ensure_server

    os.environ["DATABASE_URL"] = ensure_server()
