"""/api/v1/docs/ (Swagger UI) and /api/v1/redoc/ load nothing from outside the replica: every
script, stylesheet and icon they reference is served by the replica itself."""

from __future__ import annotations

import re

import pytest
from django.contrib.auth import get_user_model
from django.test import Client

ASSET = re.compile(r"""(?:src|href)\s*=\s*["']([^"']+)["']""")


@pytest.fixture
def admin_client_() -> Client:
    user = get_user_model().objects.create_superuser("docs-admin", password="pw-docs-admin")
    client = Client()
    client.force_login(user)
    return client


@pytest.mark.django_db
@pytest.mark.parametrize(("path", "bundle"), [("/api/v1/docs/", "swagger-ui-bundle.js"), ("/api/v1/redoc/", "redoc")])
def test_the_docs_pages_reference_only_assets_the_replica_serves(admin_client_: Client, path: str, bundle: str) -> None:
    page = admin_client_.get(path)
    assert page.status_code == 200
    html = page.content.decode()
    assets = [a for a in ASSET.findall(html) if not a.startswith("#")]
    assert any(bundle in a for a in assets), assets
    for asset in assets:
        assert asset.startswith("/") and not asset.startswith("//"), "loaded from elsewhere: %s" % asset
        response = admin_client_.get(asset)
        assert response.status_code == 200, asset
    assert "cdn.jsdelivr.net" not in html and "unpkg.com" not in html
