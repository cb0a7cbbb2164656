"""A connection the server refuses permanently fails the layer's callers at once, with the server's
message, instead of being retried for the whole expiry like an outage."""

from __future__ import annotations

import time
from urllib.parse import quote, urlencode

import pytest

from apps.pglayer.core import PostgresChannelLayer
from iacplatform.pgerrors import PermanentConnectionError
from iacplatform.sessiondb import django_connection_params
from tests.pglayer.conftest import LayerFactory


def suite_url(*, dbname: str | None = None, options: str | None = None) -> str:
    params = django_connection_params()
    query = {"host": params.get("host"), "port": params.get("port"), "user": params.get("user"), "options": options}
    return "postgresql:///%s?%s" % (
        dbname or params["dbname"],
        urlencode({k: v for k, v in query.items() if v}, quote_via=quote),
    )


@pytest.mark.parametrize(
    ("url_args", "message"),
    [
        ({"dbname": "no_such_database"}, 'FATAL: database "no_such_database" does not exist'),
        ({"options": "-c statement_timeout=bogus"}, 'FATAL: invalid value for parameter "statement_timeout"'),
    ],
)
async def test_send_and_receive_fail_at_once_with_the_servers_message(
    make_layer: LayerFactory, url_args: dict[str, str], message: str
) -> None:
    layer: PostgresChannelLayer = make_layer(database=suite_url(**url_args), expiry=30)
    started = time.monotonic()
    with pytest.raises(PermanentConnectionError, match=message):
        await layer.send("test.permanent", {"type": "x"})
    with pytest.raises(PermanentConnectionError, match=message):
        await layer.receive("test.permanent")
    # Far less than the 30 s an outage is retried for: one attempt each.
    assert time.monotonic() - started < 5
    assert layer.stats()["pool_opened"] == 0


async def test_an_outage_is_still_retried(make_layer: LayerFactory) -> None:
    layer = make_layer(database="postgresql://postgres@%s/x" % quote("/nonexistent/socket/dir", safe=""), expiry=0.5)
    started = time.monotonic()
    with pytest.raises(Exception) as excinfo:
        await layer.send("test.outage", {"type": "x"})
    assert not isinstance(excinfo.value, PermanentConnectionError)
    assert time.monotonic() - started >= 0.5
