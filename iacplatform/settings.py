"""Settings: every value comes from the environment (12-factor), with the defaults documented in
README.md. Nothing else in the project reads os.environ; system checks in
apps/coordination/checks.py reject bad combinations."""

from __future__ import annotations

import base64
import ipaddress
import os
import secrets
import socket
import sys
from datetime import timedelta
from pathlib import Path
from typing import Any

from django.core.exceptions import ImproperlyConfigured

from iacplatform.dburl import DatabaseURLError, django_database, libpq_params

BASE_DIR = Path(__file__).resolve().parent.parent


def env_str(name: str, default: str) -> str:
    return os.environ.get(name, default)


def env_bool(name: str, default: bool) -> bool:
    raw = os.environ.get(name)
    if raw is None or raw == "":
        return default
    if raw.lower() in ("1", "true", "yes", "on"):
        return True
    if raw.lower() in ("0", "false", "no", "off"):
        return False
    raise ImproperlyConfigured("%s must be a boolean (1/0, true/false), got %r" % (name, raw))


def env_number(name: str, default: float) -> float:
    raw = os.environ.get(name)
    if raw is None or raw == "":
        return default
    try:
        return float(raw)
    except ValueError:
        raise ImproperlyConfigured("%s must be a number, got %r" % (name, raw)) from None


def env_int(name: str, default: int) -> int:
    value = env_number(name, default)
    if value != int(value):
        raise ImproperlyConfigured("%s must be an integer, got %r" % (name, os.environ[name]))
    return int(value)


def env_list(name: str, default: list[str]) -> list[str]:
    raw = os.environ.get(name)
    if raw is None:
        return default
    return [item.strip() for item in raw.split(",") if item.strip()]


def _default_role() -> str:
    argv = " ".join(sys.argv[:2])
    for command, role in (("runleader", "leader"), ("runagent", "agent"), ("pytest", "test")):
        if command in argv:
            return role
    return "web"


DEBUG = env_bool("DEBUG", False)
ALLOWED_HOSTS = env_list("ALLOWED_HOSTS", ["localhost", "127.0.0.1", "[::1]"])
CSRF_TRUSTED_ORIGINS = env_list("CSRF_TRUSTED_ORIGINS", [])

# HTTPS, when TLS ends in front of the web replicas (an Ingress, a load balancer). Every value is
# off by default so that `make run` works over plain HTTP; deploy/ turns them on, and
# `manage.py check --deploy` then reports nothing (tests/deploy/test_settings_env.py).
# "<Header-Name>=<value>" the proxy sets on HTTPS requests, e.g. X-Forwarded-Proto=https. Only
# where the proxy overwrites that header on every request: a client could set it otherwise.
SECURE_PROXY_SSL = env_str("SECURE_PROXY_SSL_HEADER", "")
SECURE_PROXY_SSL_HEADER: tuple[str, str] | None = None
if SECURE_PROXY_SSL:
    _header, _sep, _value = SECURE_PROXY_SSL.partition("=")
    if not _sep or not _header.strip() or not _value.strip():
        raise ImproperlyConfigured(
            "SECURE_PROXY_SSL_HEADER must be <Header-Name>=<value>, e.g. X-Forwarded-Proto=https, got %r"
            % SECURE_PROXY_SSL
        )
    SECURE_PROXY_SSL_HEADER = ("HTTP_" + _header.strip().upper().replace("-", "_"), _value.strip())
SECURE_SSL_REDIRECT = env_bool("SECURE_SSL_REDIRECT", False)
# Paths (regular expressions, no leading slash) served over plain HTTP even with the redirect on:
# the kubelet's probes and the agents' Terraform state backend come from inside the cluster.
SECURE_REDIRECT_EXEMPT = env_list(
    "SECURE_REDIRECT_EXEMPT", [r"^healthz$", r"^readyz$", r"^metrics$", r"^api/v1/workspaces/\d+/terraform-state/$"]
)
# A web replica's /metrics (iacplatform/webmetrics.py) answers only `Authorization: Bearer <this>`;
# empty: /metrics is off (404).
METRICS_TOKEN = env_str("METRICS_TOKEN", "")
SESSION_COOKIE_SECURE = env_bool("SESSION_COOKIE_SECURE", False)
CSRF_COOKIE_SECURE = env_bool("CSRF_COOKIE_SECURE", False)
SECURE_HSTS_SECONDS = env_int("SECURE_HSTS_SECONDS", 0)
SECURE_HSTS_INCLUDE_SUBDOMAINS = env_bool("SECURE_HSTS_INCLUDE_SUBDOMAINS", False)
SECURE_HSTS_PRELOAD = env_bool("SECURE_HSTS_PRELOAD", False)

# Identity of this process: names its database sessions, its lease holder identity, its
# connected_pod value. In Kubernetes both come from the downward API.
POD_NAME = env_str("POD_NAME", socket.gethostname())[:100]
POD_NAMESPACE = env_str("POD_NAMESPACE", "default")
PROCESS_ROLE = env_str("PROCESS_ROLE", _default_role())

# Agents talk to the web replicas only, over their pool token: they get neither the database nor
# the platform's signing key (Terraform runs as the agent's user and can read its environment).
AGENT_PROCESS = PROCESS_ROLE == "agent"
SECRET_KEY = env_str("SECRET_KEY", "")
if not SECRET_KEY:
    if not DEBUG and not AGENT_PROCESS:
        raise ImproperlyConfigured("SECRET_KEY must be set when DEBUG is off")
    # An agent signs nothing that outlives it; DEBUG is for development only.
    SECRET_KEY = secrets.token_urlsafe(50) if AGENT_PROCESS else "insecure-development-key-only-for-debug"

# Sensitive variable values are encrypted with the first of these Fernet keys and decrypted with
# any (rotation: prepend a new key, run `manage.py rotatevariablekeys`, then drop the old one).
# Empty: a key derived from SECRET_KEY (apps/workspaces/encryption.py); production sets its own.
VARIABLE_ENCRYPTION_KEYS = env_list("VARIABLE_ENCRYPTION_KEYS", [])
for _key in VARIABLE_ENCRYPTION_KEYS:
    try:
        if len(base64.urlsafe_b64decode(_key.encode("ascii"))) != 32:
            raise ValueError
    except ValueError:
        raise ImproperlyConfigured(
            "VARIABLE_ENCRYPTION_KEYS must be comma-separated Fernet keys (32 url-safe base64-encoded bytes; "
            "make one with: python -c 'from cryptography.fernet import Fernet; print(Fernet.generate_key().decode())')"
        ) from None

INSTALLED_APPS = [
    "daphne",
    "django.contrib.admin",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "django.contrib.staticfiles",
    "django.contrib.postgres",
    "channels",
    "rest_framework",
    "axes",
    # API tokens: hashed (SHA-512), with expiry, revocable (apps/access/tokens.py).
    "knox",
    "drf_spectacular",
    "drf_spectacular_sidecar",
    "apps.access",
    "apps.coordination",
    "apps.agents",
    "apps.workspaces",
    "apps.hub",
    "apps.pglayer",
    "apps.search",
    "apps.sockets",
]

MIDDLEWARE = [
    # First: the CPU time of everything below is charged to the client (iacplatform/edge.CpuShares).
    "iacplatform.edge.ChargeCpu",
    "iacplatform.webmetrics.RequestMetricsMiddleware",
    "django.middleware.security.SecurityMiddleware",
    "iacplatform.api.middleware.RefuseBadQueryMiddleware",
    "whitenoise.middleware.WhiteNoiseMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
    # Last, as django-axes asks: turns its lockout into the 429 answer.
    "axes.middleware.AxesMiddleware",
]

ROOT_URLCONF = "iacplatform.urls"
ASGI_APPLICATION = "iacplatform.asgi.application"
WSGI_APPLICATION = None

TEMPLATES = [
    {
        "BACKEND": "django.template.backends.django.DjangoTemplates",
        "DIRS": [BASE_DIR / "iacplatform" / "templates"],
        "APP_DIRS": True,
        "OPTIONS": {
            "context_processors": [
                "django.template.context_processors.request",
                "django.contrib.auth.context_processors.auth",
                "django.contrib.messages.context_processors.messages",
            ],
        },
    },
]

# Database: DATABASE_URL is required but for agents (make run / make test start an embedded server and set it).
# Any URL libpq accepts (iacplatform/dburl.py), e.g. several hosts with target_session_attrs=read-write.
DATABASE_URL = env_str("DATABASE_URL", "")
if not DATABASE_URL and not AGENT_PROCESS:
    raise ImproperlyConfigured(
        "DATABASE_URL is not set. `make run` and `make test` start an embedded PostgreSQL and set it; "
        "elsewhere set it to postgresql://user:password@host:port/dbname"
    )
# The session path (iacplatform/sessiondb.py): LISTEN, session advisory locks, the election's
# beacon. Empty = DATABASE_URL. Set it when DATABASE_URL goes through a transaction pooler.
DATABASE_SESSION_URL = env_str("DATABASE_SESSION_URL", "")
DB_CONN_MAX_AGE = env_int("DB_CONN_MAX_AGE", 60)
DB_CONNECT_TIMEOUT = env_int("DB_CONNECT_TIMEOUT", 5)
DATABASE_TEST_NAME = env_str("DATABASE_TEST_NAME", "")
# "<pod>:<role>" names every session in pg_stat_activity, and so the holder of every advisory lock.
DB_APPLICATION_NAME = ("%s:%s" % (POD_NAME, PROCESS_ROLE))[:63]
DATABASES: dict[str, dict[str, Any]]
DATABASE_SESSION_PARAMS: dict[str, Any] = {}
DATABASE_CONFIGURED_NAME = ""
if AGENT_PROCESS:
    # No database, even when DATABASE_URL is set (as `make run` does for every process): any query
    # an agent made would fail at once (Django's dummy backend) instead of reaching PostgreSQL.
    DATABASES = {}
else:
    try:
        _db = django_database(DATABASE_URL, conn_max_age=DB_CONN_MAX_AGE)
        if DATABASE_SESSION_URL:
            DATABASE_SESSION_PARAMS = libpq_params(DATABASE_SESSION_URL, setting="DATABASE_SESSION_URL")
    except DatabaseURLError as exc:
        raise ImproperlyConfigured(str(exc)) from None
    _db["OPTIONS"] = {**_db["OPTIONS"], "application_name": DB_APPLICATION_NAME}
    _db["OPTIONS"].setdefault("connect_timeout", DB_CONNECT_TIMEOUT)
    # .iterator() outside a transaction would use a WITH HOLD cursor, which a transaction pooler
    # (DATABASE_URL through PgBouncer) loses between statements.
    _db["DISABLE_SERVER_SIDE_CURSORS"] = True
    DATABASE_CONFIGURED_NAME = _db["NAME"]
    _db["TEST"] = {"NAME": DATABASE_TEST_NAME or "test_%s" % _db["NAME"]}
    DATABASES = {"default": _db}
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"

AUTH_PASSWORD_VALIDATORS = [
    {"NAME": "django.contrib.auth.password_validation.UserAttributeSimilarityValidator"},
    {"NAME": "django.contrib.auth.password_validation.MinimumLengthValidator"},
]

LANGUAGE_CODE = "en-us"
# Times to the second in the admin (iacplatform/formats/en/formats.py).
FORMAT_MODULE_PATH = ["iacplatform.formats"]
TIME_ZONE = "UTC"
USE_I18N = True
USE_TZ = True

STATIC_URL = "static/"
# WhiteNoise serves the apps' static files (the admin's) straight from the installed packages:
# no collectstatic step (and no STATIC_ROOT) in the image, and the same in `make run` as in production.
WHITENOISE_USE_FINDERS = True

# Channel layer: carries group messages between web replicas. The default is the project's own
# PostgreSQL layer (apps/pglayer); memory is for a single process, redis for comparison.
CHANNEL_LAYER_BACKEND = env_str("CHANNEL_LAYER_BACKEND", "postgres")
CHANNEL_LAYER_DATABASE = env_str("CHANNEL_LAYER_DATABASE", "default")
CHANNEL_LAYER_EXPIRY = env_number("CHANNEL_LAYER_EXPIRY", 60.0)
CHANNEL_LAYER_GROUP_EXPIRY = env_number("CHANNEL_LAYER_GROUP_EXPIRY", 86400.0)
CHANNEL_LAYER_CAPACITY = env_int("CHANNEL_LAYER_CAPACITY", 100)
CHANNEL_LAYER_PREFIX = env_str("CHANNEL_LAYER_PREFIX", "asgi")
CHANNEL_LAYER_ENCRYPTION_KEYS = env_list("CHANNEL_LAYER_ENCRYPTION_KEYS", [])
CHANNEL_LAYER_EVENT_LOOP = env_str("CHANNEL_LAYER_EVENT_LOOP", "server")
if CHANNEL_LAYER_EVENT_LOOP not in ("server", "own"):
    raise ImproperlyConfigured("CHANNEL_LAYER_EVENT_LOOP must be server or own, got %r" % CHANNEL_LAYER_EVENT_LOOP)
# /readyz fails when a NOTIFY to this replica's own layer channel does not come back within this.
READYZ_NOTIFY_TIMEOUT = env_number("READYZ_NOTIFY_TIMEOUT", 2.0)
REDIS_URL = env_str("REDIS_URL", "redis://127.0.0.1:6379/0")
CHANNEL_LAYERS: dict[str, dict[str, object]]
if CHANNEL_LAYER_BACKEND == "postgres":
    CHANNEL_LAYERS = {
        "default": {
            "BACKEND": "apps.pglayer.core.PostgresChannelLayer",
            "CONFIG": {
                "database": CHANNEL_LAYER_DATABASE,
                "expiry": CHANNEL_LAYER_EXPIRY,
                "group_expiry": CHANNEL_LAYER_GROUP_EXPIRY,
                "capacity": CHANNEL_LAYER_CAPACITY,
                "prefix": CHANNEL_LAYER_PREFIX,
                "symmetric_encryption_keys": CHANNEL_LAYER_ENCRYPTION_KEYS,
                "event_loop": CHANNEL_LAYER_EVENT_LOOP,
            },
        }
    }
elif CHANNEL_LAYER_BACKEND == "memory":
    CHANNEL_LAYERS = {
        "default": {
            "BACKEND": "channels.layers.InMemoryChannelLayer",
            "CONFIG": {
                "expiry": CHANNEL_LAYER_EXPIRY,
                "group_expiry": CHANNEL_LAYER_GROUP_EXPIRY,
                "capacity": CHANNEL_LAYER_CAPACITY,
            },
        }
    }
elif CHANNEL_LAYER_BACKEND == "redis":
    CHANNEL_LAYERS = {
        "default": {
            "BACKEND": "channels_redis.core.RedisChannelLayer",
            "CONFIG": {
                "hosts": [REDIS_URL],
                # Redis EXPIRE takes whole seconds: a float is refused ("value is not an integer").
                "expiry": int(CHANNEL_LAYER_EXPIRY),
                "group_expiry": int(CHANNEL_LAYER_GROUP_EXPIRY),
                "capacity": CHANNEL_LAYER_CAPACITY,
                "prefix": CHANNEL_LAYER_PREFIX,
                "symmetric_encryption_keys": CHANNEL_LAYER_ENCRYPTION_KEYS or None,
            },
        }
    }
elif CHANNEL_LAYER_BACKEND == "redis_pubsub":
    # Benchmark reference only (channels-redis is a dev requirement).
    CHANNEL_LAYERS = {
        "default": {"BACKEND": "channels_redis.pubsub.RedisPubSubChannelLayer", "CONFIG": {"hosts": [REDIS_URL]}}
    }
else:
    raise ImproperlyConfigured(
        "CHANNEL_LAYER_BACKEND must be postgres, memory, redis or redis_pubsub, got %r" % CHANNEL_LAYER_BACKEND
    )

# Leader election (apps/coordination). Defaults are client-go's.
LEADER_ELECTION_BACKEND = env_str("LEADER_ELECTION_BACKEND", "auto")
LEADER_ELECTION_LEASE_NAME = env_str("LEADER_ELECTION_LEASE_NAME", "iacplatform-leader")
LEADER_ELECTION_NAMESPACE = env_str("LEADER_ELECTION_NAMESPACE", POD_NAMESPACE)
LEADER_ELECTION_LEASE_DURATION = env_number("LEADER_ELECTION_LEASE_DURATION", 15.0)
LEADER_ELECTION_RENEW_DEADLINE = env_number("LEADER_ELECTION_RENEW_DEADLINE", 10.0)
LEADER_ELECTION_RETRY_PERIOD = env_number("LEADER_ELECTION_RETRY_PERIOD", 2.0)
# Seconds jobs get to stop after a term ends; past it runleader exits non-zero.
LEADER_JOB_STOP_GRACE = env_number("LEADER_JOB_STOP_GRACE", 10.0)
# statement_timeout (SET LOCAL) of every job and fence transaction, seconds: a statement stuck on a
# lock or a commit waiting for a missing synchronous standby is cancelled instead of hanging.
JOB_STATEMENT_TIMEOUT = env_number("JOB_STATEMENT_TIMEOUT", 10.0)
if JOB_STATEMENT_TIMEOUT <= 0:
    raise ImproperlyConfigured(
        "JOB_STATEMENT_TIMEOUT must be a positive number of seconds, got %s" % JOB_STATEMENT_TIMEOUT
    )
# runleader's /healthz and /metrics; empty disables the server.
LEADER_HTTP_ADDR = env_str("LEADER_HTTP_ADDR", "0.0.0.0:9090")
# Extra modules registering jobs, imported by runleader besides apps/*/jobs.py (tests use it).
LEADER_EXTRA_JOB_MODULES = env_list("LEADER_EXTRA_JOB_MODULES", [])
# JobRun keeps every tick this many days, then daily aggregates (apps/coordination/retention.py).
JOBRUN_RETENTION_DAYS = env_number("JOBRUN_RETENTION_DAYS", 7.0)
JOB_JOBRUN_RETENTION_EVERY = env_number("JOB_JOBRUN_RETENTION_EVERY", 300.0)
KUBECONFIG = env_str("KUBECONFIG", "")
KUBERNETES_SERVICE_HOST = env_str("KUBERNETES_SERVICE_HOST", "")

# UI hub (apps/hub): editing sessions, takeover requests, drafts; expired by lock_draft_cleanup.
HUB_SESSION_TIMEOUT = env_number("HUB_SESSION_TIMEOUT", 120.0)
HUB_TAKEOVER_REQUEST_TIMEOUT = env_number("HUB_TAKEOVER_REQUEST_TIMEOUT", 60.0)
HUB_DRAFT_TTL = env_number("HUB_DRAFT_TTL", 7 * 24 * 3600.0)
HUB_DRAFT_MAX_BYTES = env_int("HUB_DRAFT_MAX_BYTES", 1024 * 1024)

# API tokens (apps/access/tokens.py, django-rest-knox): the longest life of a new token, seconds.
API_TOKEN_TTL = env_int("API_TOKEN_TTL", 30 * 24 * 3600)
if API_TOKEN_TTL < 60:
    raise ImproperlyConfigured("API_TOKEN_TTL must be at least 60 seconds, got %d" % API_TOKEN_TTL)

# Agents and the task queue (apps/agents, apps/workspaces). Durations in seconds.
AGENT_HEARTBEAT_INTERVAL = env_number("AGENT_HEARTBEAT_INTERVAL", 10.0)
AGENT_OFFLINE_THRESHOLD = env_number("AGENT_OFFLINE_THRESHOLD", 45.0)
AGENT_PRUNE_AFTER = env_number("AGENT_PRUNE_AFTER", 7 * 24 * 3600.0)
AGENT_HELLO_TIMEOUT = env_number("AGENT_HELLO_TIMEOUT", 10.0)
# daphne closes anything above its --websocket-max-message-size (default 1 MiB) with 1009 first.
AGENT_MAX_FRAME_BYTES = env_int("AGENT_MAX_FRAME_BYTES", 1024 * 1024)
TASK_DISPATCH_ACCEPT_TIMEOUT = env_number("TASK_DISPATCH_ACCEPT_TIMEOUT", 30.0)
# Terraform's http state backend (apps/workspaces/statebackend.py). The URL agents reach a web
# replica at for it (e.g. the web Service); empty: the origin of the agent's own C&C URL.
TERRAFORM_STATE_BACKEND_URL = env_str("TERRAFORM_STATE_BACKEND_URL", "")
TERRAFORM_STATE_MAX_BYTES = env_int("TERRAFORM_STATE_MAX_BYTES", 16 * 1024 * 1024)
# A dispatch's state credential expires this long after the task's own timeout would.
TERRAFORM_STATE_CREDENTIAL_SLACK = env_number("TERRAFORM_STATE_CREDENTIAL_SLACK", 600.0)
# Released Terraform state locks are history: kept this long, then deleted by state_lock_retention.
STATE_LOCK_RETENTION_DAYS = env_number("STATE_LOCK_RETENTION_DAYS", 30.0)
JOB_STATE_LOCK_RETENTION_EVERY = env_number("JOB_STATE_LOCK_RETENTION_EVERY", 3600.0)
# Task logs, state versions and state transitions (apps/workspaces/retention.py). A finished
# task's log chunks are deleted this many days after it finished (the task keeps a marker).
TASK_LOG_RETENTION_DAYS = env_number("TASK_LOG_RETENTION_DAYS", 30.0)
JOB_TASK_LOG_RETENTION_EVERY = env_number("JOB_TASK_LOG_RETENTION_EVERY", 300.0)
# A state version is deleted only when it is older than STATE_VERSION_RETENTION_DAYS and not
# among its workspace's newest STATE_VERSIONS_KEEP, and never the current state or a conflict.
STATE_VERSIONS_KEEP = env_int("STATE_VERSIONS_KEEP", 100)
STATE_VERSION_RETENTION_DAYS = env_number("STATE_VERSION_RETENTION_DAYS", 30.0)
JOB_STATE_VERSION_RETENTION_EVERY = env_number("JOB_STATE_VERSION_RETENTION_EVERY", 300.0)
# Audit rows of the current-state pointer's moves.
STATE_TRANSITION_RETENTION_DAYS = env_number("STATE_TRANSITION_RETENTION_DAYS", 365.0)
JOB_STATE_TRANSITION_RETENTION_EVERY = env_number("JOB_STATE_TRANSITION_RETENTION_EVERY", 3600.0)
# How often the leader runs each queue/agent job.
JOB_PENDING_TASKS_EVERY = env_number("JOB_PENDING_TASKS_EVERY", 10.0)
JOB_TASK_TIMEOUT_EVERY = env_number("JOB_TASK_TIMEOUT_EVERY", 30.0)
JOB_AGENT_CLEANUP_EVERY = env_number("JOB_AGENT_CLEANUP_EVERY", 60.0)
JOB_DRIFT_CHECK_EVERY = env_number("JOB_DRIFT_CHECK_EVERY", 60.0)
JOB_AGENT_AUTOSCALER_EVERY = env_number("JOB_AGENT_AUTOSCALER_EVERY", 5.0)
JOB_CMDB_SYNC_EVERY = env_number("JOB_CMDB_SYNC_EVERY", 60.0)
# CMDB search (apps/search): texts for every resource; embeddings when the optional model is installed.
JOB_SEARCH_INDEX_EVERY = env_number("JOB_SEARCH_INDEX_EVERY", 60.0)
SEARCH_INDEX_WORKSPACES_PER_TICK = env_int("SEARCH_INDEX_WORKSPACES_PER_TICK", 200)
EMBEDDINGS = env_str("EMBEDDINGS", "auto")
if EMBEDDINGS not in ("auto", "off"):
    raise ImproperlyConfigured("EMBEDDINGS must be auto or off, got %r" % EMBEDDINGS)
JOB_EMBEDDING_EVERY = env_number("JOB_EMBEDDING_EVERY", 10.0)
EMBEDDING_BATCH_SIZE = env_int("EMBEDDING_BATCH_SIZE", 64)
EMBEDDING_MAX_BATCHES_PER_TICK = env_int("EMBEDDING_MAX_BATCHES_PER_TICK", 20)
EMBEDDING_TICK_SECONDS = env_number("EMBEDDING_TICK_SECONDS", 5.0)
EMBEDDING_BLAS_THREADS = env_int("EMBEDDING_BLAS_THREADS", 1)
# The agent process (runagent).
TERRAFORM_BIN = env_str("TERRAFORM_BIN", "terraform")
AGENT_TOKEN = env_str("AGENT_TOKEN", "")
# Where runagent keeps the credential it gets when it registers (empty: in memory only).
AGENT_CREDENTIAL_FILE = env_str("AGENT_CREDENTIAL_FILE", "")
AGENT_URLS = env_list("AGENT_URLS", [])
AGENT_WORK_DIR = env_str("AGENT_WORK_DIR", "")
AGENT_SHUTDOWN_GRACE = env_number("AGENT_SHUTDOWN_GRACE", 60.0)
AGENT_RECONNECT_MAX_DELAY = env_number("AGENT_RECONNECT_MAX_DELAY", 10.0)
# Names of the agent's own environment variables Terraform also gets, besides the allowlist of
# apps/agents/isolation.py (e.g. TF_PLUGIN_CACHE_DIR); never put a credential here.
AGENT_TERRAFORM_ENV_PASSTHROUGH = env_list("AGENT_TERRAFORM_ENV_PASSTHROUGH", [])

# Hostile input (iacplatform/inputs.py, iacplatform/api/, iacplatform/bodylimit.py).
HTTP_MAX_BODY_BYTES = env_int("HTTP_MAX_BODY_BYTES", 8 * 1024 * 1024)
DATA_UPLOAD_MAX_MEMORY_SIZE = HTTP_MAX_BODY_BYTES
API_JSON_MAX_DEPTH = env_int("API_JSON_MAX_DEPTH", 64)
API_PAGE_SIZE = env_int("API_PAGE_SIZE", 100)
API_MAX_PAGE_SIZE = env_int("API_MAX_PAGE_SIZE", 500)

# Per-connection frame rate (token bucket: burst, then rate per second; excess: error, close 4429)
# and concurrent sockets per key across replicas (iacplatform/sockets.py).
AGENT_FRAME_RATE = env_number("AGENT_FRAME_RATE", 200.0)
AGENT_FRAME_BURST = env_number("AGENT_FRAME_BURST", 5000.0)
HUB_FRAME_RATE = env_number("HUB_FRAME_RATE", 5.0)
HUB_FRAME_BURST = env_number("HUB_FRAME_BURST", 20.0)
HUB_MAX_FRAME_BYTES = env_int("HUB_MAX_FRAME_BYTES", 64 * 1024)
WS_MAX_CONNECTIONS_PER_USER = env_int("WS_MAX_CONNECTIONS_PER_USER", 50)
WS_MAX_CONNECTIONS_PER_POOL = env_int("WS_MAX_CONNECTIONS_PER_POOL", 200)
WS_MAX_CONNECTIONS_PER_SOURCE = env_int("WS_MAX_CONNECTIONS_PER_SOURCE", 1000)
WS_CONNECT_RATE_PER_SOURCE = env_number("WS_CONNECT_RATE_PER_SOURCE", 50.0)
WS_CONNECT_BURST_PER_SOURCE = env_number("WS_CONNECT_BURST_PER_SOURCE", 500.0)
# The caps count across replicas (apps/sockets/slots.py): each replica renews its row every
# REFRESH seconds; the sockets of a replica not renewed for STALE seconds (a crash) stop counting.
SOCKET_CAP_REFRESH_SECONDS = env_number("SOCKET_CAP_REFRESH_SECONDS", 10.0)
SOCKET_CAP_STALE_SECONDS = env_number("SOCKET_CAP_STALE_SECONDS", 30.0)
# Flow control inside daphne (iacplatform/wsflow.py): a socket's queue of frames for its consumer
# holds at most WS_QUEUE_FRAMES frames or WS_QUEUE_BYTES bytes (plus one message; then daphne
# stops reading the socket until the consumer took it down to half); a client kept over its frame rate
# for WS_THROTTLE_GRACE_SECONDS is cut off with 4429 (until then its frames wait for their tokens).
WS_QUEUE_FRAMES = env_int("WS_QUEUE_FRAMES", 64)
WS_QUEUE_BYTES = env_int("WS_QUEUE_BYTES", 1024 * 1024)
WS_THROTTLE_GRACE_SECONDS = env_number("WS_THROTTLE_GRACE_SECONDS", 10.0)
if WS_QUEUE_FRAMES < 2:
    raise ImproperlyConfigured("WS_QUEUE_FRAMES must be at least 2, got %d" % WS_QUEUE_FRAMES)
if WS_QUEUE_BYTES < 1:
    raise ImproperlyConfigured("WS_QUEUE_BYTES must be positive, got %d" % WS_QUEUE_BYTES)
if WS_THROTTLE_GRACE_SECONDS < 0:
    raise ImproperlyConfigured("WS_THROTTLE_GRACE_SECONDS must not be negative, got %g" % WS_THROTTLE_GRACE_SECONDS)

# X-Forwarded-For is believed only from these proxies (CIDRs; iacplatform/edge.py): empty trusts nobody.
TRUSTED_PROXIES = env_list("TRUSTED_PROXIES", [])
for _cidr in TRUSTED_PROXIES:
    try:
        ipaddress.ip_network(_cidr, strict=False)
    except ValueError:
        raise ImproperlyConfigured("TRUSTED_PROXIES: %r is not an address or a network" % _cidr) from None

# Login attempts (django-axes, counted in the database, so across replicas): after
# LOGIN_FAILURE_LIMIT failures for one username from one address, that pair is locked out for
# LOGIN_LOCKOUT_MINUTES (429); a success resets the count.
AUTHENTICATION_BACKENDS = [
    "axes.backends.AxesStandaloneBackend",
    "django.contrib.auth.backends.ModelBackend",
]
LOGIN_FAILURE_LIMIT = env_int("LOGIN_FAILURE_LIMIT", 5)
LOGIN_LOCKOUT_MINUTES = env_number("LOGIN_LOCKOUT_MINUTES", 15.0)
AXES_FAILURE_LIMIT = LOGIN_FAILURE_LIMIT
AXES_COOLOFF_TIME = timedelta(minutes=LOGIN_LOCKOUT_MINUTES)
AXES_LOCKOUT_PARAMETERS = [["username", "ip_address"]]
AXES_RESET_ON_SUCCESS = True
AXES_HTTP_RESPONSE_CODE = 429

# REST throttling (iacplatform/api/throttling.py): DRF rates like "600/min"; empty disables.
API_THROTTLE_USER_RATE = env_str("API_THROTTLE_USER_RATE", "1200/min") or None
API_THROTTLE_ANON_RATE = env_str("API_THROTTLE_ANON_RATE", "120/min") or None
# A client already refused is refused again before Django (iacplatform/edge.ThrottleShortcut),
# answered after this many seconds (at most its wait): one that ignores Retry-After costs a timer.
API_THROTTLE_TARPIT_SECONDS = env_number("API_THROTTLE_TARPIT_SECONDS", 1.0)
# Requests under /api/ of one client (credentials + address) running at once on a replica; the
# rest wait before Django (iacplatform/edge.InFlight); 0 disables.
API_MAX_IN_FLIGHT_PER_CLIENT = env_int("API_MAX_IN_FLIGHT_PER_CLIENT", 2)
# A client's CPU time in Django per replica (iacplatform/edge.CpuShares): at most SHARE CPU-seconds
# per second on average, BURST at once; past it its requests wait before Django; 0 disables.
API_CLIENT_CPU_SHARE = env_number("API_CLIENT_CPU_SHARE", 0.5)
API_CLIENT_CPU_BURST_SECONDS = env_number("API_CLIENT_CPU_BURST_SECONDS", 2.0)
# A client with more than one request outstanding on a replica that recently used more than this
# much of a core there (CPU-seconds per second, averaged over ~2 s) is served behind the others
# (iacplatform/edge.Lanes): one of its requests at a time, while no other request runs, or once it
# waited MAX_WAIT seconds in all; 0 disables.
API_CLIENT_BACKGROUND_USAGE = env_number("API_CLIENT_BACKGROUND_USAGE", 0.1)
API_BACKGROUND_MAX_WAIT_SECONDS = env_number("API_BACKGROUND_MAX_WAIT_SECONDS", 1.0)
# The web process's GIL switch interval (iacplatform/asgi.py; Python's default is 5 ms).
WEB_GIL_SWITCH_INTERVAL_MS = env_number("WEB_GIL_SWITCH_INTERVAL_MS", 1.0)
if WEB_GIL_SWITCH_INTERVAL_MS <= 0:
    raise ImproperlyConfigured("WEB_GIL_SWITCH_INTERVAL_MS must be positive, got %g" % WEB_GIL_SWITCH_INTERVAL_MS)
if API_CLIENT_CPU_SHARE < 0 or API_CLIENT_CPU_BURST_SECONDS <= 0:
    raise ImproperlyConfigured(
        "API_CLIENT_CPU_SHARE must not be negative and API_CLIENT_CPU_BURST_SECONDS must be positive, got %g and %g"
        % (API_CLIENT_CPU_SHARE, API_CLIENT_CPU_BURST_SECONDS)
    )
if API_CLIENT_BACKGROUND_USAGE < 0 or API_BACKGROUND_MAX_WAIT_SECONDS < 0:
    raise ImproperlyConfigured(
        "API_CLIENT_BACKGROUND_USAGE and API_BACKGROUND_MAX_WAIT_SECONDS must not be negative, got %g and %g"
        % (API_CLIENT_BACKGROUND_USAGE, API_BACKGROUND_MAX_WAIT_SECONDS)
    )
if API_THROTTLE_TARPIT_SECONDS < 0:
    raise ImproperlyConfigured("API_THROTTLE_TARPIT_SECONDS must not be negative, got %g" % API_THROTTLE_TARPIT_SECONDS)
CACHES = {
    "default": {"BACKEND": "django.core.cache.backends.locmem.LocMemCache"},
    "throttle": {
        "BACKEND": "django.core.cache.backends.db.DatabaseCache",
        "LOCATION": "iacplatform_throttle_cache",
        "OPTIONS": {"MAX_ENTRIES": 100_000},
    },
}

REST_FRAMEWORK = {
    "DEFAULT_AUTHENTICATION_CLASSES": [
        "rest_framework.authentication.SessionAuthentication",
        "knox.auth.TokenAuthentication",
    ],
    # apps/access: every view declares who may call it; a view without a rule refuses everybody.
    "DEFAULT_PERMISSION_CLASSES": ["apps.access.drf.WorkspaceRolePermission"],
    "DEFAULT_SCHEMA_CLASS": "apps.access.schema.AccessAutoSchema",
    "DEFAULT_PAGINATION_CLASS": "iacplatform.api.pagination.Pagination",
    "PAGE_SIZE": API_PAGE_SIZE,
    "DEFAULT_PARSER_CLASSES": [
        "iacplatform.api.parsers.JSONParser",
        "iacplatform.api.parsers.FormParser",
        "iacplatform.api.parsers.MultiPartParser",
    ],
    "EXCEPTION_HANDLER": "iacplatform.api.errors.api_exception_handler",
    "DEFAULT_THROTTLE_CLASSES": [
        "iacplatform.api.throttling.UserRateThrottle",
        "iacplatform.api.throttling.AnonRateThrottle",
    ],
    "DEFAULT_THROTTLE_RATES": {"user": API_THROTTLE_USER_RATE, "anon": API_THROTTLE_ANON_RATE},
    # The client address is REMOTE_ADDR as the edge set it, never a client-chosen header.
    "NUM_PROXIES": 0,
}
REST_KNOX = {
    "TOKEN_TTL": timedelta(seconds=API_TOKEN_TTL),
    "AUTH_HEADER_PREFIX": "Token",
    # Recognisable in a leaked log or a secret scanner: "iacu_" + 64 hex digits.
    "TOKEN_PREFIX": "iacu_",
    "AUTO_REFRESH": False,
}
SPECTACULAR_SETTINGS = {
    "TITLE": "IaC Platform API",
    "DESCRIPTION": "Workspaces, Terraform runs, agents and editing sessions.",
    "VERSION": "1.0.0",
    "SERVE_INCLUDE_SCHEMA": False,
    # role and previous_role share one enum (`manage.py check --deploy` warns otherwise).
    "ENUM_NAME_OVERRIDES": {
        "RoleEnum": "apps.access.serializers.ROLE_NAMES",
        "StateVersionStatusEnum": "apps.workspaces.models.StateVersion.Status",
    },
    # The API's contract is JSON: form and multipart bodies are still parsed (the browsable API,
    # tests), but not documented, so clients and fuzzers use JSON.
    "PARSER_WHITELIST": ["iacplatform.api.parsers.JSONParser"],
    "POSTPROCESSING_HOOKS": [
        "drf_spectacular.hooks.postprocess_schema_enums",
        "iacplatform.api.schema.postprocess",
    ],
    # Swagger UI and ReDoc from the installed drf-spectacular-sidecar (static files), never a CDN:
    # the docs work offline and run no unpinned third-party JavaScript.
    "SWAGGER_UI_DIST": "SIDECAR",
    "SWAGGER_UI_FAVICON_HREF": "SIDECAR",
    "REDOC_DIST": "SIDECAR",
}

LOG_LEVEL = env_str("LOG_LEVEL", "INFO").upper()
LOG_FORMAT = env_str("LOG_FORMAT", "text")
if LOG_FORMAT not in ("text", "json"):
    raise ImproperlyConfigured("LOG_FORMAT must be text or json, got %r" % LOG_FORMAT)
LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "formatters": {
        "text": {"format": "%(asctime)s %(levelname)s [%(name)s] %(message)s"},
        "json": {"()": "iacplatform.logformat.JsonFormatter", "pod": POD_NAME, "role": PROCESS_ROLE},
    },
    "handlers": {"console": {"class": "logging.StreamHandler", "formatter": LOG_FORMAT}},
    "root": {"handlers": ["console"], "level": LOG_LEVEL},
    "loggers": {
        "django.db.backends": {"level": "INFO"},
        # At DEBUG websockets logs every handshake header and frame: the agent's Authorization
        # header (pool token or credential), its welcome (a new credential) and task.dispatch
        # (sensitive variables). Never below INFO, whatever LOG_LEVEL says.
        "websockets": {"level": "INFO"},
    },
}
