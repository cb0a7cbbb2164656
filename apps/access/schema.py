"""The OpenAPI schema states who may call each operation: ``x-access`` is the view's access rule
(apps/access/drf.py), and ``security`` never offers anonymous access (no ``{}`` entry), since the
permission class refuses every unauthenticated call."""

from __future__ import annotations

from typing import Any

from drf_spectacular.openapi import AutoSchema

from apps.access.drf import describe


class AccessAutoSchema(AutoSchema):
    def get_operation(self, *args: Any, **kwargs: Any) -> dict[str, Any] | None:
        operation = super().get_operation(*args, **kwargs)
        if operation is None:
            return None
        rules = getattr(self.view, "access_rules", {})
        rule = rules.get(getattr(self.view, "action", None) or self.method.lower())
        operation["x-access"] = describe(rule) if rule is not None else "nobody (no rule)"
        return operation
