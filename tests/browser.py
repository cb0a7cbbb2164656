"""Headless Chromium (Debian's ``chromium`` package) driven over the DevTools protocol, for tests
that must see a page as a browser does: scripts run, console errors and failed loads recorded.

The browser can reach 127.0.0.1 and nothing else: every other host name resolves to nothing
(``--host-resolver-rules``) and every other request goes to a proxy that refuses connections
(``--proxy-server``), so a page that needs a CDN fails the way it fails offline.
"""

from __future__ import annotations

import contextlib
import itertools
import json
import os
import shutil
import signal
import subprocess
import tempfile
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from websockets.sync.client import ClientConnection, connect

FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
    "--no-default-browser-check",
    "--disable-extensions",
    "--remote-debugging-port=0",
    "--window-size=1400,900",
    # Only the replica answers: other names do not resolve, other requests hit a closed port.
    "--host-resolver-rules=MAP * ~NOTFOUND, EXCLUDE 127.0.0.1",
    "--proxy-server=http://127.0.0.1:9",
    "--proxy-bypass-list=127.0.0.1",
]


def chromium_path() -> str:
    found = shutil.which("chromium")
    if found is None:
        # `make test` installs it (Debian's chromium); never skip: the browser test must run.
        raise RuntimeError("chromium is not installed: run `make test`, or `apt-get install chromium`")
    return found


@dataclass
class PageProblem:
    kind: str
    text: str
    url: str = ""


@dataclass
class Page:
    ws: ClientConnection
    events: list[dict[str, Any]] = field(default_factory=list)
    _ids: Iterator[int] = field(default_factory=lambda: itertools.count(1))

    def call(self, method: str, timeout: float = 30.0, **params: Any) -> dict[str, Any]:
        call_id = next(self._ids)
        self.ws.send(json.dumps({"id": call_id, "method": method, "params": params}))
        deadline = time.monotonic() + timeout
        while True:
            message = json.loads(self.ws.recv(timeout=max(0.01, deadline - time.monotonic())))
            if message.get("id") == call_id:
                if "error" in message:
                    raise RuntimeError("%s failed: %s" % (method, message["error"]))
                return dict(message.get("result", {}))
            if "method" in message:
                self.events.append(message)

    def pump(self, seconds: float) -> None:
        """Read events for ``seconds``."""
        deadline = time.monotonic() + seconds
        while (left := deadline - time.monotonic()) > 0:
            try:
                message = json.loads(self.ws.recv(timeout=left))
            except TimeoutError:
                return
            if "method" in message:
                self.events.append(message)

    def evaluate(self, expression: str) -> Any:
        result = self.call("Runtime.evaluate", expression=expression, returnByValue=True, awaitPromise=True)
        if "exceptionDetails" in result:
            raise RuntimeError("%s threw: %s" % (expression, result["exceptionDetails"]))
        return result["result"].get("value")

    def goto(self, url: str, timeout: float = 30.0) -> int:
        """Load ``url``; the HTTP status of the document (after redirects)."""
        self.events.clear()
        frame = self.call("Page.navigate", url=url)
        if frame.get("errorText"):
            raise RuntimeError("navigating to %s: %s" % (url, frame["errorText"]))
        self.wait_event("Page.loadEventFired", timeout)
        statuses = [
            e["params"]["response"]["status"]
            for e in self.events
            if e["method"] == "Network.responseReceived" and e["params"].get("type") == "Document"
        ]
        return int(statuses[-1]) if statuses else 0

    def wait_event(self, method: str, timeout: float) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        seen = 0
        while True:
            for event in self.events[seen:]:
                if event["method"] == method:
                    return event
            seen = len(self.events)
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError("no %s within %.0f s" % (method, timeout))
            self.pump(min(left, 0.2))

    def wait_for(self, expression: str, timeout: float = 30.0) -> Any:
        """Evaluate ``expression`` until it is truthy; its value."""
        deadline = time.monotonic() + timeout
        while True:
            value = self.evaluate(expression)
            if value:
                return value
            if time.monotonic() > deadline:
                raise TimeoutError("%s stayed falsy for %.0f s; problems: %s" % (expression, timeout, self.problems()))
            self.pump(0.2)

    def problems(self) -> list[PageProblem]:
        """Console errors, uncaught exceptions and failed loads since the last ``goto``."""
        found = []
        requested = {
            e["params"]["requestId"]: e["params"]["request"]["url"]
            for e in self.events
            if e["method"] == "Network.requestWillBeSent"
        }
        for event in self.events:
            method, params = event["method"], event["params"]
            if method == "Runtime.exceptionThrown":
                details = params["exceptionDetails"]
                text = details.get("exception", {}).get("description") or details.get("text", "")
                found.append(PageProblem("exception", text, details.get("url", "")))
            elif method == "Runtime.consoleAPICalled" and params["type"] in ("error", "assert"):
                text = " ".join(str(a.get("value", a.get("description", ""))) for a in params["args"])
                found.append(PageProblem("console." + params["type"], text))
            elif method == "Log.entryAdded" and params["entry"]["level"] == "error":
                entry = params["entry"]
                found.append(PageProblem("log", entry.get("text", ""), entry.get("url", "")))
            elif method == "Network.loadingFailed" and not params.get("canceled"):
                url = requested.get(params.get("requestId", ""), "")
                found.append(PageProblem("load failed", params.get("errorText", ""), url))
            elif method == "Network.responseReceived" and params["response"]["status"] >= 400:
                response = params["response"]
                found.append(PageProblem("HTTP %d" % response["status"], "", response["url"]))
        return found


@contextlib.contextmanager
def chromium() -> Iterator[Page]:
    """A fresh headless Chromium (its own profile directory) with one page, problems recorded."""
    with tempfile.TemporaryDirectory(prefix="chromium-") as profile:
        proc = subprocess.Popen(
            [chromium_path(), *FLAGS, "--user-data-dir=%s" % profile, "about:blank"],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
        )
        try:
            port_file = Path(profile) / "DevToolsActivePort"
            deadline = time.monotonic() + 60
            while not (port_file.exists() and port_file.read_text().count("\n") >= 1):
                if proc.poll() is not None:
                    raise RuntimeError("chromium exited with %s before it listened" % proc.returncode)
                if time.monotonic() > deadline:
                    raise RuntimeError("chromium did not open its DevTools port within 60 s")
                time.sleep(0.1)
            port = int(port_file.read_text().split()[0])
            with urllib.request.urlopen("http://127.0.0.1:%d/json/list" % port, timeout=10) as response:  # noqa: S310
                targets = json.load(response)
            target = next(t for t in targets if t["type"] == "page")
            with connect(target["webSocketDebuggerUrl"], max_size=None, open_timeout=10) as ws:
                page = Page(ws)
                for domain in ("Page", "Runtime", "Log", "Network"):
                    page.call(domain + ".enable")
                yield page
        finally:
            # The whole group (renderer, GPU and utility processes too), before the profile
            # directory is removed: a child still writing there made the cleanup fail.
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGTERM)
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(10)
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(10)
            _wait_group_gone(proc.pid)


def _wait_group_gone(pgid: int, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            os.killpg(pgid, 0)
        except ProcessLookupError:
            return
        time.sleep(0.05)
