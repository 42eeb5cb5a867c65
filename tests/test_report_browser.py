"""The report in a real browser: headless Chromium (Debian's `chromium`) loads report.html
from disk with the network off, and we check there are no console errors, no request
other than the file itself, and that every chart rendered (an SVG with a non-empty box
and drawn content). A full-page screenshot is taken (set CURATE_REPORT_SCREENSHOT=path
to keep it; that is how docs/report_screenshot.png is made).

Chromium is driven over the DevTools protocol on `--remote-debugging-pipe` (file
descriptors 3 and 4, NUL-separated JSON): no port is opened, no websocket library needed.
Skips cleanly when no chromium is installed."""
from __future__ import annotations

import json
import os
import select
import shutil
import struct
import subprocess
import time
from pathlib import Path

import pytest

from test_report import shared_run

CHROMIUM = next((p for p in (shutil.which(n) for n in ("chromium", "chromium-browser", "google-chrome")) if p), None)
pytestmark = pytest.mark.skipif(CHROMIUM is None, reason="chromium is not installed (apt-get install chromium)")


class Browser:
    """A minimal DevTools-protocol client over Chromium's debugging pipe."""

    def __init__(self, profile: Path):
        self._to_chrome_r, self._to_chrome_w = os.pipe()
        self._from_chrome_r, self._from_chrome_w = os.pipe()
        args = [CHROMIUM, "--headless", "--remote-debugging-pipe", f"--user-data-dir={profile}", "--disable-gpu",
                "--no-first-run", "--no-default-browser-check", "--disable-extensions", "--disable-background-networking",
                "--disable-component-update", "--disable-sync", "--mute-audio",
                # no network: a dead proxy, and no name resolves
                "--proxy-server=http://127.0.0.1:9", "--host-resolver-rules=MAP * ~NOTFOUND", "about:blank"]
        if hasattr(os, "geteuid") and os.geteuid() == 0:
            args.insert(1, "--no-sandbox")  # Chromium refuses to run as root with its sandbox
        r, w = self._to_chrome_r, self._from_chrome_w

        def fds():
            os.dup2(r, 3)
            os.dup2(w, 4)

        self.proc = subprocess.Popen(args, pass_fds=(3, 4), preexec_fn=fds, stdout=subprocess.DEVNULL,
                                     stderr=subprocess.DEVNULL)
        os.close(self._to_chrome_r)
        os.close(self._from_chrome_w)
        self._buf = b""
        self._id = 0
        self.events: list[dict] = []

    def _read_message(self, deadline: float) -> dict:
        while b"\0" not in self._buf:
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError("no answer from chromium")
            ready, _, _ = select.select([self._from_chrome_r], [], [], left)
            if ready:
                chunk = os.read(self._from_chrome_r, 1 << 20)
                if not chunk:
                    raise RuntimeError("chromium closed the debugging pipe")
                self._buf += chunk
        msg, self._buf = self._buf.split(b"\0", 1)
        return json.loads(msg)

    def send(self, method: str, params: dict | None = None, session: str | None = None, timeout: float = 30) -> dict:
        self._id += 1
        msg = {"id": self._id, "method": method, "params": params or {}}
        if session:
            msg["sessionId"] = session
        os.write(self._to_chrome_w, json.dumps(msg).encode() + b"\0")
        deadline = time.monotonic() + timeout
        while True:
            m = self._read_message(deadline)
            if m.get("id") == self._id:
                if "error" in m:
                    raise RuntimeError(f"{method}: {m['error']}")
                return m.get("result", {})
            self.events.append(m)

    def wait_event(self, method: str, timeout: float = 30) -> dict:
        deadline = time.monotonic() + timeout
        for i, e in enumerate(self.events):
            if e.get("method") == method:
                return e
        while True:
            m = self._read_message(deadline)
            self.events.append(m)
            if m.get("method") == method:
                return m

    def close(self) -> None:
        try:
            self.send("Browser.close", timeout=5)
        except Exception:  # noqa: BLE001 - it may already be gone
            pass
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        os.close(self._to_chrome_w)
        os.close(self._from_chrome_r)


CHECK_CHARTS = """
JSON.stringify(Array.from(document.querySelectorAll('svg.chart')).map(function (s) {
  var r = s.getBoundingClientRect(), b = s.getBBox();
  return {kind: s.getAttribute('data-kind'), w: r.width, h: r.height, bw: b.width, bh: b.height,
          shapes: s.querySelectorAll('rect, path, circle, line').length,
          section: s.closest('section') ? s.closest('section').id : null};
}))
"""


def open_report(report: Path, profile: Path, screenshot: Path) -> dict:
    b = Browser(profile)
    try:
        target = b.send("Target.createTarget", {"url": "about:blank"})["targetId"]
        sid = b.send("Target.attachToTarget", {"targetId": target, "flatten": True})["sessionId"]
        for domain in ("Runtime", "Log", "Page", "Network"):
            b.send(f"{domain}.enable", session=sid)
        b.send("Network.emulateNetworkConditions", {"offline": True, "latency": 0, "downloadThroughput": -1,
                                                    "uploadThroughput": -1}, session=sid)
        b.send("Emulation.setDeviceMetricsOverride", {"width": 1280, "height": 900, "deviceScaleFactor": 1,
                                                      "mobile": False}, session=sid)
        b.send("Page.navigate", {"url": report.resolve().as_uri()}, session=sid)
        b.wait_event("Page.loadEventFired")
        charts = json.loads(b.send("Runtime.evaluate", {"expression": CHECK_CHARTS, "returnByValue": True},
                                   session=sid)["result"]["value"])
        size = b.send("Page.getLayoutMetrics", session=sid)["cssContentSize"]
        shot = b.send("Page.captureScreenshot", {"format": "png", "captureBeyondViewport": True,
                                                 "clip": {"x": 0, "y": 0, "width": 1280, "height": min(size["height"], 16000),
                                                          "scale": 1}}, session=sid)
        import base64

        screenshot.write_bytes(base64.b64decode(shot["data"]))
        b.send("Runtime.evaluate", {"expression": "1"}, session=sid)  # flush pending events
        errors = [e for e in b.events if e.get("method") == "Runtime.exceptionThrown"
                  or (e.get("method") == "Runtime.consoleAPICalled" and e["params"].get("type") in ("error", "assert"))
                  or (e.get("method") == "Log.entryAdded" and e["params"]["entry"].get("level") == "error")]
        requests = [e["params"]["request"]["url"] for e in b.events if e.get("method") == "Network.requestWillBeSent"]
        return {"charts": charts, "errors": errors, "requests": requests, "height": size["height"]}
    finally:
        b.close()


def png_size(path: Path) -> tuple[int, int]:
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    return struct.unpack(">II", data[16:24])


def test_report_in_headless_chromium(tmp_path, tmp_path_factory):
    from curate.look.report import write_report

    report = write_report(shared_run(tmp_path_factory), tmp_path / "report.html")
    shot = tmp_path / "report.png"
    res = open_report(report, tmp_path / "profile", shot)
    assert res["errors"] == []
    assert [u for u in res["requests"] if not u.startswith("file://")] == []
    charts = res["charts"]
    expected = report.read_text().count('<svg class="chart"')
    assert len(charts) == expected >= 10
    for c in charts:
        assert c["w"] > 100 and c["h"] > 40, c
        assert c["bw"] > 50 and c["bh"] > 20 and c["shapes"] >= 1, c
    assert {c["kind"] for c in charts} >= {"funnel", "histogram", "bars"}
    w, h = png_size(shot)
    assert w == 1280 and h > 2000 and shot.stat().st_size > 50_000
    keep = os.environ.get("CURATE_REPORT_SCREENSHOT")
    if keep:
        shutil.copyfile(shot, keep)
