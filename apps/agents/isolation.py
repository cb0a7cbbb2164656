"""What a Terraform child may see of the agent that runs it.

Guarantees: :func:`terraform_environment` builds Terraform's environment from scratch: an
allowlist of the agent's variables (search path, home, temp dir, locale, proxies and their CA
files, plus the names the operator lists in ``AGENT_TERRAFORM_ENV_PASSTHROUGH``), then the
workspace's own variables, then the task's ``TF_*`` settings; nothing else of the agent process
(its pool token, its credential, ``DATABASE_URL``, ``SECRET_KEY``, ...) is ever copied.
:func:`make_non_dumpable` clears the agent's dumpable flag (Linux ``PR_SET_DUMPABLE`` 0), so a
process of the same user without ``CAP_SYS_PTRACE`` (a Terraform child, a ``local-exec``) can
neither read ``/proc/<agent pid>/environ`` or ``mem`` nor attach a debugger to it.
Does NOT: protect files the agent's user can read (its token or credential file, its home): a
same-user Terraform can open them; docs/operations.md says how to run Terraform as another user.
Nor does it hide anything from root or from a process holding ``CAP_SYS_PTRACE``.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import logging
import os
import re
import sys
from collections.abc import Iterable, Mapping

logger = logging.getLogger(__name__)

# Exact names passed through from the agent's environment.
BASE_NAMES = frozenset(
    {
        "PATH",
        "HOME",
        "TMPDIR",
        "LANG",
        "LANGUAGE",
        "TZ",
        "http_proxy",
        "https_proxy",
        "no_proxy",
        "all_proxy",
        "HTTP_PROXY",
        "HTTPS_PROXY",
        "NO_PROXY",
        "ALL_PROXY",
        # A proxy that terminates TLS needs its CA: certificate locations, not secrets.
        "SSL_CERT_FILE",
        "SSL_CERT_DIR",
    }
)
LOCALE_RE = re.compile(r"^LC_[A-Z_]+$")
# Set for every Terraform command, after the workspace's variables, so a workspace cannot turn
# prompts back on (a prompt would hang the task until its timeout).
TASK_SETTINGS = {"TF_IN_AUTOMATION": "1", "TF_INPUT": "0", "CHECKPOINT_DISABLE": "1"}

PR_SET_DUMPABLE = 4
PR_GET_DUMPABLE = 3


def passed_through(name: str, extra: Iterable[str] = ()) -> bool:
    return name in BASE_NAMES or bool(LOCALE_RE.match(name)) or name in set(extra)


def terraform_environment(
    *,
    agent_env: Mapping[str, str],
    passthrough: Iterable[str],
    terraform_vars: Mapping[str, str],
    env_vars: Mapping[str, str],
) -> dict[str, str]:
    """Terraform's whole environment (see the module docstring); ``terraform_vars`` become
    ``TF_VAR_<name>``, ``env_vars`` are set under their own names."""
    extra = set(passthrough)
    env = {name: value for name, value in agent_env.items() if passed_through(name, extra)}
    env.update(env_vars)
    env.update({"TF_VAR_%s" % name: value for name, value in terraform_vars.items()})
    env.update(TASK_SETTINGS)
    return env


def _libc() -> ctypes.CDLL:
    return ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)


def make_non_dumpable() -> bool:
    """Clear this process's dumpable flag; True when it is now clear (always False off Linux)."""
    if not sys.platform.startswith("linux"):
        logger.warning("not Linux: the agent stays dumpable, a same-user Terraform can read its memory")
        return False
    libc = _libc()
    if libc.prctl(PR_SET_DUMPABLE, 0, 0, 0, 0) != 0:
        logger.error("prctl(PR_SET_DUMPABLE, 0) failed: %s", os.strerror(ctypes.get_errno()))
        return False
    return is_dumpable() is False


def is_dumpable() -> bool | None:
    """This process's dumpable flag (None off Linux)."""
    if not sys.platform.startswith("linux"):
        return None
    return bool(_libc().prctl(PR_GET_DUMPABLE, 0, 0, 0, 0))
