"""The CMDB: each workspace's current Terraform state (format version 4) indexed as Resource rows.

One row per resource INSTANCE, keyed by its full address as Terraform prints it:
``module.net["eu"].aws_subnet.private[0]``, ``data.aws_ami.base``. Modules (also instances of
modules created with count/for_each), ``count`` (integer index keys) and ``for_each`` (string keys)
are all expanded. Values marked sensitive in the state (``sensitive_attributes``) are stored
redacted: the CMDB is for looking things up, not a second copy of secrets.

Guarantees: one transaction per workspace, fenced by the caller's tick: the rows of a workspace
always match exactly one state serial, and ``cmdb_synced_serial`` names it. Idempotent: a
workspace whose current serial is already synced is not touched; re-syncing the same state changes
nothing. Resources gone from the state are deleted. A state that is not a valid version-4 state
raises :class:`StateFormatError` for that workspace only and leaves its rows as they were.
Does NOT: read state from anywhere but ``StateVersion``, or keep history (older serials are in
StateVersion).
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager
from dataclasses import dataclass
from typing import Any

from django.db import connection, transaction
from django.dispatch import Signal

from apps.workspaces.models import Resource, StateVersion, Workspace

logger = logging.getLogger(__name__)

REDACTED = "(sensitive)"
_LIMITS = {"address": 1000, "type": 200, "name": 200, "provider": 300, "module": 700, "mode": 10}


# Sent inside sync_workspace's transaction whenever a workspace's Resource rows changed.
resources_changed = Signal()


class StateFormatError(ValueError):
    """The state is not a Terraform state of format version 4 that this indexer understands."""


@dataclass(frozen=True)
class Instance:
    address: str
    type: str
    name: str
    provider: str
    module: str
    mode: str
    index_key: int | str | None
    attributes: dict[str, Any]

    def fields(self) -> dict[str, Any]:
        return {
            "type": self.type,
            "name": self.name,
            "provider": self.provider,
            "module": self.module,
            "mode": self.mode,
            "index_key": self.index_key,
            "attributes": self.attributes,
        }


def _index_suffix(key: int | str | None) -> str:
    if key is None:
        return ""
    if isinstance(key, bool) or not isinstance(key, int | str):
        raise StateFormatError("index_key must be an integer or a string, got %r" % (key,))
    # Terraform prints string keys as JSON strings: ["a\"b"].
    return "[%d]" % key if isinstance(key, int) else "[%s]" % json.dumps(key)


def _redact(value: Any, path: list[Any]) -> Any:
    if not path:
        return REDACTED
    step, rest = path[0], path[1:]
    if isinstance(value, dict) and isinstance(step, str) and step in value:
        return {**value, step: _redact(value[step], rest)}
    if isinstance(value, list) and isinstance(step, int) and not isinstance(step, bool) and 0 <= step < len(value):
        return [*value[:step], _redact(value[step], rest), *value[step + 1 :]]
    return value


def _sensitive_paths(raw: Any) -> Iterator[list[Any]]:
    if not isinstance(raw, list):
        raise StateFormatError("sensitive_attributes must be a list")
    for path in raw:
        if not isinstance(path, list):
            raise StateFormatError("each sensitive attribute path must be a list of steps")
        steps: list[Any] = []
        for step in path:
            if not isinstance(step, dict) or "value" not in step:
                raise StateFormatError("a sensitive attribute step must be an object with a value")
            value = step["value"]
            if step.get("type") == "index" and isinstance(value, dict):
                # An index step carries a typed value: {"value": 0, "type": "number"}.
                value = value.get("value")
                if isinstance(value, float) and value.is_integer():
                    value = int(value)
            steps.append(value)
        yield steps


def parse_state(state: Any) -> list[Instance]:
    """The resource instances of a version-4 state, with their addresses; StateFormatError if bad."""
    if not isinstance(state, dict):
        raise StateFormatError("the state must be a JSON object")
    if state.get("version") != 4:
        raise StateFormatError("unsupported state format version %r (only 4)" % (state.get("version"),))
    resources = state.get("resources", [])
    if not isinstance(resources, list):
        raise StateFormatError("resources must be a list")
    instances: list[Instance] = []
    seen: set[str] = set()
    for number, resource in enumerate(resources):
        if not isinstance(resource, dict):
            raise StateFormatError("resources[%d] must be an object" % number)
        mode = resource.get("mode", "managed")
        if mode not in ("managed", "data"):
            raise StateFormatError("resources[%d]: unknown mode %r" % (number, mode))
        type_, name = resource.get("type"), resource.get("name")
        if not isinstance(type_, str) or not type_ or not isinstance(name, str) or not name:
            raise StateFormatError("resources[%d]: type and name are required strings" % number)
        module = resource.get("module", "")
        provider = resource.get("provider", "")
        if not isinstance(module, str) or not isinstance(provider, str):
            raise StateFormatError("resources[%d]: module and provider must be strings" % number)
        raw_instances = resource.get("instances", [])
        if not isinstance(raw_instances, list):
            raise StateFormatError("resources[%d]: instances must be a list" % number)
        base = "%s%s%s.%s" % (module + "." if module else "", "data." if mode == "data" else "", type_, name)
        for raw in raw_instances:
            if not isinstance(raw, dict):
                raise StateFormatError("%s: each instance must be an object" % base)
            key = raw.get("index_key")
            address = base + _index_suffix(key)
            if address in seen:
                raise StateFormatError("%s appears twice in the state" % address)
            seen.add(address)
            attributes = raw.get("attributes")
            if attributes is None:
                attributes = raw.get("attributes_flat", {})  # providers on the legacy SDK
            if not isinstance(attributes, dict):
                raise StateFormatError("%s: attributes must be an object" % address)
            for path in _sensitive_paths(raw.get("sensitive_attributes", [])):
                attributes = _redact(attributes, path)
            instance = Instance(
                address=address,
                type=type_,
                name=name,
                provider=provider,
                module=module,
                mode=mode,
                index_key=key,
                attributes=attributes,
            )
            for field, limit in _LIMITS.items():
                if len(getattr(instance, field)) > limit:
                    raise StateFormatError("%s: %s longer than %d characters" % (address[:100], field, limit))
            instances.append(instance)
    return instances


@dataclass
class SyncResult:
    created: int = 0
    updated: int = 0
    deleted: int = 0
    serial: int | None = None


Atomic = Callable[[], AbstractContextManager[object]]
_FIELDS = ["type", "name", "provider", "module", "mode", "index_key", "attributes"]


def sync_workspace(workspace_id: int, *, atomic: Atomic = transaction.atomic) -> SyncResult | None:
    """Index the current state of one workspace; None when it is already in sync (or gone)."""
    with atomic():
        # The row lock (FOR NO KEY UPDATE: new tasks may still reference the workspace) orders
        # this sync after any other of the same workspace; reading the current state under it
        # makes a repeated or late sync a no-op instead of a step back.
        workspace = (
            Workspace.objects.select_for_update(no_key=True)
            .filter(pk=workspace_id)
            .only("cmdb_synced_serial", "cmdb_synced_state_id", "current_state_id")
            .first()
        )
        if workspace is None:
            return None
        newest = (
            StateVersion.objects.filter(pk=workspace.current_state_id).values("serial", "state").first()
            if workspace.current_state_id
            else None
        )
        serial = newest["serial"] if newest else None
        if workspace.cmdb_synced_serial == serial and (
            serial is not None or not Resource.objects.filter(workspace_id=workspace_id).exists()
        ):
            if workspace.cmdb_synced_state_id != workspace.current_state_id:
                Workspace.objects.filter(pk=workspace_id).update(cmdb_synced_state_id=workspace.current_state_id)
            return None
        instances = parse_state(newest["state"]) if newest else []
        result = SyncResult(serial=serial)
        existing = {r.address: r for r in Resource.objects.filter(workspace_id=workspace_id)}
        wanted = {i.address: i for i in instances}
        vanished = [r.pk for address, r in existing.items() if address not in wanted]
        if vanished:
            result.deleted, _ = Resource.objects.filter(pk__in=vanished).delete()
        to_create: list[Resource] = []
        to_update: list[Resource] = []
        for address, instance in wanted.items():
            fields = instance.fields()
            row = existing.get(address)
            if row is None:
                # Rows exist only when a state does, so serial is set here.
                to_create.append(
                    Resource(workspace_id=workspace_id, address=address, state_serial=serial or 0, **fields)
                )
            elif any(getattr(row, k) != v for k, v in fields.items()):
                for k, v in fields.items():
                    setattr(row, k, v)
                to_update.append(row)
        Resource.objects.bulk_create(to_create, batch_size=500)
        Resource.objects.bulk_update(to_update, _FIELDS, batch_size=500)
        if serial is not None:
            Resource.objects.filter(workspace_id=workspace_id).exclude(state_serial=serial).update(state_serial=serial)
        Workspace.objects.filter(pk=workspace_id).update(
            cmdb_synced_serial=serial, cmdb_synced_state_id=workspace.current_state_id
        )
        result.created, result.updated = len(to_create), len(to_update)
        # Inside the transaction: whatever indexes the rows further (CMDB search) records its
        # work in the same commit, so it can never miss a change.
        resources_changed.send(sender=Resource, workspace_id=workspace_id)
    return result


# Due workspaces are read in batches in id order (keyset), so the plan does not depend on how many
# the planner thinks are due: it cannot estimate a comparison of two columns and takes 99.5% of the
# table, and without a LIMIT it then preferred a scan and sort of every workspace to the partial
# index whenever their pages were not all-visible (tests/workspaces/test_cmdb.py, the plan test).
SYNC_BATCH = 1000

DUE_SQL = (
    "SELECT id FROM workspaces_workspace WHERE current_state_id IS DISTINCT FROM cmdb_synced_state_id"
    " AND id > %(after)s ORDER BY id LIMIT %(limit)s"
)


def workspaces_to_sync(*, after: int = 0, limit: int | None = None) -> list[int]:
    """Up to ``limit`` (``SYNC_BATCH``) workspaces after ``after`` (by id) whose current state is not
    the one indexed (or with rows but no state).

    One range of the partial index ``workspace_cmdb_due``: what is due, not every workspace.
    """
    with connection.cursor() as cursor:
        cursor.execute(DUE_SQL, {"after": after, "limit": SYNC_BATCH if limit is None else limit})
        return [row[0] for row in cursor.fetchall()]
