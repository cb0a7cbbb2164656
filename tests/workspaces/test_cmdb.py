"""cmdb_sync: Terraform state format v4 indexed into Resource rows, one fenced transaction each."""

from __future__ import annotations

import copy
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import pytest
from django.db import connection

from apps.coordination.fencing import StaleEpoch, Tick, raise_epoch
from apps.workspaces import cmdb
from apps.workspaces.jobs import CmdbSyncError, cmdb_sync
from apps.workspaces.models import Resource, StateVersion, Workspace
from tests import plans
from tests.agents.fixtures import Pool

pytestmark = pytest.mark.django_db

AWS = 'provider["registry.terraform.io/hashicorp/aws"]'


def state(serial: int, resources: list[dict[str, Any]]) -> dict[str, Any]:
    return {
        "version": 4,
        "terraform_version": "1.0.3",
        "serial": serial,
        "lineage": "3f0e0c3c-1b7a-4c35-9d0e-4d1c5a1f6a11",
        "outputs": {},
        "resources": resources,
    }


def instance(attributes: dict[str, Any], index_key: Any = None, **extra: Any) -> dict[str, Any]:
    data: dict[str, Any] = {"schema_version": 0, "attributes": attributes, "sensitive_attributes": [], **extra}
    if index_key is not None:
        data["index_key"] = index_key
    return data


RESOURCES: list[dict[str, Any]] = [
    {
        "mode": "managed",
        "type": "aws_vpc",
        "name": "main",
        "provider": AWS,
        "instances": [instance({"id": "vpc-1", "cidr_block": "10.0.0.0/16"})],
    },
    {
        "mode": "data",
        "type": "aws_ami",
        "name": "base",
        "provider": AWS,
        "instances": [instance({"id": "ami-1"})],
    },
    {
        "module": "module.net",
        "mode": "managed",
        "type": "aws_subnet",
        "name": "private",
        "each": "list",
        "provider": AWS,
        "instances": [instance({"id": "subnet-0"}, 0), instance({"id": "subnet-1"}, 1)],
    },
    {
        "module": 'module.app["eu"]',
        "mode": "managed",
        "type": "aws_instance",
        "name": "web",
        "each": "map",
        "provider": AWS,
        "instances": [
            instance({"id": "i-a", "tags": {"Name": "a"}}, "a"),
            instance(
                {"id": "i-q", "password": "hunter2", "users": [{"name": "x", "key": "s3cret"}]},
                'q"uote',
                sensitive_attributes=[
                    [{"type": "get_attr", "value": "password"}],
                    [
                        {"type": "get_attr", "value": "users"},
                        {"type": "index", "value": {"value": 0, "type": "number"}},
                    ],
                ],
            ),
        ],
    },
    {
        "mode": "managed",
        "type": "null_resource",
        "name": "legacy",
        "provider": 'provider["registry.terraform.io/hashicorp/null"]',
        "instances": [{"schema_version": 0, "attributes_flat": {"id": "123", "triggers.%": "0"}}],
    },
]

ADDRESSES = [
    "aws_vpc.main",
    "data.aws_ami.base",
    'module.app["eu"].aws_instance.web["a"]',
    'module.app["eu"].aws_instance.web["q\\"uote"]',
    "module.net.aws_subnet.private[0]",
    "module.net.aws_subnet.private[1]",
    "null_resource.legacy",
]


@pytest.fixture
def ws(agent_pool: Pool) -> Workspace:
    return Workspace.objects.create(name="ws-cmdb", pool=agent_pool.pool)


def add_state(ws: Workspace, serial: int, resources: list[dict[str, Any]]) -> StateVersion:
    version = StateVersion.objects.create(workspace=ws, serial=serial, state=state(serial, resources))
    Workspace.objects.filter(pk=ws.pk).update(current_state=version)
    return version


def rows(ws: Workspace) -> dict[str, Resource]:
    return {r.address: r for r in Resource.objects.filter(workspace=ws)}


def test_addresses_cover_modules_count_for_each_and_data_sources() -> None:
    instances = cmdb.parse_state(state(1, RESOURCES))
    assert sorted(i.address for i in instances) == ADDRESSES
    by = {i.address: i for i in instances}
    assert by["module.net.aws_subnet.private[1]"].index_key == 1
    assert by['module.app["eu"].aws_instance.web["a"]'].module == 'module.app["eu"]'
    assert by["data.aws_ami.base"].mode == "data"
    assert by["null_resource.legacy"].attributes == {"id": "123", "triggers.%": "0"}


def test_sensitive_values_are_redacted() -> None:
    by = {i.address: i for i in cmdb.parse_state(state(1, RESOURCES))}
    attrs = by['module.app["eu"].aws_instance.web["q\\"uote"]'].attributes
    assert attrs["password"] == cmdb.REDACTED
    assert attrs["users"] == [cmdb.REDACTED]  # an index step: {"value": 0, "type": "number"}
    assert attrs["id"] == "i-q"


@pytest.mark.parametrize(
    ("bad", "message"),
    [
        ([], "JSON object"),
        ({"version": 3, "resources": []}, "version 3"),
        ({"version": 4, "resources": {}}, "must be a list"),
        (state(1, [{"mode": "weird", "type": "t", "name": "n", "instances": []}]), "unknown mode"),
        (state(1, [{"mode": "managed", "name": "n", "instances": []}]), "type and name"),
        (state(1, [{"mode": "managed", "type": "t", "name": "n", "instances": [instance({}, 1.5)]}]), "index_key"),
        (state(1, [{"mode": "managed", "type": "t", "name": "n", "instances": [instance({}), instance({})]}]), "twice"),
        (state(1, [{"mode": "managed", "type": "t", "name": "n", "instances": [instance([])]}]), "attributes"),  # type: ignore[arg-type]
        (state(1, [{"mode": "managed", "type": "t" * 300, "name": "n", "instances": [instance({})]}]), "longer"),
    ],
)
def test_invalid_states_are_rejected_with_a_clear_error(bad: Any, message: str) -> None:
    with pytest.raises(cmdb.StateFormatError, match=message):
        cmdb.parse_state(bad)


def test_sync_indexes_the_newest_state_and_is_idempotent(ws: Workspace) -> None:
    add_state(ws, 1, RESOURCES[:1])
    add_state(ws, 2, RESOURCES)
    assert cmdb.workspaces_to_sync() == [ws.pk]
    result = cmdb.sync_workspace(ws.pk)
    assert result is not None and (result.created, result.updated, result.deleted, result.serial) == (7, 0, 0, 2)
    indexed = rows(ws)
    assert sorted(indexed) == ADDRESSES
    assert {r.state_serial for r in indexed.values()} == {2}
    ws.refresh_from_db()
    assert ws.cmdb_synced_serial == 2
    before = {a: r.updated_at for a, r in indexed.items()}
    assert cmdb.workspaces_to_sync() == []
    assert cmdb.sync_workspace(ws.pk) is None
    assert {a: r.updated_at for a, r in rows(ws).items()} == before


def test_a_new_serial_updates_changed_adds_new_and_removes_vanished(ws: Workspace) -> None:
    add_state(ws, 1, RESOURCES)
    cmdb.sync_workspace(ws.pk)
    changed = copy.deepcopy(RESOURCES[:3])
    changed[0]["instances"][0]["attributes"]["cidr_block"] = "10.1.0.0/16"
    changed[2]["instances"].append(instance({"id": "subnet-2"}, 2))
    add_state(ws, 2, changed)
    assert cmdb.workspaces_to_sync() == [ws.pk]
    result = cmdb.sync_workspace(ws.pk)
    assert result is not None and (result.created, result.updated, result.deleted) == (1, 1, 3)
    indexed = rows(ws)
    assert sorted(indexed) == [
        "aws_vpc.main",
        "data.aws_ami.base",
        "module.net.aws_subnet.private[0]",
        "module.net.aws_subnet.private[1]",
        "module.net.aws_subnet.private[2]",
    ]
    assert indexed["aws_vpc.main"].attributes["cidr_block"] == "10.1.0.0/16"
    assert {r.state_serial for r in indexed.values()} == {2}


def test_a_workspace_whose_states_are_all_gone_loses_its_rows(ws: Workspace) -> None:
    add_state(ws, 1, RESOURCES)
    cmdb.sync_workspace(ws.pk)
    StateVersion.objects.filter(workspace=ws).delete()
    assert cmdb.workspaces_to_sync() == [ws.pk]
    result = cmdb.sync_workspace(ws.pk)
    assert result is not None and result.deleted == 7
    assert not Resource.objects.filter(workspace=ws).exists()
    assert cmdb.workspaces_to_sync() == []


def test_each_workspace_is_one_transaction_that_rolls_back_whole(
    ws: Workspace, monkeypatch: pytest.MonkeyPatch
) -> None:
    add_state(ws, 1, RESOURCES)
    cmdb.sync_workspace(ws.pk)
    add_state(ws, 2, RESOURCES[:1])  # would delete six rows

    def fail(*args: object, **kwargs: object) -> None:
        raise RuntimeError("database hiccup")

    monkeypatch.setattr(Resource.objects, "bulk_create", fail)
    with pytest.raises(RuntimeError):
        cmdb.sync_workspace(ws.pk)
    assert sorted(rows(ws)) == ADDRESSES  # the deletions were rolled back with it
    ws.refresh_from_db()
    assert ws.cmdb_synced_serial == 1


def test_the_job_syncs_good_workspaces_and_reports_bad_ones_without_touching_them(
    ws: Workspace, agent_pool: Pool
) -> None:
    raise_epoch(name="lease", epoch=1, holder="leader")
    other = Workspace.objects.create(name="ws-broken", pool=agent_pool.pool)
    add_state(other, 1, RESOURCES[:1])
    cmdb.sync_workspace(other.pk)
    bad = StateVersion.objects.create(workspace=other, serial=2, state={"version": 3, "modules": []})
    Workspace.objects.filter(pk=other.pk).update(current_state=bad)
    add_state(ws, 1, RESOURCES)
    opened: list[str] = []
    tick = Tick(job="cmdb_sync", holder="leader", lease="lease", epoch=1)

    class CountingTick(Tick):
        @contextmanager
        def fenced(self) -> Iterator[None]:
            opened.append("tx")
            with super().fenced():
                yield

    counting = CountingTick(job=tick.job, holder=tick.holder, lease=tick.lease, epoch=tick.epoch)
    with pytest.raises(CmdbSyncError, match="workspace %d: unsupported state format version 3" % other.pk):
        cmdb_sync(counting)
    assert len(opened) == 2  # one transaction per workspace
    assert sorted(rows(ws)) == ADDRESSES
    assert sorted(rows(other)) == ["aws_vpc.main"]
    other.refresh_from_db()
    assert other.cmdb_synced_serial == 1


def test_a_stale_tick_of_the_job_writes_nothing(ws: Workspace) -> None:
    raise_epoch(name="lease", epoch=2, holder="successor")
    add_state(ws, 1, RESOURCES)
    with pytest.raises(StaleEpoch):
        cmdb_sync(Tick(job="cmdb_sync", holder="old", lease="lease", epoch=1))
    assert not Resource.objects.exists()
    ws.refresh_from_db()
    assert ws.cmdb_synced_serial is None


def test_the_job_reads_the_due_workspaces_a_batch_at_a_time_and_a_bad_one_once(
    ws: Workspace, agent_pool: Pool, monkeypatch: pytest.MonkeyPatch
) -> None:
    raise_epoch(name="lease", epoch=1, holder="leader")
    monkeypatch.setattr(cmdb, "SYNC_BATCH", 1)
    broken = Workspace.objects.create(name="ws-broken", pool=agent_pool.pool)
    last = Workspace.objects.create(name="ws-last", pool=agent_pool.pool)
    for workspace in (ws, last):
        add_state(workspace, 1, RESOURCES[:1])
    bad = StateVersion.objects.create(workspace=broken, serial=1, state={"version": 3, "modules": []})
    Workspace.objects.filter(pk=broken.pk).update(current_state=bad)
    with pytest.raises(CmdbSyncError) as raised:
        cmdb_sync(Tick(job="cmdb_sync", holder="leader", lease="lease", epoch=1))
    assert str(raised.value) == "workspace %d: unsupported state format version 3 (only 4)" % broken.pk
    assert cmdb.workspaces_to_sync() == [broken.pk]
    assert sorted(rows(ws)) == sorted(rows(last)) == ["aws_vpc.main"]


# A fleet, seeded by SQL: 20,000 workspaces, each with a small configuration (1 KB), seven in ten
# with a state the CMDB holds, the rest never applied; one in two hundred due, spread over the
# table: half with a state applied since the CMDB indexed, half with CMDB rows left but no current
# state (0). ANALYZEd but not vacuumed since (workspaces are updated all day: their pages are not
# all-visible), the case where the unbatched query scanned and sorted every workspace.
WORKSPACES = 20_000
DUE = 100

# What reading the due workspaces may touch: the index's pages and one heap page per due
# workspace (101 on PostgreSQL 18). A scan reads the whole table (4,858 pages here).
DUE_BUFFERS = DUE + 20


@pytest.fixture
def a_fleet(agent_pool: Pool) -> None:
    """Committed, as in production: the flush that ends the test (transaction=True) truncates the
    tables, so no later test plans over these rows."""
    seed = {"pool": agent_pool.pool.pk, "workspaces": WORKSPACES, "every": 2 * WORKSPACES // DUE}
    with connection.cursor() as cursor:
        cursor.execute(
            "INSERT INTO workspaces_workspace (name, description, pool_id, terraform_files, variables, locked,"
            " lock_reason, drift_check_enabled, drift_check_interval_minutes, drift_status, created_at, updated_at)"
            " SELECT 'ws-' || i, '', %(pool)s, jsonb_build_object('main.tf', repeat('#', 1000)), '{}', false, '',"
            " false, 60, 'unknown', now(), now()"
            " FROM generate_series(1, %(workspaces)s) AS i",
            seed,
        )
        cursor.execute(
            "INSERT INTO workspaces_stateversion (workspace_id, serial, lineage, terraform_serial, state, status,"
            " created_at)"
            " SELECT id, 1, 'L', 1, '{}', 'accepted', now() FROM workspaces_workspace WHERE id %% 10 < 7",
            seed,
        )
        cursor.execute(
            "UPDATE workspaces_workspace w SET current_state_id = v.id,"
            " cmdb_synced_state_id = CASE WHEN w.id %% %(every)s = 3 THEN NULL ELSE v.id END"
            " FROM workspaces_stateversion v WHERE v.workspace_id = w.id",
            seed,
        )
        cursor.execute("UPDATE workspaces_workspace SET cmdb_synced_state_id = 0 WHERE id %% %(every)s = 208", seed)
        cursor.execute("ANALYZE workspaces_workspace")
    assert len(cmdb.workspaces_to_sync()) == DUE


@pytest.mark.django_db(transaction=True)
def test_the_due_workspaces_are_read_from_the_partial_index_not_from_every_workspace(a_fleet: None) -> None:
    """Without enable_seqscan = off, on an ANALYZEd fleet of realistic size, cmdb_sync reads the due
    workspaces from workspace_cmdb_due, for a batch of ten and for the job's own, and touches their
    pages, not every workspace's. (On a tiny table the planner's choice follows whatever statistics
    earlier tests left.)"""
    for limit in (10, cmdb.SYNC_BATCH):
        params = {"after": 0, "limit": limit}
        plans.assert_indexed(cmdb.DUE_SQL, params, "workspace_cmdb_due", table="workspaces_workspace")
    ran = plans.plan(cmdb.DUE_SQL, {"after": 0, "limit": cmdb.SYNC_BATCH}, analyze=True)
    found = [n["Actual Rows"] for n in plans.nodes(ran) if n.get("Index Name") == "workspace_cmdb_due"]
    assert found == [DUE], found  # every due workspace, read from the index
    assert plans.buffers(ran) <= DUE_BUFFERS, plans.buffers(ran)
