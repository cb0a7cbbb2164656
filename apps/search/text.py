"""The text a CMDB resource is searched by (full-text and embedding alike).

Built from what names and describes a resource: its type (also split into words, so
``aws_db_instance`` matches "db instance"), name, address, module, workspace and a short list of
descriptive attributes (names, tags, engines, sizes, regions, ACLs...). Never: values the state
marked sensitive (the CMDB already stores them as ``(sensitive)``), any attribute whose key looks
like a secret (password, token, key, secret, private, credential, certificate), values of the
workspace's variables (a secret passed into a tag would otherwise be searchable), or anything
that is not a short scalar. Guarantees: the same resource and workspace give the same text, so
its SHA-256 says whether it must be re-embedded. Does NOT: read the state itself.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Iterable, Mapping
from typing import Any

from apps.workspaces.cmdb import REDACTED

# Attributes that describe a resource. Identifiers such as ARNs and ids are left out: they add
# tokens no one searches by meaning, and they crowd the model's 256-token window.
DESCRIPTIVE = (
    "name",
    "description",
    "tags",
    "labels",
    "engine",
    "engine_version",
    "instance_class",
    "instance_type",
    "machine_type",
    "node_type",
    "storage_type",
    "allocated_storage",
    "bucket",
    "acl",
    "versioning",
    "region",
    "location",
    "availability_zone",
    "runtime",
    "handler",
    "image",
    "kind",
    "family",
    "cidr_block",
    "protocol",
    "port",
    "db_name",
    "database_name",
    "identifier",
    "title",
    "comment",
    "domain_name",
    "publicly_accessible",
    "multi_az",
    "role",
)
# Words of Terraform type names that stand for a longer one: "aws_db_instance" is read as "aws
# db (database) instance", so a search for "database" finds it by meaning and by full text alike.
EXPANSIONS = {
    "db": "database",
    "rds": "relational database",
    "sql": "sql database",
    "dynamodb": "dynamodb nosql database table",
    "elasticache": "elasticache cache",
    "s3": "s3 storage",
    "lb": "load balancer",
    "alb": "application load balancer",
    "elb": "elastic load balancer",
    "sg": "security group",
    "sqs": "sqs message queue",
    "sns": "sns notification topic",
    "pubsub": "pubsub message topic",
    "kms": "kms encryption key",
    "acm": "acm tls certificate",
    "iam": "iam identity access",
    "vpc": "vpc network",
    "ecr": "ecr container image registry",
    "eks": "eks kubernetes cluster",
    "gke": "gke kubernetes cluster",
    "ec2": "ec2 virtual machine",
    "asg": "autoscaling group",
}
SECRET_KEY_RE = re.compile(r"pass|secret|token|key|private|credential|cert|auth", re.IGNORECASE)
MAX_VALUE_CHARS = 120
MAX_TEXT_CHARS = 1500


def _scalars(key: str, value: Any) -> Iterable[str]:
    if isinstance(value, bool):
        yield "%s %s" % (key, "yes" if value else "no")
    elif isinstance(value, int | float):
        yield "%s %s" % (key, value)
    elif isinstance(value, str):
        if value and value != REDACTED and len(value) <= MAX_VALUE_CHARS:
            yield "%s %s" % (key, value)
    elif isinstance(value, Mapping):  # tags, labels: "tag Name=billing-db"
        for k, v in sorted(value.items()):
            named = isinstance(k, str) and not SECRET_KEY_RE.search(k)
            if named and isinstance(v, str | int | float | bool) and v != REDACTED and len(str(v)) <= MAX_VALUE_CHARS:
                yield "%s %s %s" % (key, k, v)


def resource_text(
    *,
    type: str,
    name: str,
    address: str,
    module: str,
    mode: str,
    workspace: str,
    attributes: Mapping[str, Any],
    secrets: Iterable[str] = (),
) -> str:
    kind = type.split("_", 1)
    type_words = " ".join(EXPANSIONS.get(word, word) for word in type.split("_"))
    words = [
        "%s %s" % ("data source" if mode == "data" else "resource", type_words),
        "provider %s" % kind[0] if len(kind) == 2 else "",
        "name %s" % name.replace("_", " ").replace("-", " "),
        "address %s" % address,
        "module %s" % module if module else "",
        "workspace %s" % workspace,
    ]
    for key in DESCRIPTIVE:
        if key in attributes and not SECRET_KEY_RE.search(key):
            words.extend(_scalars(key.replace("_", " "), attributes[key]))
    text = "; ".join(w for w in words if w)
    for secret in secrets:
        if len(secret) >= 4:
            text = text.replace(secret, REDACTED)
    return text[:MAX_TEXT_CHARS]


def text_sha256(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8", "surrogatepass")).hexdigest()
