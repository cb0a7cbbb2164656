"""The REST API's pagination: limit/offset with a bounded page (``API_MAX_PAGE_SIZE``).

``limit`` and ``offset`` are validated as the schema declares them (integers, ``1 <= limit <=
API_MAX_PAGE_SIZE``, ``0 <= offset < 2**63``): anything else is a 400, so ``?limit=2**63`` never
reaches PostgreSQL's bigint. An offset past the end answers an empty page without a query.

``count`` never counts a whole million-row table (iacplatform/estimates.py): it is exact up to
``offset + limit + 10,000`` rows (reading no more than the page at that offset reads anyway) and
past that PostgreSQL's estimate, never less than that bound, so ``next`` is right on every page.
"""

from __future__ import annotations

from typing import Any

from django.conf import settings
from django.db.models import QuerySet
from rest_framework import serializers
from rest_framework.pagination import LimitOffsetPagination
from rest_framework.request import Request

from iacplatform.estimates import CAP, bounded_count

MAX_OFFSET = 2**63 - 1


class PageQuerySerializer(serializers.Serializer[Any]):
    def __init__(self, *args: Any, max_limit: int, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.fields["limit"] = serializers.IntegerField(min_value=1, max_value=max_limit, required=False)
        self.fields["offset"] = serializers.IntegerField(min_value=0, max_value=MAX_OFFSET, required=False)


class Pagination(LimitOffsetPagination):
    @property
    def max_limit(self) -> int:  # type: ignore[override]
        return int(settings.API_MAX_PAGE_SIZE)

    @property
    def default_limit(self) -> int:  # type: ignore[override]
        return min(int(settings.API_PAGE_SIZE), self.max_limit)

    def paginate_queryset(self, queryset: Any, request: Request, view: Any = None) -> list[Any] | None:
        query = PageQuerySerializer(
            data={k: request.query_params[k] for k in ("limit", "offset") if k in request.query_params},
            max_limit=self.max_limit,
        )
        query.is_valid(raise_exception=True)
        self._window = self.get_offset(request) + (self.get_limit(request) or 0)
        return super().paginate_queryset(queryset, request, view)

    def get_count(self, queryset: Any) -> int:
        if isinstance(queryset, QuerySet):
            # LIMIT cap + 1 must stay a bigint, even for the largest offset allowed.
            return bounded_count(queryset, cap=min(getattr(self, "_window", 0) + CAP, MAX_OFFSET - 1))
        return len(queryset)

    def get_paginated_response_schema(self, schema: dict[str, Any]) -> dict[str, Any]:
        response = super().get_paginated_response_schema(schema)
        response["properties"]["count"]["description"] = (
            "Exact up to offset + limit + %d results; beyond that PostgreSQL's estimate." % CAP
        )
        return response

    def get_schema_operation_parameters(self, view: Any) -> list[dict[str, Any]]:
        parameters = super().get_schema_operation_parameters(view)
        for parameter in parameters:
            if parameter["name"] == self.limit_query_param:
                parameter["schema"].update(minimum=1, maximum=self.max_limit, default=self.default_limit)
                parameter["description"] = "Number of results per page (1-%d)." % self.max_limit
            elif parameter["name"] == self.offset_query_param:
                parameter["schema"].update(minimum=0, maximum=MAX_OFFSET)
        return parameters
