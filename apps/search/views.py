"""GET /api/v1/resources/search/?q=…: CMDB resources ranked by meaning (or full text).

Any active user may search; what they find is narrowed, before anything is ranked, to the
workspaces they may read (apps/access/policy.py), so an invisible workspace contributes nothing,
not even to the scores' normalisation.
"""

from __future__ import annotations

from drf_spectacular.utils import extend_schema
from rest_framework import status
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from apps.access import policy
from apps.access.drf import AccessRule, ActionChecks
from apps.access.models import Role
from apps.search import engine, search
from apps.search.serializers import SearchAnswerSerializer, SearchQuerySerializer
from apps.workspaces.models import Workspace


def readable_workspace_ids(request: Request) -> list[int]:
    visible = policy.filter_visible(Workspace.objects.all(), request.user, via="pk", role=Role.READ)
    return list(visible.values_list("pk", flat=True))


class ResourceSearchView(APIView):
    # Every active user; the results are narrowed to the workspaces they may read.
    access_rules: dict[str, AccessRule] = {
        "get": ActionChecks("any active user; results only from workspaces they may read")
    }

    @extend_schema(parameters=[SearchQuerySerializer], responses={200: SearchAnswerSerializer})
    def get(self, request: Request) -> Response:
        query = SearchQuerySerializer(data=request.query_params)
        query.is_valid(raise_exception=True)
        mode = query.validated_data["mode"]
        if mode == "semantic" and not engine.available():
            return Response(
                {"detail": "Semantic search needs the embedding model, which this server does not have."},
                status=status.HTTP_409_CONFLICT,
            )
        answer = search.search(
            query.validated_data["q"], readable_workspace_ids(request), query.validated_data["limit"], mode
        )
        body = {
            "mode": answer.mode,
            "model": answer.model,
            "results": [
                {"workspace": r.workspace, "address": r.address, "type": r.type, "score": r.score}
                for r in answer.results
            ],
        }
        return Response(SearchAnswerSerializer(body).data)
