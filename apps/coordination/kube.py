"""The official Kubernetes client, configured once for the whole project.

``api_client()`` builds a ``kubernetes.client.ApiClient`` from the in-cluster service account when
``KUBERNETES_SERVICE_HOST`` is set, else from ``KUBECONFIG``. urllib3's own retries are turned off:
each call already carries a ``_request_timeout`` chosen by its caller (below RenewDeadline for the
lease), and hidden retries would multiply it. Users: the Lease backend (CoordinationV1Api) and the
agent autoscaler (AppsV1Api).

Guarantees: a clear ``KubeConfigError`` when neither source is available. Does NOT: retry, cache
clients across configurations, or refresh credentials other than the client itself does.
"""

from __future__ import annotations

from django.conf import settings
from kubernetes import client, config

# For callers without a deadline of their own (the autoscaler): (connect, read) seconds.
DEFAULT_REQUEST_TIMEOUT = (3.0, 10.0)


class KubeConfigError(RuntimeError):
    pass


def load_configuration() -> client.Configuration:
    configuration = client.Configuration()
    try:
        if settings.KUBERNETES_SERVICE_HOST:
            config.load_incluster_config(client_configuration=configuration)
        elif settings.KUBECONFIG:
            config.load_kube_config(config_file=settings.KUBECONFIG, client_configuration=configuration)
        else:
            raise KubeConfigError("not in a cluster (KUBERNETES_SERVICE_HOST unset) and KUBECONFIG unset")
    except config.ConfigException as exc:
        raise KubeConfigError("cannot load the Kubernetes configuration: %s" % exc) from exc
    return configuration


def api_client(configuration: client.Configuration | None = None) -> client.ApiClient:
    """A client for ``configuration`` (default: in-cluster or KUBECONFIG), without hidden retries."""
    configuration = configuration or load_configuration()
    configuration.retries = False
    return client.ApiClient(configuration)
