"""Headless Chromium for tests, driven over the DevTools protocol on a pipe.

With `--remote-debugging-pipe` the browser reads commands from its file descriptor 3 and writes replies and
events to its descriptor 4, each message one JSON object ended by a NUL byte; no port, no websocket library.
`open_page` loads one file and returns what a reader would meet: console errors and uncaught exceptions,
requests that left the file, every image's decoded size, and a screenshot.
"""

from __future__ import annotations

import base64
import fcntl
import json
import os
import select
import shutil
import subprocess
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

EXECUTABLES = ("chromium", "chromium-browser", "google-chrome", "chrome")


def find_chromium() -> str | None:
    return next((path for name in EXECUTABLES if (path := shutil.which(name))), None)


@dataclass
class Page:
    title: str
    images: list[dict]  # {"alt", "complete", "width", "height"}: the decoded (natural) size of each <img>
    headings: list[str]
    text: str  # the page's visible text
    overflow: int  # pixels the page is wider than the window (0: no sideways scrolling)
    errors: list[str]  # console errors, uncaught exceptions, failed loads
    requests: list[str] = field(default_factory=list)  # URLs fetched other than the page itself and data: URLs
    screenshot: bytes = b""  # PNG of the first screen


class Chromium:
    def __init__(self, executable: str, timeout: float = 30.0):
        self.timeout = timeout
        self.profile = tempfile.mkdtemp(prefix="genlab-chromium-")
        to_browser, self._write = os.pipe()
        self._read, from_browser = os.pipe()

        def wire():  # in the child: our pipe ends become its descriptors 3 and 4
            a = fcntl.fcntl(to_browser, fcntl.F_DUPFD, 10)
            b = fcntl.fcntl(from_browser, fcntl.F_DUPFD, 10)
            os.dup2(a, 3)
            os.dup2(b, 4)

        self.proc = subprocess.Popen(
            [executable, "--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
             "--remote-debugging-pipe", f"--user-data-dir={self.profile}", "--no-first-run",
             "--no-default-browser-check", "--disable-extensions", "about:blank"],
            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
            preexec_fn=wire, close_fds=False)
        os.close(to_browser)
        os.close(from_browser)
        self._buffer = b""
        self._next_id = 0
        self.events: list[dict] = []

    def close(self):
        try:
            self.call("Browser.close")
        except (OSError, TimeoutError, RuntimeError):
            pass
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        os.close(self._write)
        os.close(self._read)
        shutil.rmtree(self.profile, ignore_errors=True)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    # -- the protocol ------------------------------------------------------------------

    def _message(self, deadline: float) -> dict:
        while b"\0" not in self._buffer:
            left = deadline - time.monotonic()
            if left <= 0 or not select.select([self._read], [], [], left)[0]:
                raise TimeoutError("Chromium did not answer in time")
            chunk = os.read(self._read, 1 << 20)
            if not chunk:
                raise RuntimeError(f"Chromium exited (code {self.proc.poll()})")
            self._buffer += chunk
        raw, self._buffer = self._buffer.split(b"\0", 1)
        return json.loads(raw)

    def call(self, method: str, session: str | None = None, **params) -> dict:
        self._next_id += 1
        msg = {"id": self._next_id, "method": method, "params": params}
        if session:
            msg["sessionId"] = session
        os.write(self._write, json.dumps(msg).encode() + b"\0")
        deadline = time.monotonic() + self.timeout
        while True:
            reply = self._message(deadline)
            if reply.get("id") == self._next_id:
                if "error" in reply:
                    raise RuntimeError(f"{method}: {reply['error']}")
                return reply.get("result", {})
            self.events.append(reply)

    def wait_for(self, method: str) -> dict:
        deadline = time.monotonic() + self.timeout
        for i, event in enumerate(self.events):
            if event.get("method") == method:
                return self.events.pop(i)
        while True:
            event = self._message(deadline)
            if event.get("method") == method:
                return event
            self.events.append(event)

    # -- one page ----------------------------------------------------------------------

    def open_page(self, path: Path, width: int = 1200, height: int = 900) -> Page:
        target = self.call("Target.createTarget", url="about:blank")["targetId"]
        session = self.call("Target.attachToTarget", targetId=target, flatten=True)["sessionId"]
        for domain in ("Page", "Runtime", "Log", "Network"):
            self.call(f"{domain}.enable", session)
        self.call("Emulation.setDeviceMetricsOverride", session, width=width, height=height, deviceScaleFactor=1,
                  mobile=False)
        self.events.clear()
        url = Path(path).resolve().as_uri()
        self.call("Page.navigate", session, url=url)
        self.wait_for("Page.loadEventFired")
        probe = """JSON.stringify({
            title: document.title,
            images: Array.from(document.images).map(i => ({alt: i.alt, complete: i.complete,
                                                           width: i.naturalWidth, height: i.naturalHeight})),
            headings: Array.from(document.querySelectorAll('h1, h2')).map(h => h.textContent),
            text: document.body ? document.body.innerText : '',
            overflow: document.documentElement.scrollWidth - document.documentElement.clientWidth})"""
        seen = json.loads(self.call("Runtime.evaluate", session, expression=probe, returnByValue=True)
                          ["result"]["value"])
        shot = base64.b64decode(self.call("Page.captureScreenshot", session, format="png")["data"])
        errors, requests = [], []
        for event in self.events:
            method, params = event.get("method"), event.get("params", {})
            if method == "Runtime.exceptionThrown":
                details = params["exceptionDetails"]
                errors.append(f"{details.get('text', '')} {details.get('exception', {}).get('description', '')}")
            elif method == "Runtime.consoleAPICalled" and params.get("type") in ("error", "assert"):
                errors.append(" ".join(str(a.get("value", a.get("description", ""))) for a in params["args"]))
            elif method == "Log.entryAdded" and params["entry"]["level"] == "error":
                errors.append(params["entry"]["text"])
            elif method == "Network.loadingFailed":
                errors.append(f"failed to load: {params.get('errorText')}")
            elif method == "Network.requestWillBeSent":
                req = params["request"]["url"]
                if req != url and not req.startswith("data:"):
                    requests.append(req)
        self.call("Target.closeTarget", targetId=target)
        return Page(seen["title"], seen["images"], seen["headings"], seen["text"], seen["overflow"], errors, requests,
                    shot)
