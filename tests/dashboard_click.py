#!/usr/bin/env python3
"""Drives the callwatch dashboard in headless Chromium: clicks the first grid cell and checks that
the day-by-day series for that cell renders, or (--steps) loads pages and evaluates expressions on
them for a test to assert on.

    python3 tests/dashboard_click.py http://127.0.0.1:8080/ [--timeout 30] [--chromium PATH]
    python3 tests/dashboard_click.py --steps - [--timeout 30] < steps.json > results.json

Standard library only: Chromium is driven over the DevTools protocol with a hand-written
WebSocket client. The click is real input (Input.dispatchMouseEvent press + release at the
cell's centre), not a synthetic DOM event. Steps:

  1. load the page (give it no `#cell=` hash) and wait for `#grid[data-state=ready]` and for the
     events list above it to have loaded (it would move the grid);
  2. take the first `.cell`, scroll it into view, check it is the element at its centre point
     and that `#series` is not already showing it;
  3. press and release the left mouse button there;
  4. wait for `#series[data-state=ready]` with `data-cell` equal to the cell's `data-cell`
     (e.g. "RU/whatsapp") and a heading naming its country and platform.

With --steps FILE ("-": standard input), FILE holds a JSON list of steps, run in order in one
browser, each on a freshly loaded page (about:blank in between, so a hash-only change of URL is a
new load too):

    [{"url": "http://127.0.0.1:8080/#asn=1",
      "wait": "JS expression, polled until truthy (e.g. the grid's data-state is ready)",
      "eval": {"name": "JS expression", ...}}, ...]

and standard output gets one JSON object: {"steps": [{"name": value, ...}, ...], "exceptions":
[...]}, each value the expression's result by value (Runtime.evaluate, returnByValue, promises
awaited; undefined becomes null), "exceptions" the uncaught errors the pages' scripts threw. A
wait that is not met before the deadline, or an expression that throws, fails.

Exit status: 0 pass; 1 fail (the reason on stderr); 2 Chromium not found or would not start
(callers may treat that as "skipped"). Set CHROMIUM to choose the browser binary.
"""
import argparse
import base64
import json
import os
import shutil
import socket
import struct
import subprocess
import sys
import tempfile
import time
import urllib.request
from urllib.parse import urlsplit


class Skip(Exception):
    pass


class Fail(Exception):
    pass


# ---------------------------------------------------------------- minimal WebSocket client
class WebSocket:
    def __init__(self, url, timeout):
        u = urlsplit(url)
        self.sock = socket.create_connection((u.hostname, u.port or 80), timeout=timeout)
        key = base64.b64encode(os.urandom(16)).decode()
        path = u.path + ("?" + u.query if u.query else "")
        req = (
            f"GET {path} HTTP/1.1\r\nHost: {u.hostname}:{u.port}\r\nUpgrade: websocket\r\n"
            f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n"
        )
        self.sock.sendall(req.encode())
        head = b""
        while b"\r\n\r\n" not in head:
            chunk = self.sock.recv(4096)
            if not chunk:
                raise Fail("DevTools closed the WebSocket handshake")
            head += chunk
        head, self.buf = head.split(b"\r\n\r\n", 1)
        status = head.split(b"\r\n", 1)[0]
        if b" 101 " not in status + b" ":
            raise Fail(f"DevTools WebSocket handshake refused: {head.decode(errors='replace')}")

    def _read(self, n):
        while len(self.buf) < n:
            chunk = self.sock.recv(65536)
            if not chunk:
                raise Fail("DevTools WebSocket closed")
            self.buf += chunk
        out, self.buf = self.buf[:n], self.buf[n:]
        return out

    def _send_frame(self, opcode, payload):
        head = bytes([0x80 | opcode])
        n = len(payload)
        if n < 126:
            head += bytes([0x80 | n])
        elif n < 1 << 16:
            head += bytes([0x80 | 126]) + struct.pack(">H", n)
        else:
            head += bytes([0x80 | 127]) + struct.pack(">Q", n)
        mask = os.urandom(4)
        body = bytes(b ^ mask[i % 4] for i, b in enumerate(payload))
        self.sock.sendall(head + mask + body)

    def send(self, text):
        self._send_frame(0x1, text.encode())

    def recv(self):
        message = b""
        while True:
            b0, b1 = self._read(2)
            fin, opcode = b0 & 0x80, b0 & 0x0F
            n = b1 & 0x7F
            if n == 126:
                n = struct.unpack(">H", self._read(2))[0]
            elif n == 127:
                n = struct.unpack(">Q", self._read(8))[0]
            mask = self._read(4) if b1 & 0x80 else None
            payload = self._read(n)
            if mask:
                payload = bytes(b ^ mask[i % 4] for i, b in enumerate(payload))
            if opcode == 0x8:
                raise Fail("DevTools closed the WebSocket")
            if opcode == 0x9:
                self._send_frame(0xA, payload)
                continue
            if opcode == 0xA:
                continue
            message += payload
            if fin:
                return message.decode()

    def close(self):
        try:
            self._send_frame(0x8, b"")
        except OSError:
            pass
        self.sock.close()


class DevTools:
    def __init__(self, ws_url, timeout):
        self.ws = WebSocket(ws_url, timeout)
        self.next_id = 0
        self.exceptions = []  # uncaught errors of the page's scripts (Runtime.exceptionThrown)

    def call(self, method, **params):
        self.next_id += 1
        mid = self.next_id
        self.ws.send(json.dumps({"id": mid, "method": method, "params": params}))
        while True:
            msg = json.loads(self.ws.recv())
            if msg.get("method") == "Runtime.exceptionThrown":
                d = msg.get("params", {}).get("exceptionDetails", {})
                e = d.get("exception") or {}
                self.exceptions.append({"text": d.get("text"), "description": e.get("description"),
                                        "url": d.get("url"), "line": d.get("lineNumber")})
            if msg.get("id") == mid:
                if "error" in msg:
                    raise Fail(f"{method}: {msg['error']}")
                return msg.get("result", {})

    def eval(self, expression):
        r = self.call("Runtime.evaluate", expression=expression, returnByValue=True, awaitPromise=True)
        if "exceptionDetails" in r:
            d = r["exceptionDetails"]
            e = (d.get("exception") or {}).get("description") or d.get("text")
            raise Fail(f"page script failed: {e} in {expression[:200]}")
        return r.get("result", {}).get("value")


# ---------------------------------------------------------------- browser
def find_chromium(explicit):
    chosen = explicit or os.environ.get("CHROMIUM")
    names = [chosen] if chosen else ["chromium", "chromium-browser", "google-chrome", "google-chrome-stable"]
    for name in names:
        if shutil.which(name):
            return shutil.which(name)
    raise Skip(f"no Chromium found (tried {', '.join(names)}; install chromium or set CHROMIUM)")


def start_browser(binary, profile, deadline):
    proc = subprocess.Popen(
        [binary, "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
         "--disable-extensions", "--no-first-run", "--no-default-browser-check",
         "--remote-debugging-address=127.0.0.1", "--remote-debugging-port=0",
         f"--user-data-dir={profile}", "--window-size=1280,900", "about:blank"],
        stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    port_file = os.path.join(profile, "DevToolsActivePort")
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise Skip(f"{binary} exited with status {proc.returncode} before DevTools was up")
        try:
            with open(port_file) as f:
                port = int(f.readline().strip())
            return proc, port
        except (OSError, ValueError):
            time.sleep(0.05)
    proc.kill()
    raise Skip(f"{binary} did not open a DevTools port in time")


def page_ws_url(port, deadline):
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/json/list", timeout=5) as r:
                targets = json.load(r)
            for t in targets:
                if t.get("type") == "page" and t.get("webSocketDebuggerUrl"):
                    return t["webSocketDebuggerUrl"]
        except OSError:
            pass
        time.sleep(0.1)
    raise Skip("Chromium has no page target")


def wait_for(dt, expression, deadline, what):
    last = None
    loaded_since = None
    while time.monotonic() < deadline:
        last = dt.eval(expression)
        if last and last.get("done"):
            return last
        # A page that finished loading without the element at all (wrong URL, server down).
        if last and last.get("loaded") and last.get("state") is None:
            loaded_since = loaded_since or time.monotonic()
            if time.monotonic() - loaded_since > 3:
                raise Fail(f"{last.get('url')} has no #grid; is the dashboard served there?")
        else:
            loaded_since = None
        time.sleep(0.1)
    raise Fail(f"timed out waiting for {what}; last seen: {json.dumps(last)}")


# ---------------------------------------------------------------- the check
# Done when the grid has loaded and so has the events list above it: the two load side by side,
# and an events list arriving after the grid pushes the grid down, so a cell's centre measured
# before it would miss the cell (seen once on a loaded host: the click landed beside the grid).
GRID_STATE = """(() => {
  const g = document.getElementById('grid');
  const s = g ? g.dataset.state : null;
  const e = document.getElementById('events');
  const es = e ? e.dataset.state : null;
  return {done: s !== null && s !== 'loading' && es !== 'loading', state: s, events: es,
          text: g ? g.textContent.trim().slice(0, 300) : null,
          loaded: document.readyState === 'complete', url: location.href};
})()"""

FIRST_CELL = """(() => {
  const c = document.querySelector('#grid .cell');
  if (!c) return null;
  c.scrollIntoView({block: 'center', inline: 'center'});
  const r = c.getBoundingClientRect();
  const x = r.left + r.width / 2, y = r.top + r.height / 2;
  const hit = document.elementFromPoint(x, y);
  const s = document.getElementById('series');
  return {x, y, onTop: !!hit && hit.closest('.cell') === c,
          cell: c.dataset.cell, country: c.dataset.country, platform: c.dataset.platform,
          seriesState: s ? s.dataset.state : null, seriesCell: s ? s.dataset.cell || null : null};
})()"""


def series_state(expected):
    return """(() => {
  const s = document.getElementById('series');
  if (!s) return {done: false, state: null};
  const h = s.querySelector('h1,h2,h3');
  return {done: s.dataset.state !== 'loading' && s.dataset.cell === %s && s.dataset.state !== 'idle',
          state: s.dataset.state, cell: s.dataset.cell || null, heading: h ? h.textContent : null,
          text: s.textContent.trim().slice(0, 300)};
})()""" % json.dumps(expected)


def run(url, timeout, chromium):
    with browser(timeout, chromium) as (dt, deadline):
        click(dt, url, deadline)


class browser:
    """A headless Chromium with one page, over DevTools: `with browser(t, c) as (devtools, deadline)`."""

    def __init__(self, timeout, chromium):
        self.timeout = timeout
        self.deadline = time.monotonic() + timeout
        self.binary = find_chromium(chromium)
        self.profile = None
        self.proc = None
        self.dt = None

    def __enter__(self):
        self.profile = tempfile.mkdtemp(prefix="callwatch-click-")
        try:
            self.proc, port = start_browser(self.binary, self.profile, self.deadline)
            self.dt = DevTools(page_ws_url(port, self.deadline), self.timeout)
            self.dt.call("Page.enable")
            self.dt.call("Runtime.enable")
        except BaseException:
            self.__exit__(None, None, None)
            raise
        return self.dt, self.deadline

    def __exit__(self, *exc):
        if self.dt:
            self.dt.ws.close()
        if self.proc:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        shutil.rmtree(self.profile, ignore_errors=True)
        return False


def run_steps(steps, timeout, chromium):
    """Runs --steps (see the module's description); returns what goes to standard output."""
    if not isinstance(steps, list) or not all(isinstance(st, dict) and isinstance(st.get("url"), str) for st in steps):
        raise Fail('--steps wants a JSON list of {"url": ..., "wait": ..., "eval": {...}}')
    out = []
    with browser(timeout, chromium) as (dt, deadline):
        for st in steps:
            # A fresh load each time: a URL differing from the last only in its hash would
            # otherwise be a same-document navigation.
            dt.call("Page.navigate", url="about:blank")
            poll(dt, "location.href === 'about:blank' && document.readyState === 'complete'", deadline,
                 "about:blank")
            nav = dt.call("Page.navigate", url=st["url"])
            if nav.get("errorText"):
                raise Fail(f"{st['url']}: {nav['errorText']}")
            if st.get("wait"):
                poll(dt, st["wait"], deadline, f"{st['wait']} on {st['url']}")
            out.append({name: dt.eval(expr) for name, expr in (st.get("eval") or {}).items()})
        return {"steps": out, "exceptions": dt.exceptions}


def poll(dt, expression, deadline, what):
    """Evaluates `expression` every 50 ms until it is truthy (in JS), failing at the deadline."""
    last = None
    while time.monotonic() < deadline:
        last = dt.eval(f"!!({expression})")
        if last:
            return last
        time.sleep(0.05)
    raise Fail(f"timed out waiting for {what}; last value: {json.dumps(last)}")


def click(dt, url, deadline):
    """Loads `url`, clicks its first grid cell with the mouse and checks the series renders."""
    dt.call("Page.navigate", url=url)
    grid = wait_for(dt, GRID_STATE, deadline, "#grid to leave data-state=loading")
    if grid["state"] != "ready":
        raise Fail(f"#grid has data-state={grid['state']!r}: {grid['text']}")
    cell = dt.eval(FIRST_CELL)
    if not cell:
        raise Fail("#grid is ready but has no .cell")
    if not cell["cell"] or not cell["country"] or not cell["platform"]:
        raise Fail(f"first .cell lacks data-cell/data-country/data-platform: {cell}")
    if not cell["onTop"]:
        raise Fail(f"first .cell {cell['cell']} is covered at its centre; a click would miss it")
    if cell["seriesState"] == "ready" and cell["seriesCell"] == cell["cell"]:
        raise Fail("#series already shows the cell before the click (load the page without #cell=)")
    for kind, buttons in (("mouseMoved", 0), ("mousePressed", 1), ("mouseReleased", 0)):
        params = dict(type=kind, x=cell["x"], y=cell["y"], buttons=buttons)
        if kind != "mouseMoved":
            params.update(button="left", clickCount=1)
        dt.call("Input.dispatchMouseEvent", **params)
    got = wait_for(dt, series_state(cell["cell"]), deadline,
                   f"#series[data-state=ready][data-cell={cell['cell']}]")
    if got["state"] != "ready":
        raise Fail(f"#series for {cell['cell']} has data-state={got['state']!r}: {got['text']}")
    heading = got["heading"] or ""
    if cell["country"] not in heading or cell["platform"] not in heading:
        raise Fail(f"#series heading {heading!r} does not name {cell['country']} and {cell['platform']}")
    print(f"ok: clicked {cell['cell']}; #series ready with heading {heading!r}")


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("url", nargs="?", help="the dashboard URL, e.g. http://127.0.0.1:8080/")
    ap.add_argument("--steps", metavar="FILE", help='JSON steps to run instead of the click ("-": stdin)')
    ap.add_argument("--timeout", type=float, default=30.0, help="seconds for the whole check")
    ap.add_argument("--chromium", help="browser binary (default: $CHROMIUM, then chromium on PATH)")
    a = ap.parse_args()
    if (a.url is None) == (a.steps is None):
        ap.error("give either the dashboard URL or --steps")
    try:
        if a.steps:
            with (sys.stdin if a.steps == "-" else open(a.steps)) as f:
                steps = json.load(f)
            json.dump(run_steps(steps, a.timeout, a.chromium), sys.stdout)
            sys.stdout.write("\n")
        else:
            run(a.url, a.timeout, a.chromium)
    except Skip as e:
        print(f"skip: {e}", file=sys.stderr)
        return 2
    except (Fail, OSError, ValueError) as e:
        print(f"FAIL: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
