"""A small CMDB of 30 resources of mixed types across three workspaces, as Terraform v4 states."""

from __future__ import annotations

from typing import Any

from apps.agents.models import AgentPool
from apps.workspaces import cmdb
from apps.workspaces.encryption import encrypt
from apps.workspaces.models import StateVersion, Variable, Workspace

AWS = 'provider["registry.terraform.io/hashicorp/aws"]'
GOOGLE = 'provider["registry.terraform.io/hashicorp/google"]'
K8S = 'provider["registry.terraform.io/hashicorp/kubernetes"]'


def res(type_: str, name: str, attributes: dict[str, Any], provider: str = AWS, **extra: Any) -> dict[str, Any]:
    instance: dict[str, Any] = {"schema_version": 0, "attributes": attributes, "sensitive_attributes": []}
    instance.update(extra.pop("instance", {}))
    return {"mode": "managed", "type": type_, "name": name, "provider": provider, "instances": [instance], **extra}


BILLING = [
    res(
        "aws_db_instance",
        "billing",
        {
            "identifier": "billing-prod",
            "engine": "postgres",
            "instance_class": "db.r6g.large",
            "password": "Db-Pa55-word!",
            "tags": {"service": "billing", "team": "payments"},
        },
        instance={"sensitive_attributes": [[{"type": "get_attr", "value": "password"}]]},
    ),
    res("aws_security_group", "billing_db", {"name": "billing-db-sg", "description": "allow 5432 from app"}),
    res("aws_lambda_function", "invoice_renderer", {"runtime": "python3.11", "handler": "app.handler"}),
    res("aws_sqs_queue", "invoices", {"name": "billing-invoices"}),
    res("aws_iam_role", "billing_app", {"name": "billing-app"}),
    res("aws_cloudwatch_log_group", "billing", {"name": "/billing/app"}),
    res("aws_route53_record", "billing_api", {"name": "api.billing.example.com"}),
    res("aws_kms_key", "billing", {"description": "billing encryption"}),
    res("aws_elasticache_cluster", "sessions", {"engine": "redis", "node_type": "cache.t3.micro"}),
    res("aws_sns_topic", "alerts", {"name": "billing-alerts"}),
]

WEB = [
    res("aws_s3_bucket", "public_assets", {"bucket": "acme-public-assets", "acl": "public-read"}),
    res("aws_s3_bucket", "logs", {"bucket": "acme-access-logs", "acl": "private"}),
    res("aws_cloudfront_distribution", "cdn", {"comment": "static site cdn"}),
    res("aws_instance", "web", {"instance_type": "t3.small", "tags": {"Name": "web-1"}}),
    res("aws_lb", "front", {"name": "front-lb"}),
    res("aws_lb_target_group", "web", {"name": "web-tg", "port": 80, "protocol": "HTTP"}),
    res("aws_autoscaling_group", "web", {"name": "web-asg"}),
    res("aws_vpc", "main", {"cidr_block": "10.0.0.0/16"}),
    res("aws_subnet", "public", {"cidr_block": "10.0.1.0/24", "availability_zone": "eu-west-1a"}),
    res("aws_acm_certificate", "site", {"domain_name": "www.example.com"}),
]

PLATFORM = [
    res("google_sql_database_instance", "analytics", {"database_version": "MYSQL_8_0", "name": "analytics"}, GOOGLE),
    res(
        "google_storage_bucket",
        "exports",
        {"name": "acme-exports", "location": "EU", "labels": {"region": "eu-hidden-value"}},
        GOOGLE,
    ),
    res("google_compute_instance", "bastion", {"machine_type": "e2-micro", "name": "bastion"}, GOOGLE),
    res("google_pubsub_topic", "events", {"name": "events"}, GOOGLE),
    res("kubernetes_deployment", "api", {"metadata": [{"name": "api"}]}, K8S),
    res("kubernetes_service", "api", {"metadata": [{"name": "api"}]}, K8S),
    res("kubernetes_namespace", "platform", {"metadata": [{"name": "platform"}]}, K8S),
    res("kubernetes_secret", "api_keys", {"data": {"API_KEY": "sk_live_123456"}}, K8S),
    res("aws_dynamodb_table", "feature_flags", {"name": "feature-flags"}),
    res("aws_ecr_repository", "api", {"name": "api"}),
]

WORKSPACES = {"billing-prod": BILLING, "web-prod": WEB, "platform": PLATFORM}


def state(resources: list[dict[str, Any]], serial: int = 1) -> dict[str, Any]:
    return {"version": 4, "serial": serial, "lineage": "l-1", "outputs": {}, "resources": resources}


def build(pool: AgentPool, variables: dict[str, dict[str, str]] | None = None) -> dict[str, Workspace]:
    """The three workspaces with their states, synced into the CMDB; ``variables``: sensitive ones."""
    made = {}
    for name, resources in WORKSPACES.items():
        ws = Workspace.objects.create(name=name, pool=pool)
        for key, value in (variables or {}).get(name, {}).items():
            Variable.objects.create(workspace=ws, key=key, sensitive=True, encrypted_value=encrypt(value))
        version = StateVersion.objects.create(workspace=ws, serial=1, state=state(resources))
        Workspace.objects.filter(pk=ws.pk).update(current_state=version)
        cmdb.sync_workspace(ws.pk)
        made[name] = ws
    return made
