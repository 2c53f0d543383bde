"""Headless Chromium, driven over the Chrome DevTools Protocol with the standard library.

Debian's `chromium` (scripts/test-tools) runs headless with `--remote-debugging-port=0`; it
writes the port it chose to `DevToolsActivePort` in its profile directory, and the test
speaks CDP over one WebSocket (RFC 6455, a minimal client below: no new dependency). Each
`Page` is a tab in a browser context of its own, so cookies never leak between tests.
Every wait is on a condition (the port file, an answer, a load event), never a fixed sleep.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import json
import os
import shutil
import socket
import struct
import subprocess
import time
from collections import deque
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from tests.support.waiting import wait_until

_GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"


def chromium_binary() -> str | None:
    """Debian's `chromium` (or another Chromium/Chrome on PATH)."""
    for name in ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable"):
        found = shutil.which(name)
        if found:
            return found
    return None


class WebSocket:
    """A client WebSocket: text frames out (masked), text frames in; pings answered."""

    def __init__(self, url: str, timeout: float = 30.0) -> None:
        parts = urlsplit(url)
        assert parts.scheme == "ws" and parts.hostname and parts.port, url
        self.sock = socket.create_connection((parts.hostname, parts.port), timeout=timeout)
        key = base64.b64encode(os.urandom(16))
        self.sock.sendall(
            (
                f"GET {parts.path} HTTP/1.1\r\nHost: {parts.hostname}:{parts.port}\r\n"
                "Upgrade: websocket\r\nConnection: Upgrade\r\n"
                f"Sec-WebSocket-Key: {key.decode()}\r\nSec-WebSocket-Version: 13\r\n\r\n"
            ).encode()
        )
        head = b""
        while b"\r\n\r\n" not in head:
            chunk = self.sock.recv(4096)
            if not chunk:
                raise ConnectionError("the browser closed the connection during the handshake")
            head += chunk
        head, _, self._buffer = head.partition(b"\r\n\r\n")
        lines = head.decode("latin-1").split("\r\n")
        assert " 101 " in lines[0], lines[0]
        accept = base64.b64encode(
            hashlib.sha1(key + _GUID, usedforsecurity=False).digest()
        ).decode()
        headers = {
            k.strip().lower(): v.strip() for k, _, v in (x.partition(":") for x in lines[1:])
        }
        assert headers.get("sec-websocket-accept") == accept, "bad WebSocket handshake"

    def _exactly(self, size: int) -> bytes:
        while len(self._buffer) < size:
            chunk = self.sock.recv(max(65536, size - len(self._buffer)))
            if not chunk:
                raise ConnectionError("the browser closed the DevTools connection")
            self._buffer += chunk
        data, self._buffer = self._buffer[:size], self._buffer[size:]
        return data

    def _send(self, opcode: int, payload: bytes) -> None:
        header = bytearray([0x80 | opcode])
        size = len(payload)
        if size < 126:
            header.append(0x80 | size)
        elif size < 1 << 16:
            header += bytes([0x80 | 126]) + struct.pack("!H", size)
        else:
            header += bytes([0x80 | 127]) + struct.pack("!Q", size)
        mask = os.urandom(4)
        repeated = (mask * (size // 4 + 1))[:size]
        masked = (int.from_bytes(payload, "big") ^ int.from_bytes(repeated, "big")).to_bytes(
            size, "big"
        )
        self.sock.sendall(bytes(header) + mask + masked)

    def send(self, text: str) -> None:
        self._send(0x1, text.encode("utf-8"))

    def receive(self, timeout: float) -> str:
        """The next text message (fragments joined), waiting at most `timeout` seconds."""
        self.sock.settimeout(max(timeout, 0.01))
        message = b""
        while True:
            first, second = self._exactly(2)
            opcode, size = first & 0x0F, second & 0x7F
            if size == 126:
                (size,) = struct.unpack("!H", self._exactly(2))
            elif size == 127:
                (size,) = struct.unpack("!Q", self._exactly(8))
            if second & 0x80:  # a server never masks, but unmask if it did
                mask = self._exactly(4)
                data = bytes(b ^ mask[i % 4] for i, b in enumerate(self._exactly(size)))
            else:
                data = self._exactly(size)
            if opcode == 0x9:  # ping
                self._send(0xA, data)
                continue
            if opcode == 0x8:
                raise ConnectionError("the browser closed the DevTools connection")
            if opcode in (0x0, 0x1):
                message += data
                if first & 0x80:  # FIN
                    return message.decode("utf-8")

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self._send(0x8, b"")
        self.sock.close()


class CdpError(AssertionError):
    pass


class Browser:
    """One headless Chromium process and its DevTools connection."""

    def __init__(self, binary: str, profile: Path, log: Path, timeout: float = 60.0) -> None:
        self.timeout = timeout
        profile.mkdir(parents=True, exist_ok=True)
        port_file = profile / "DevToolsActivePort"
        port_file.unlink(missing_ok=True)  # a previous browser's: its port is closed
        self._log = log.open("wb")
        self.process = subprocess.Popen(
            [
                binary,
                "--headless",
                "--disable-gpu",
                "--no-sandbox",
                "--no-first-run",
                "--no-default-browser-check",
                "--disable-extensions",
                "--disable-background-networking",
                "--disable-component-update",
                "--disable-dev-shm-usage",
                "--hide-scrollbars",
                "--mute-audio",
                "--password-store=basic",
                "--remote-debugging-port=0",
                f"--user-data-dir={profile}",
                "about:blank",
            ],
            stdin=subprocess.DEVNULL,
            stdout=self._log,
            stderr=subprocess.STDOUT,
        )

        def announced() -> list[str] | None:
            if self.process.poll() is not None:
                raise AssertionError(f"chromium exited with {self.process.returncode}: see {log}")
            lines = port_file.read_text().split() if port_file.exists() else []
            return lines if len(lines) >= 2 else None

        try:
            lines = wait_until(announced, timeout=timeout, interval=0.05, what="Chromium's port")
            assert lines is not None
            self.socket = WebSocket(f"ws://127.0.0.1:{lines[0]}{lines[1]}", timeout=timeout)
        except BaseException:
            self._stop(wait=0)
            raise
        self._next_id = 0
        self.events: deque[dict[str, Any]] = deque()

    def call(
        self, method: str, params: dict[str, Any] | None = None, session: str | None = None
    ) -> dict[str, Any]:
        """Send one command and wait for its answer; events that arrive meanwhile are kept."""
        self._next_id += 1
        message: dict[str, Any] = {"id": self._next_id, "method": method, "params": params or {}}
        if session is not None:
            message["sessionId"] = session
        self.socket.send(json.dumps(message))
        deadline = time.monotonic() + self.timeout
        while True:
            answer = json.loads(self.socket.receive(deadline - time.monotonic()))
            if answer.get("id") == self._next_id:
                if "error" in answer:
                    raise CdpError(f"{method}: {answer['error']}")
                result: dict[str, Any] = answer.get("result", {})
                return result
            self.events.append(answer)

    def wait_event(self, method: str, session: str, timeout: float | None = None) -> dict[str, Any]:
        """The first event `method` of `session`, queued or still to come."""
        for queued in list(self.events):
            if queued.get("method") == method and queued.get("sessionId") == session:
                self.events.remove(queued)
                return queued
        deadline = time.monotonic() + (timeout or self.timeout)
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                raise CdpError(f"no {method} within the timeout")
            try:
                event: dict[str, Any] = json.loads(self.socket.receive(left))
            except TimeoutError:
                raise CdpError(f"no {method} within the timeout") from None
            if event.get("method") == method and event.get("sessionId") == session:
                return event
            self.events.append(event)

    def forget_events(self, session: str) -> None:
        for event in [e for e in self.events if e.get("sessionId") == session]:
            self.events.remove(event)

    def page(self, width: int = 1280, height: int = 1000) -> Page:
        return Page(self, width, height)

    def close(self) -> None:
        with contextlib.suppress(CdpError, OSError):
            self.call("Browser.close")
        self.socket.close()
        self._stop(wait=20)

    def _stop(self, wait: float) -> None:
        """Wait `wait` seconds for the browser to exit (after Browser.close), then end it."""
        try:
            self.process.wait(timeout=wait)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(timeout=20)
        self._log.close()


class Page:
    """A tab in a fresh browser context (its own cookie jar)."""

    def __init__(self, browser: Browser, width: int, height: int) -> None:
        self.browser = browser
        self.context = browser.call("Target.createBrowserContext")["browserContextId"]
        self.target = browser.call(
            "Target.createTarget", {"url": "about:blank", "browserContextId": self.context}
        )["targetId"]
        self.session = browser.call(
            "Target.attachToTarget", {"targetId": self.target, "flatten": True}
        )["sessionId"]
        self.requested: list[str] = []
        self.call("Page.enable")
        self.call("Network.enable")
        self.call(
            "Emulation.setDeviceMetricsOverride",
            {"width": width, "height": height, "deviceScaleFactor": 1, "mobile": False},
        )

    def call(self, method: str, params: dict[str, Any] | None = None) -> dict[str, Any]:
        return self.browser.call(method, params, self.session)

    def goto(self, url: str) -> int:
        """Load `url`; wait for its load event. Returns the document's HTTP status."""
        self._drain()
        answer = self.call("Page.navigate", {"url": url})
        if answer.get("errorText"):
            raise CdpError(f"{url}: {answer['errorText']}")
        self.browser.wait_event("Page.loadEventFired", self.session)
        return self._drain()

    def submit(self, script: str) -> int:
        """Run `script` (which submits a form or follows a link); wait for the next
        document's load event. Returns that document's HTTP status."""
        self._drain()
        self.evaluate(script)
        self.browser.wait_event("Page.loadEventFired", self.session)
        return self._drain()

    def _drain(self) -> int:
        """Consume this tab's queued events: note every URL it requested (redirects too) in
        `requested`; return the status of the last document response (0: none)."""
        status = 0
        for event in [e for e in self.browser.events if e.get("sessionId") == self.session]:
            self.browser.events.remove(event)
            params = event.get("params", {})
            if event.get("method") == "Network.requestWillBeSent":
                self.requested.append(str(params["request"]["url"]))
            elif event.get("method") == "Network.responseReceived" and params.get("type") == (
                "Document"
            ):
                status = int(params["response"]["status"])
        return status

    def evaluate(self, expression: str) -> Any:
        """The value of a JavaScript expression in the page (the test's, not the page's)."""
        answer = self.call(
            "Runtime.evaluate",
            {"expression": expression, "returnByValue": True, "awaitPromise": True},
        )
        if "exceptionDetails" in answer:
            raise CdpError(f"{expression}: {answer['exceptionDetails']}")
        return answer["result"].get("value")

    def url(self) -> str:
        return str(self.evaluate("location.href"))

    def html(self) -> str:
        """The rendered DOM, serialised (what `chromium --dump-dom` prints)."""
        return str(self.evaluate("document.documentElement.outerHTML"))

    def cookies(self) -> list[dict[str, Any]]:
        """Every cookie of this page's browser context (HttpOnly ones too)."""
        found: list[dict[str, Any]] = self.browser.call(
            "Storage.getCookies", {"browserContextId": self.context}
        )["cookies"]
        return found

    def screenshot(self, path: Path, max_height: int | None = None) -> Path:
        """A PNG of the whole page (beyond the window's height), or of its top part."""
        size = self.call("Page.getLayoutMetrics")["cssContentSize"]
        height = size["height"] if max_height is None else min(size["height"], max_height)
        clip = {"x": 0, "y": 0, "width": size["width"], "height": height, "scale": 1}
        shot = self.call(
            "Page.captureScreenshot",
            {"format": "png", "captureBeyondViewport": True, "clip": clip},
        )
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(base64.b64decode(shot["data"]))
        return path

    def close(self) -> None:
        self.browser.call("Target.closeTarget", {"targetId": self.target})
        self.browser.call("Target.disposeBrowserContext", {"browserContextId": self.context})
        self.browser.forget_events(self.session)
