"""A workspace's variables: written through here, read out for a run only by :func:`for_dispatch`.

Guarantees: a sensitive value is encrypted before it reaches the database and is never returned
to a client by anything here: :func:`for_dispatch` serves ``task.dispatch`` alone, and
:func:`redaction_values` serves only texts that must contain no value (the CMDB search); a
variable once sensitive stays sensitive (its value can be replaced, never read back); writing a
variable also removes its key from the workspace's legacy ``variables`` column, so a value marked
sensitive leaves no clear copy behind. Does NOT: keep Terraform from printing a value (declare
the Terraform variable ``sensitive = true`` too), or hide values from the agent that runs the task.
"""

from __future__ import annotations

import logging

from django.db import transaction

from apps.workspaces import encryption
from apps.workspaces.models import Variable, Workspace

logger = logging.getLogger(__name__)


class VariableConflict(Exception):
    pass


def do_set_variable(
    *,
    workspace_id: int,
    variable: Variable | None = None,
    key: str,
    category: str,
    sensitive: bool,
    value: str | None,
    description: str,
) -> Variable:
    """Create (``variable`` None) or change a variable. ``value`` None keeps the current value."""
    with transaction.atomic():
        workspace = Workspace.objects.select_for_update().get(pk=workspace_id)
        if variable is None:
            variable = Variable(workspace=workspace)
        else:
            variable = Variable.objects.select_for_update().get(pk=variable.pk, workspace=workspace)
            if variable.sensitive and not sensitive:
                raise VariableConflict("A sensitive variable cannot be made non-sensitive; delete and re-create it.")
        clear = variable.value if not variable.sensitive else None
        if value is None and sensitive and not variable.sensitive:
            value = clear  # marked sensitive: its current value moves to the encrypted column
        if Variable.objects.filter(workspace=workspace, category=category, key=key).exclude(pk=variable.pk).exists():
            raise VariableConflict("The workspace already has a %s variable %s." % (category, key))
        variable.key, variable.category, variable.sensitive, variable.description = (
            key,
            category,
            sensitive,
            description,
        )
        if sensitive:
            if value is not None:
                variable.encrypted_value = encryption.encrypt(value)
            variable.value = ""
        elif value is not None:
            variable.value = value
        variable.save()
        if key in workspace.legacy_variables:
            legacy = dict(workspace.legacy_variables)
            legacy.pop(key)
            workspace.legacy_variables = legacy
            workspace.save(update_fields=["legacy_variables"])
    logger.info("workspace %d: %s variable %s written (sensitive=%s)", workspace_id, category, key, sensitive)
    return variable


def do_delete_variable(*, variable: Variable) -> None:
    variable.delete()
    logger.info("workspace %d: %s variable %s deleted", variable.workspace_id, variable.category, variable.key)


def for_dispatch(workspace_id: int) -> tuple[dict[str, str], dict[str, str]]:
    """The workspace's (terraform, env) variables with sensitive values decrypted: only for the
    ``task.dispatch`` frame sent to the agent that runs the task."""
    terraform: dict[str, str] = {}
    env: dict[str, str] = {}
    for variable in Variable.objects.filter(workspace_id=workspace_id).order_by("key"):
        value = encryption.decrypt(variable.encrypted_value) if variable.sensitive else variable.value
        (terraform if variable.category == Variable.Category.TERRAFORM else env)[variable.key] = value
    return terraform, env


def redaction_values(workspace_id: int) -> list[str]:
    """Every value of the workspace's variables, sensitive ones decrypted, and of its legacy column:
    what derived texts (the CMDB search) must never contain. Raises UndecryptableValue rather
    than leave a value out."""
    terraform, env = for_dispatch(workspace_id)
    legacy = Workspace.objects.filter(pk=workspace_id).values_list("legacy_variables", flat=True).first() or {}
    values = [*terraform.values(), *env.values(), *(v for v in legacy.values() if isinstance(v, str))]
    return [value for value in values if value]


def do_rotate_keys(*, batch: int = 500) -> int:
    """Re-encrypt every sensitive value with the first key; returns how many were rewritten."""
    done = 0
    last = 0
    while True:
        with transaction.atomic():
            rows = list(
                Variable.objects.select_for_update()
                .filter(sensitive=True, pk__gt=last)
                .exclude(encrypted_value="")
                .order_by("pk")[:batch]
            )
            for row in rows:
                row.encrypted_value = encryption.rotate(row.encrypted_value)
                row.save(update_fields=["encrypted_value", "updated_at"])
        if not rows:
            return done
        done += len(rows)
        last = rows[-1].pk
