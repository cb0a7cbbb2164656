"""REST API of the hub: editing sessions, takeover requests, drafts. Views validate and translate;
the state changes are in apps/hub/actions.py."""

from __future__ import annotations

from typing import Any
from uuid import UUID

from drf_spectacular.utils import OpenApiParameter, extend_schema
from rest_framework import serializers, status
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from apps.access.drf import AccessRule, ActionChecks
from apps.hub import actions, drafts
from apps.hub.serializers import (
    DraftKeySerializer,
    DraftSaveSerializer,
    DraftSerializer,
    EditingSessionSerializer,
    OpenSessionSerializer,
    TakeoverCreateSerializer,
    TakeoverRequestSerializer,
    TakeoverRespondSerializer,
)


class ErrorSerializer(serializers.Serializer):
    code = serializers.CharField()
    detail = serializers.CharField()


def error_response(exc: actions.HubError) -> Response:
    return Response({"code": exc.code, "detail": str(exc)}, status=exc.status)


ERRORS: dict[int | str, Any] = {400: ErrorSerializer, 403: ErrorSerializer, 404: ErrorSerializer, 409: ErrorSerializer}


class HubAPIView(APIView):
    """Every refusal of the actions (``HubError``) becomes its status and code, in one place.
    Every call needs an active user; the workspace role is checked by the actions
    (apps/hub/permissions.py) once they have loaded the session or workspace the call is about."""

    access_rules: dict[str, AccessRule] = {
        method: ActionChecks("write on the workspace (apps/hub/permissions.py)")
        for method in ("get", "post", "put", "delete")
    }

    def handle_exception(self, exc: Exception) -> Response:
        if isinstance(exc, actions.HubError):
            return error_response(exc)
        return super().handle_exception(exc)


class SessionListView(HubAPIView):
    @extend_schema(request=OpenSessionSerializer, responses={201: EditingSessionSerializer, **ERRORS})
    def post(self, request: Request) -> Response:
        """Open a resource: as its editor when nobody edits it, else as a waiting session."""
        data = OpenSessionSerializer(data=request.data, context={"request": request})
        data.is_valid(raise_exception=True)
        session = actions.do_open_session(
            user=request.user,
            workspace=data.validated_data["workspace"],
            resource_address=data.validated_data["resource_address"],
        )
        return Response(EditingSessionSerializer(session).data, status=status.HTTP_201_CREATED)


class SessionDetailView(HubAPIView):
    @extend_schema(responses={200: EditingSessionSerializer, **ERRORS})
    def get(self, request: Request, session_id: UUID) -> Response:
        session = actions.get_owned_session(user=request.user, session_id=session_id)
        return Response(EditingSessionSerializer(session).data)


class SessionHeartbeatView(HubAPIView):
    @extend_schema(request=None, responses={200: EditingSessionSerializer, **ERRORS})
    def post(self, request: Request, session_id: UUID) -> Response:
        session = actions.do_heartbeat(user=request.user, session_id=session_id)
        return Response(EditingSessionSerializer(session).data)


class SessionCloseView(HubAPIView):
    access_rules: dict[str, AccessRule] = {"post": ActionChecks("the session's owner (no role needed to give it up)")}

    @extend_schema(request=None, responses={200: EditingSessionSerializer, **ERRORS})
    def post(self, request: Request, session_id: UUID) -> Response:
        session = actions.do_close_session(user=request.user, session_id=session_id)
        return Response(EditingSessionSerializer(session).data)


class SessionClaimView(HubAPIView):
    @extend_schema(request=None, responses={200: EditingSessionSerializer, **ERRORS})
    def post(self, request: Request, session_id: UUID) -> Response:
        """Make a waiting session the editor, when the resource has no editor any more."""
        session = actions.do_claim_session(user=request.user, session_id=session_id)
        return Response(EditingSessionSerializer(session).data)


class TakeoverListView(HubAPIView):
    @extend_schema(
        request=TakeoverCreateSerializer,
        responses={201: TakeoverRequestSerializer, 200: TakeoverRequestSerializer, **ERRORS},
    )
    def post(self, request: Request) -> Response:
        """Ask the editor of the resource to hand it over (200 with the pending one if already asked)."""
        data = TakeoverCreateSerializer(data=request.data)
        data.is_valid(raise_exception=True)
        takeover, created = actions.do_request_takeover(
            user=request.user,
            session_id=data.validated_data["session_id"],
            message=data.validated_data["message"],
        )
        return Response(
            TakeoverRequestSerializer(takeover).data, status=status.HTTP_201_CREATED if created else status.HTTP_200_OK
        )


class TakeoverDetailView(HubAPIView):
    @extend_schema(responses={200: TakeoverRequestSerializer, **ERRORS})
    def get(self, request: Request, request_id: int) -> Response:
        """The request's status, for its requester and its editor (the truth when an event was lost)."""
        takeover = actions.get_takeover_request(user=request.user, request_id=request_id)
        return Response(TakeoverRequestSerializer(takeover).data)


class TakeoverRespondView(HubAPIView):
    @extend_schema(request=TakeoverRespondSerializer, responses={200: TakeoverRequestSerializer, **ERRORS})
    def post(self, request: Request, request_id: int) -> Response:
        """The editor approves (its session ends, the requester becomes editor) or rejects."""
        data = TakeoverRespondSerializer(data=request.data)
        data.is_valid(raise_exception=True)
        takeover = actions.do_respond_takeover(
            user=request.user, request_id=request_id, approve=data.validated_data["approve"]
        )
        return Response(TakeoverRequestSerializer(takeover).data)


class TakeoverForceView(HubAPIView):
    access_rules: dict[str, AccessRule] = {
        "post": ActionChecks("admin on the workspace, or write and the hub.force_takeover permission")
    }

    @extend_schema(request=TakeoverCreateSerializer, responses={201: TakeoverRequestSerializer, **ERRORS})
    def post(self, request: Request) -> Response:
        """Take the resource without asking; needs hub.force_takeover. The editor's session ends."""
        data = TakeoverCreateSerializer(data=request.data)
        data.is_valid(raise_exception=True)
        takeover = actions.do_force_takeover(
            user=request.user,
            session_id=data.validated_data["session_id"],
            message=data.validated_data["message"],
        )
        return Response(TakeoverRequestSerializer(takeover).data, status=status.HTTP_201_CREATED)


DRAFT_KEY_PARAMETERS = [
    OpenApiParameter("workspace", int, required=True),
    OpenApiParameter("resource_address", str, required=True),
]


class DraftView(HubAPIView):
    """The caller's draft of one resource: GET/DELETE take the key as query parameters."""

    @extend_schema(parameters=DRAFT_KEY_PARAMETERS, responses={200: DraftSerializer, **ERRORS})
    def get(self, request: Request) -> Response:
        key = DraftKeySerializer(data=request.query_params.dict(), context={"request": request})
        key.is_valid(raise_exception=True)
        draft = drafts.get_draft(user=request.user, **key.validated_data)
        return Response(DraftSerializer(draft).data)

    @extend_schema(request=DraftSaveSerializer, responses={200: DraftSerializer, **ERRORS})
    def put(self, request: Request) -> Response:
        data = DraftSaveSerializer(data=request.data, context={"request": request})
        data.is_valid(raise_exception=True)
        draft = drafts.do_save_draft(user=request.user, **data.validated_data)
        return Response(DraftSerializer(draft).data)

    @extend_schema(parameters=DRAFT_KEY_PARAMETERS, responses={204: None, **ERRORS})
    def delete(self, request: Request) -> Response:
        key = DraftKeySerializer(data=request.query_params.dict(), context={"request": request})
        key.is_valid(raise_exception=True)
        if not drafts.do_delete_draft(user=request.user, **key.validated_data):
            return error_response(actions.NotFound("no draft of this resource"))
        return Response(status=status.HTTP_204_NO_CONTENT)
