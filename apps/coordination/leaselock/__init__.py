"""Lock backends for the elector: ``make_lock`` picks one from the configured name.

``auto`` means kubernetes when running in a cluster (KUBERNETES_SERVICE_HOST) or with a
KUBECONFIG, else postgres. There is deliberately no "everyone leads" fallback: two replicas outside
Kubernetes still elect exactly one leader, through PostgreSQL.
"""

from __future__ import annotations

from django.conf import settings

from apps.coordination.elector import BACKENDS
from apps.coordination.leaselock.base import LeaseLock

__all__ = ["BACKENDS", "make_lock", "resolve_backend"]


def resolve_backend(backend: str) -> str:
    if backend not in BACKENDS:
        raise ValueError("unknown leader-election backend %r (use one of %s)" % (backend, ", ".join(BACKENDS)))
    if backend == "auto":
        return "kubernetes" if settings.KUBERNETES_SERVICE_HOST or settings.KUBECONFIG else "postgres"
    return backend


def make_lock(*, backend: str, name: str, namespace: str) -> LeaseLock:
    resolved = resolve_backend(backend)
    if resolved == "kubernetes":
        from apps.coordination.kube import api_client
        from apps.coordination.leaselock.kubernetes import KubernetesLeaseLock

        return KubernetesLeaseLock(name=name, namespace=namespace, api_client=api_client())
    from apps.coordination.leaselock.postgres import PostgresLeaseLock

    return PostgresLeaseLock(name=name, namespace=namespace)
