"""Headless Chromium driven over the Chrome DevTools Protocol, with aiohttp (no browser download,
no Node.js): the Debian `chromium` package, started with the flags this machine needs.

    async with Browser.launch() as browser:
        page = await browser.page()
        await page.goto("http://127.0.0.1:8233/")
        await page.wait_for("document.body.innerText.includes('Workflows')", "the workflow list")
        await page.screenshot(Path("shot.png"))
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import itertools
import json
import os
import shutil
import tempfile
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp

FLAGS = [
    "--headless",
    "--no-sandbox",  # runs as root in CI
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",  # no calls to Google's hosts: the machine's network is closed
    "--disable-component-update",
    "--disable-sync",
    "--disable-dev-shm-usage",
    "--hide-scrollbars",
    "--remote-debugging-address=127.0.0.1",
    "--remote-debugging-port=0",
]
CANDIDATES = ("chromium", "chromium-browser", "google-chrome", "chrome")


class BrowserError(Exception):
    """The browser could not start, or a page did not show what it should in time."""


def find_chromium() -> str:
    explicit = os.environ.get("EGIS_CHROMIUM")
    if explicit:
        return explicit
    for name in CANDIDATES:
        found = shutil.which(name)
        if found:
            return found
    raise BrowserError("no Chromium found: install it (Debian: apt-get install -y chromium) or set EGIS_CHROMIUM")


def _write(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)


class Page:
    def __init__(self, ws: aiohttp.ClientWebSocketResponse) -> None:
        self._ws = ws
        self._ids = itertools.count(1)

    async def send(self, method: str, params: dict[str, Any] | None = None, timeout: float = 30.0) -> dict[str, Any]:
        message_id = next(self._ids)
        await self._ws.send_str(json.dumps({"id": message_id, "method": method, "params": params or {}}))
        deadline = time.monotonic() + timeout
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                raise BrowserError(f"no answer to {method} within {timeout:.0f}s")
            message = await self._ws.receive(timeout=left)
            if message.type != aiohttp.WSMsgType.TEXT:
                raise BrowserError(f"the browser closed the DevTools connection ({message.type.name})")
            data = json.loads(message.data)
            if data.get("id") == message_id:
                if "error" in data:
                    raise BrowserError(f"{method}: {data['error'].get('message')}")
                return data.get("result", {})

    async def evaluate(self, expression: str) -> Any:
        result = await self.send(
            "Runtime.evaluate", {"expression": expression, "returnByValue": True, "awaitPromise": True}
        )
        if "exceptionDetails" in result:
            raise BrowserError(f"script failed: {result['exceptionDetails'].get('text')}: {expression[:80]}")
        return result.get("result", {}).get("value")

    async def goto(self, url: str) -> None:
        await self.send("Page.navigate", {"url": url})
        await self.wait_for("document.readyState === 'complete'", f"{url} to load")

    async def wait_for(self, predicate: str, what: str, timeout: float = 30.0) -> Any:
        """Poll a JavaScript expression until it is truthy; fail naming `what` and what the page shows."""
        deadline = time.monotonic() + timeout
        while True:
            with contextlib.suppress(BrowserError):
                value = await self.evaluate(predicate)
                if value:
                    return value
            if time.monotonic() > deadline:
                shown = await self.text()
                raise BrowserError(f"timed out after {timeout:.0f}s waiting for {what}; the page shows {shown[:600]!r}")
            await asyncio.sleep(0.25)

    async def all_text(self) -> str:
        """The text of the page and of every frame and shadow root in it (the web UI renders
        markdown in sandboxed iframes, which the page's own innerText leaves out)."""
        document = await self.send("DOM.getDocument", {"depth": -1, "pierce": True})
        parts: list[str] = []

        def walk(node: dict[str, Any]) -> None:
            if node.get("nodeType") == 3 and node.get("nodeValue", "").strip():
                parts.append(node["nodeValue"].strip())
            if node.get("nodeName") in ("SCRIPT", "STYLE"):
                return
            for child in node.get("children", []):
                walk(child)
            for key in ("contentDocument", "templateContent"):
                if key in node:
                    walk(node[key])
            for root in node.get("shadowRoots", []):
                walk(root)

        walk(document["root"])
        return "\n".join(parts)

    async def wait_for_text(self, texts: list[str], what: str, timeout: float = 30.0) -> None:
        """Until every one of `texts` is shown somewhere on the page (frames included)."""
        deadline = time.monotonic() + timeout
        while True:
            shown = await self.all_text()
            missing = [t for t in texts if t not in shown]
            if not missing:
                return
            if time.monotonic() > deadline:
                raise BrowserError(
                    f"timed out after {timeout:.0f}s waiting for {what}: not shown: {missing}; "
                    f"the page shows {shown[-600:]!r}"
                )
            await asyncio.sleep(0.25)

    async def text(self) -> str:
        with contextlib.suppress(BrowserError):
            return str(await self.evaluate("document.body ? document.body.innerText : ''") or "")
        return ""

    async def click_text(self, text: str, what: str, selector: str = "button, a, [role=tab], [role=button]") -> None:
        """Click the first visible element matching `selector` whose text contains `text`."""
        script = f"""(() => {{
            const wanted = {json.dumps(text)};
            const el = [...document.querySelectorAll({json.dumps(selector)})]
                .find(e => e.offsetParent !== null && (e.innerText || '').includes(wanted));
            if (!el) return false;
            el.scrollIntoView({{block: 'center'}});
            el.click();
            return true;
        }})()"""
        await self.wait_for(script, what)

    async def type_into(self, selector: str, text: str, what: str) -> None:
        """Focus the element (an input, or a code editor's contenteditable) and type `text`."""
        focused = f"""(() => {{
            const el = document.querySelector({json.dumps(selector)});
            if (!el) return false;
            el.scrollIntoView({{block: 'center'}});
            el.focus();
            return document.activeElement === el || el.contains(document.activeElement);
        }})()"""
        await self.wait_for(focused, what)
        await self.send("Input.insertText", {"text": text})

    async def screenshot(self, path: Path, *, full_page: bool = False) -> Path:
        params: dict[str, Any] = {"format": "png"}
        if full_page:
            params["captureBeyondViewport"] = True
        shot = await self.send("Page.captureScreenshot", params)
        data = base64.b64decode(shot["data"])
        await asyncio.to_thread(_write, path, data)
        return path


class Browser:
    def __init__(self, proc: asyncio.subprocess.Process, port: int, profile: Path) -> None:
        self.proc = proc
        self.port = port
        self.profile = profile
        self._session = aiohttp.ClientSession()
        self._sockets: list[aiohttp.ClientWebSocketResponse] = []

    @classmethod
    @contextlib.asynccontextmanager
    async def launch(cls, *, width: int = 1440, height: int = 1000, timeout: float = 30.0) -> AsyncIterator[Browser]:
        profile = Path(tempfile.mkdtemp(prefix="egis-chromium-"))
        binary = find_chromium()
        proc = await asyncio.create_subprocess_exec(
            binary,
            *FLAGS,
            f"--user-data-dir={profile}",
            f"--window-size={width},{height}",
            "about:blank",
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.DEVNULL,
            stderr=asyncio.subprocess.DEVNULL,
            start_new_session=True,
        )
        browser: Browser | None = None
        try:
            port_file = profile / "DevToolsActivePort"
            deadline = time.monotonic() + timeout
            while not port_file.exists() or not port_file.read_text().strip():
                if proc.returncode is not None:
                    raise BrowserError(f"{binary} exited with code {proc.returncode} at start")
                if time.monotonic() > deadline:
                    raise BrowserError(f"{binary} did not open its DevTools port within {timeout:.0f}s")
                await asyncio.sleep(0.1)
            port = int(port_file.read_text().split()[0])
            browser = cls(proc, port, profile)
            browser.size = (width, height)
            yield browser
        finally:
            if browser is not None:
                await browser.close()
            if proc.returncode is None:
                proc.terminate()
                try:
                    await asyncio.wait_for(proc.wait(), 10)
                except TimeoutError:
                    proc.kill()
                    await proc.wait()
            shutil.rmtree(profile, ignore_errors=True)

    size: tuple[int, int] = (1440, 1000)

    async def page(self) -> Page:
        """The first page target (the `about:blank` it started with), attached."""
        async with self._session.get(f"http://127.0.0.1:{self.port}/json/list") as response:
            targets = await response.json(content_type=None)
        pages = [t for t in targets if t.get("type") == "page"]
        if not pages:
            raise BrowserError("the browser has no page to drive")
        ws = await self._session.ws_connect(pages[0]["webSocketDebuggerUrl"], max_msg_size=0)
        self._sockets.append(ws)
        page = Page(ws)
        await page.send("Page.enable")
        await page.send("Runtime.enable")
        width, height = self.size
        await page.send(
            "Emulation.setDeviceMetricsOverride",
            {"width": width, "height": height, "deviceScaleFactor": 1, "mobile": False},
        )
        return page

    async def close(self) -> None:
        for ws in self._sockets:
            await ws.close()
        await self._session.close()
