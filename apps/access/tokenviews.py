"""``/api/v1/tokens/``: the caller's own API tokens (apps/access/tokens.py)."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from django.db.models import QuerySet
from drf_spectacular.utils import extend_schema
from knox.models import AuthToken
from rest_framework import mixins, status, viewsets
from rest_framework.exceptions import ValidationError
from rest_framework.request import Request
from rest_framework.response import Response

from apps.access import tokens
from apps.access.drf import AUTHENTICATED, AccessRule
from apps.access.serializers import ApiTokenCreateSerializer, ApiTokenSerializer, NewApiTokenSerializer


class ApiTokenViewSet(mixins.ListModelMixin, mixins.DestroyModelMixin, viewsets.GenericViewSet[AuthToken]):
    """List, make and revoke one's own tokens; nobody sees another user's here."""

    serializer_class = ApiTokenSerializer
    lookup_field = "token_key"
    lookup_value_regex = "[A-Za-z0-9_]+"
    access_rules: dict[str, AccessRule] = {"list": AUTHENTICATED, "create": AUTHENTICATED, "destroy": AUTHENTICATED}

    def get_queryset(self) -> QuerySet[AuthToken]:
        return AuthToken.objects.filter(user_id=self.request.user.pk).order_by("-created")

    @extend_schema(request=ApiTokenCreateSerializer, responses={201: NewApiTokenSerializer})
    def create(self, request: Request, *args: Any, **kwargs: Any) -> Response:
        body = ApiTokenCreateSerializer(data=request.data)
        body.is_valid(raise_exception=True)
        days = body.validated_data.get("days")
        lifetime = timedelta(days=days) if days is not None else None
        if lifetime is not None and lifetime > tokens.max_lifetime():
            raise ValidationError({"days": "At most %g days." % (tokens.max_lifetime().total_seconds() / 86400)})
        instance, raw = tokens.do_create_token(user=request.user, lifetime=lifetime)
        data = {"token": raw, "token_key": instance.token_key, "created": instance.created, "expiry": instance.expiry}
        return Response(NewApiTokenSerializer(data).data, status=status.HTTP_201_CREATED)

    def perform_destroy(self, instance: AuthToken) -> None:
        tokens.do_revoke_tokens(user=self.request.user, token_key=instance.token_key)
