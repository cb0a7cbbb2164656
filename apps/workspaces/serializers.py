"""REST API serializers for workspaces and tasks: every invalid body is a 400 with field errors."""

from __future__ import annotations

import re
from typing import Any

from drf_spectacular.utils import extend_schema_field
from rest_framework import serializers

from apps.access.serializers import VisibleWorkspaceField
from apps.agents.models import AgentPool
from apps.workspaces.models import (
    Resource,
    StateLock,
    StateTransition,
    StateVersion,
    Task,
    TaskLogChunk,
    Variable,
    Workspace,
)

# Files land in a fresh directory on the agent: plain names only, never a path or the state file.
FILE_NAME_RE = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.-]{0,99}$")
RESERVED_FILES = {
    "terraform.tfstate",
    "terraform.tfstate.backup",
    "errored.tfstate",
    ".terraform",
    ".terraform.lock.hcl",
}
# Override files are Terraform's last word on the configuration: the agent writes one that makes
# the platform the state backend, and no workspace file may override it.
OVERRIDE_SUFFIXES = ("override.tf", "override.tf.json")
VARIABLE_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_-]{0,99}$")
ENV_NAME_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,99}$")
MAX_VARIABLES = 200
MAX_FILES = 100
MAX_FILE_BYTES = 512 * 1024
MAX_VALUE_CHARS = 64 * 1024


def _no_nul(value: str, what: str) -> None:
    if "\x00" in value:
        raise serializers.ValidationError("%s must not contain NUL characters." % what)


class StrictCharField(serializers.CharField):
    """A CharField that refuses numbers and booleans instead of turning them into strings."""

    def to_internal_value(self, data: Any) -> str:
        if not isinstance(data, str):
            self.fail("invalid")
        return super().to_internal_value(data)


class StateVersionSerializer(serializers.ModelSerializer[StateVersion]):
    """A state version without its content (states can be megabytes)."""

    class Meta:
        model = StateVersion
        fields = [
            "id",
            "serial",
            "terraform_serial",
            "lineage",
            "status",
            "task",
            "attempt",
            "resolved_by",
            "resolved_at",
            "created_at",
        ]
        read_only_fields = fields


class StateLockSerializer(serializers.ModelSerializer[StateLock]):
    """Terraform's state lock: which task attempt holds (or held) it, since when, and Terraform's
    own lock info (who ran it, which operation)."""

    who = serializers.SerializerMethodField()
    operation = serializers.SerializerMethodField()

    class Meta:
        model = StateLock
        fields = ["lock_id", "task", "attempt", "who", "operation", "acquired_at", "released_at", "release_reason"]
        read_only_fields = fields

    def get_who(self, lock: StateLock) -> str:
        return str(lock.info.get("Who", ""))[:200]

    def get_operation(self, lock: StateLock) -> str:
        return str(lock.info.get("Operation", ""))[:100]


class StateTransitionSerializer(serializers.ModelSerializer[StateTransition]):
    class Meta:
        model = StateTransition
        fields = [
            "kind",
            "from_version",
            "to_version",
            "from_serial",
            "from_lineage",
            "to_serial",
            "to_lineage",
            "task",
            "attempt",
            "actor",
            "created_at",
        ]
        read_only_fields = fields


class WorkspaceSerializer(serializers.ModelSerializer[Workspace]):
    pool = serializers.SlugRelatedField(slug_field="name", queryset=AgentPool.objects.all())
    terraform_files = serializers.DictField(child=StrictCharField(allow_blank=True, trim_whitespace=False))
    drift_check_interval_minutes = serializers.IntegerField(min_value=1, max_value=60 * 24 * 366, required=False)
    current_state = StateVersionSerializer(read_only=True)
    state_conflicts = serializers.SerializerMethodField(
        help_text="Unresolved conflict versions: states of settled attempts. Applies are held until resolved."
    )
    state_lock = serializers.SerializerMethodField(help_text="Terraform's state lock now, or null.")

    class Meta:
        model = Workspace
        fields = [
            "id",
            "name",
            "description",
            "pool",
            "terraform_files",
            "drift_check_enabled",
            "drift_check_interval_minutes",
            "drift_status",
            "drift_last_checked_at",
            "drift_next_check_at",
            "locked",
            "locked_by",
            "locked_at",
            "lock_reason",
            "current_state",
            "state_conflicts",
            "state_lock",
            "created_at",
            "updated_at",
        ]
        read_only_fields = [
            "drift_status",
            "drift_last_checked_at",
            "drift_next_check_at",
            "locked",
            "locked_by",
            "locked_at",
            "lock_reason",
        ]

    @extend_schema_field(StateVersionSerializer(many=True))
    def get_state_conflicts(self, workspace: Workspace) -> list[dict[str, Any]]:
        conflicts = getattr(workspace, "conflicts", None)
        if conflicts is None:
            conflicts = workspace.state_versions.filter(status=StateVersion.Status.CONFLICT).defer("state")
        return list(StateVersionSerializer(conflicts, many=True).data)

    @extend_schema_field(StateLockSerializer(allow_null=True))
    def get_state_lock(self, workspace: Workspace) -> dict[str, Any] | None:
        held = getattr(workspace, "held_locks", None)
        if held is None:
            held = list(StateLock.objects.held().filter(workspace=workspace))
        return dict(StateLockSerializer(held[0]).data) if held else None

    def validate_terraform_files(self, files: dict[str, str]) -> dict[str, str]:
        if len(files) > MAX_FILES:
            raise serializers.ValidationError("At most %d files." % MAX_FILES)
        for name, content in files.items():
            if (
                not FILE_NAME_RE.match(name)
                or name in RESERVED_FILES
                or name.startswith("..")
                or name.endswith(OVERRIDE_SUFFIXES)
            ):
                raise serializers.ValidationError("%r is not an allowed file name." % name[:100])
            if len(content.encode("utf-8", "surrogatepass")) > MAX_FILE_BYTES:
                raise serializers.ValidationError("%s is larger than %d bytes." % (name, MAX_FILE_BYTES))
            _no_nul(content, name)
        return files

    def validate_description(self, value: str) -> str:
        _no_nul(value, "description")
        return value


class VariableSerializer(serializers.ModelSerializer[Variable]):
    """A workspace variable. The value of a sensitive one is write-only: ``null`` in every response."""

    value = StrictCharField(
        allow_blank=True,
        trim_whitespace=False,
        max_length=MAX_VALUE_CHARS,
        required=False,
        allow_null=True,
        help_text="Write-only when sensitive: responses carry null and is_set instead. "
        "Null or left out on a change: the value stays as it is.",
    )
    is_set = serializers.BooleanField(read_only=True)

    class Meta:
        model = Variable
        fields = ["id", "key", "category", "sensitive", "value", "is_set", "description", "created_at", "updated_at"]
        read_only_fields = ["id", "is_set", "created_at", "updated_at"]

    def to_representation(self, instance: Variable) -> dict[str, Any]:
        data = super().to_representation(instance)
        if instance.sensitive:
            data["value"] = None
        return data

    def validate(self, attrs: dict[str, Any]) -> dict[str, Any]:
        instance = self.instance
        category = attrs.get("category", instance.category if instance else Variable.Category.TERRAFORM)
        key = attrs.get("key", instance.key if instance else None)
        if key is None:
            raise serializers.ValidationError({"key": "This field is required."})
        pattern = VARIABLE_RE if category == Variable.Category.TERRAFORM else ENV_NAME_RE
        if not pattern.match(key):
            raise serializers.ValidationError({"key": "%r is not a valid %s variable name." % (key[:100], category)})
        if attrs.get("value", "") is None:
            del attrs["value"]
        if instance is None and "value" not in attrs:
            raise serializers.ValidationError({"value": "This field is required."})
        if "value" in attrs:
            # The message names the variable, never the value.
            _no_nul(attrs["value"], "the value of %s" % key)
        _no_nul(attrs.get("description", ""), "description")
        return attrs


class LockSerializer(serializers.Serializer[Any]):
    reason = serializers.CharField(max_length=200, required=False, allow_blank=True)


class TaskSerializer(serializers.ModelSerializer[Task]):
    agent: serializers.SlugRelatedField[Any] = serializers.SlugRelatedField(slug_field="agent_id", read_only=True)
    agent_connected_pod = serializers.CharField(source="agent.connected_pod", read_only=True, default=None)
    created_by: serializers.SlugRelatedField[Any] = serializers.SlugRelatedField(
        slug_field="username", read_only=True, allow_null=True, help_text="who queued it; null for the platform's jobs"
    )

    class Meta:
        model = Task
        fields = [
            "id",
            "workspace",
            "type",
            "status",
            "agent",
            "agent_connected_pod",
            "attempt",
            "timeout_seconds",
            "created_by",
            "created_at",
            "dispatched_at",
            "started_at",
            "finished_at",
            "cancel_requested_at",
            "exit_code",
            "plan_summary",
            "error",
            "log_pruned_at",
        ]
        read_only_fields = fields


class TaskCreateSerializer(serializers.Serializer[Any]):
    workspace = VisibleWorkspaceField()
    type = serializers.ChoiceField(choices=Task.Type.choices)
    timeout_seconds = serializers.IntegerField(min_value=1, max_value=7 * 24 * 3600, required=False)


class TaskFilterSerializer(serializers.Serializer[Any]):
    workspace = serializers.IntegerField(min_value=1, required=False)
    status = serializers.ChoiceField(choices=Task.Status.choices, required=False)
    type = serializers.ChoiceField(choices=Task.Type.choices, required=False)


class LogQuerySerializer(serializers.Serializer[Any]):
    after = serializers.IntegerField(
        min_value=-1, max_value=2**31 - 1, required=False, default=-1, help_text="Chunks with seq greater than this."
    )
    limit = serializers.IntegerField(
        min_value=1, max_value=5000, required=False, default=1000, help_text="At most this many chunks."
    )


class LogChunkSerializer(serializers.ModelSerializer[TaskLogChunk]):
    class Meta:
        model = TaskLogChunk
        fields = ["seq", "text", "created_at"]


class TaskLogSerializer(serializers.Serializer[Any]):
    task = serializers.IntegerField()
    status = serializers.CharField()
    chunks = LogChunkSerializer(many=True)
    complete = serializers.BooleanField(help_text="The task has finished and every chunk up to now is included.")
    pruned = serializers.BooleanField(
        help_text="The log was deleted by retention (TASK_LOG_RETENTION_DAYS after the task finished): no chunks."
    )
    pruned_at = serializers.DateTimeField(allow_null=True, help_text="When retention deleted the log; null if kept.")
    pruned_chunks = serializers.IntegerField(help_text="How many chunks retention deleted.")
    pruned_bytes = serializers.IntegerField(help_text="How many bytes of text retention deleted.")


class WorkspaceStateSerializer(serializers.Serializer[Any]):
    current = StateVersionSerializer(allow_null=True)
    conflicts = StateVersionSerializer(many=True)
    lock = StateLockSerializer(allow_null=True)
    locks = StateLockSerializer(many=True, help_text="The latest locks, newest first.")
    transitions = StateTransitionSerializer(many=True, help_text="The latest moves of the pointer, newest first.")


class StateVersionListSerializer(StateVersionSerializer):
    class Meta(StateVersionSerializer.Meta):
        fields = ["workspace", *StateVersionSerializer.Meta.fields]
        read_only_fields = fields


class StateVersionFilterSerializer(serializers.Serializer[Any]):
    workspace = serializers.IntegerField(min_value=1, required=False)
    status = serializers.ChoiceField(choices=StateVersion.Status.choices, required=False)


class ResourceSerializer(serializers.ModelSerializer[Resource]):
    class Meta:
        model = Resource
        fields = [
            "id",
            "workspace",
            "address",
            "type",
            "name",
            "provider",
            "module",
            "mode",
            "index_key",
            "attributes",
            "state_serial",
            "updated_at",
        ]
        read_only_fields = fields


class ResourceFilterSerializer(serializers.Serializer[Any]):
    workspace = serializers.IntegerField(min_value=1, required=False)
    type = serializers.CharField(max_length=200, required=False)
    mode = serializers.ChoiceField(choices=["managed", "data"], required=False)
    address = serializers.CharField(
        max_length=1000, required=False, help_text="resources whose address contains this text"
    )

    def validate_address(self, value: str) -> str:
        _no_nul(value, "address")
        return value

    def validate_type(self, value: str) -> str:
        _no_nul(value, "type")
        return value

    def lookups(self) -> dict[str, Any]:
        data = dict(self.validated_data)
        if "address" in data:
            data["address__contains"] = data.pop("address")
        return data
