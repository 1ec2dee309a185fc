"""The click path a new user takes in MLflow's UI, in headless Chromium, with a screenshot of each
page: home -> the sweep's experiment -> the link on top of its description (the runs table, the
schemes first) -> the chart -> the first scheme's run. Prints what each page showed as JSON (the
runs table's run names in order, the scheme's description and artifacts), so a test asserts on
the pages, not only on the pictures.

    python scripts/mlflow_screenshots.py --output runs/demo-tiny --shots docs/

Needs Debian's ``chromium`` (``apt-get install -y chromium``), driven over its DevTools protocol
with aiohttp (already in the sweep's environment); starts ``mlflow server`` on 127.0.0.1 against
the folder's own store and a fresh browser profile (no remembered *Model training* toggle: the
first visit a user makes). Exit 2 with one line when chromium or the store is missing.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import json
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import aiohttp

SIZE = (1600, 1000)  # the window the pages are laid out and shot in
BROWSERS = ("chromium", "chromium-browser", "google-chrome")


def find_browser() -> str | None:
    return next((p for p in map(shutil.which, BROWSERS) if p), None)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_http(url: str, seconds: float) -> Any:
    deadline = time.monotonic() + seconds
    while True:
        try:
            with urllib.request.urlopen(url, timeout=5) as r:
                return json.loads(r.read()) if url.endswith("/json") else r.status
        except OSError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.3)


@contextmanager
def process(cmd: list[str], log: Path) -> Iterator[subprocess.Popen[bytes]]:
    with log.open("wb") as out:
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT)
        try:
            yield proc
        finally:
            proc.terminate()
            try:
                proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


class Page:
    """One browser tab over the DevTools protocol: evaluate JavaScript, wait, take a picture."""

    def __init__(self, ws: aiohttp.ClientWebSocketResponse) -> None:
        self.ws, self.next_id = ws, 0

    async def send(self, method: str, **params: Any) -> dict[str, Any]:
        self.next_id += 1
        sent = self.next_id
        await self.ws.send_str(json.dumps({"id": sent, "method": method, "params": params}))
        while True:
            msg = json.loads((await self.ws.receive()).data)
            if msg.get("id") == sent:
                if "error" in msg:
                    raise RuntimeError(f"{method}: {msg['error']}")
                return dict(msg["result"])

    async def js(self, expr: str) -> Any:
        r = await self.send(
            "Runtime.evaluate", expression=expr, returnByValue=True, awaitPromise=True
        )
        return r["result"].get("value")

    async def wait(self, expr: str, what: str, seconds: float = 60) -> Any:
        """The value of ``expr`` once it is truthy; a page that never gets there fails, named."""
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            value = await self.js(expr)
            if value:
                return value
            await asyncio.sleep(0.5)
        raise TimeoutError(
            f"{what}: not shown within {seconds:.0f}s (at {await self.js('location.href')})"
        )

    async def shot(self, path: Path) -> None:
        await asyncio.sleep(1.5)  # fonts, charts, transitions and late pop-ups settle
        await self.tidy()
        r = await self.send("Page.captureScreenshot", format="png")
        path.write_bytes(base64.b64decode(r["data"]))

    async def tidy(self) -> None:
        """Closes what covers the pages on a first visit: the assistant panel, the telemetry
        notice, the shared-view banner, the "Detect Issues" tip (each only if shown)."""
        await self.js(
            """[...document.querySelectorAll('button')].filter(b => {
                 const l = (b.getAttribute('aria-label') || '').toLowerCase();
                 return ['close', 'close alert', 'hide banner'].includes(l)
                   || b.innerText.trim() === 'Got it';
               }).forEach(b => b.click())"""
        )
        await asyncio.sleep(0.5)


# the run names of the runs table, in the order shown (AG Grid rows by their row index)
RUN_NAMES = """(() => {
  const rows = [...document.querySelectorAll('.ag-row')]
    .map(r => [Number(r.getAttribute('row-index')), r.querySelector('a[href*="/runs/"]')])
    .filter(([, a]) => a);
  rows.sort((x, y) => x[0] - y[0]);
  const seen = new Set(), names = [];
  for (const [i, a] of rows) if (!seen.has(i)) { seen.add(i); names.push(a.innerText.trim()); }
  return names;
})()"""


# the button after the description's edit button: MLflow's chevron that unfolds the description
UNFOLD = (
    "(bs => bs[bs.findIndex(b => b.getAttribute('data-testid') === "
    "'experiment-metadata-editor-edit-button') + 1])([...document.querySelectorAll('button')])"
)


def anchor(test: str, within: str = "a") -> str:
    """JavaScript for the first link (``within`` a CSS selector) whose text ``test`` accepts."""
    return f"[...document.querySelectorAll('{within}')].find(a => {test})"


def deepest(text: str) -> str:
    """JavaScript for the innermost element whose whole text is ``text`` (what a click hits)."""
    return (
        "[...document.querySelectorAll('body *')]"
        f".filter(e => e.innerText && e.innerText.trim() === {json.dumps(text)}).pop()"
    )


async def click_path(page: Page, base: str, experiment: str, shots: Path) -> dict[str, Any]:
    seen: dict[str, Any] = {}
    await page.send("Page.navigate", url=f"{base}/")
    link = anchor(f"a.innerText.trim() === {json.dumps(experiment)}")
    seen["home_link"] = await page.wait(f"{link}?.getAttribute('href')", "the experiment on home")
    await page.tidy()
    await page.shot(shots / "mlflow-home.png")

    await page.js(
        f"{link}.click(), 1"
    )  # click 1: the experiment, in the view the browser last used
    view = anchor("(a.getAttribute('href') || '').includes('viewStateShareKey=')")
    seen["view_link"] = await page.wait(f"{view}?.getAttribute('href')", "the description's link")
    chart_link = anchor("(a.getAttribute('href') || '').includes('compareRunsMode=CHART')")
    seen["chart_link"] = await page.js(f"{chart_link}?.getAttribute('href') || ''")
    seen["experiment_page"] = await page.js("location.hash")
    # the description shows its first line; the chevron beside its edit button unfolds the rest
    # (the three schemes, their numbers and reasons)
    await page.js(f"{UNFOLD}?.click(), 1")
    seen["experiment_text"] = await page.js("document.body.innerText")
    await page.tidy()
    await page.shot(shots / "mlflow-experiment.png")
    await page.js(f"{UNFOLD}?.click(), 1")  # folded again: the UI keeps it so on the next pages

    # click 2: the runs table, schemes first; MLflow opens a description's links in a new tab,
    # here the same one
    await page.js(f"location.href = {view}.href")
    names = await page.wait(f"(n => n.length > 3 && n)({RUN_NAMES})", "the runs table's rows")
    seen["runs_page"] = await page.js("location.hash")
    seen["runs_in_order"] = names
    seen["table_text"] = await page.js("document.querySelector('.ag-root')?.innerText || ''")
    await page.tidy()
    await page.shot(shots / "mlflow-runs.png")

    # the description's other link (a second click from the experiment page): the chart
    await page.js(f"location.hash = {json.dumps(seen['chart_link'].lstrip('#'))}")
    chart = "document.querySelector('[data-testid=experiment-view-compare-runs-chart-area]')"
    seen["chart_text"] = await page.wait(
        f"(t => t && t.includes('kl_x1e6') && t)({chart}?.innerText)", "the chart"
    )
    await page.tidy()
    await page.shot(shots / "mlflow-chart.png")

    first = names[0]
    # the table's link (the description above it links the scheme runs too, in a new tab)
    run = anchor(f"a.innerText.trim() === {json.dumps(first)}", '.ag-root a[href*=\\"/runs/\\"]')
    await page.js(f"location.hash = {json.dumps(seen['runs_page'].lstrip('#'))}")  # the table again
    await page.wait(f"(n => n.length > 3 && n)({RUN_NAMES})", "the runs table's rows")
    await page.wait(f"!!{run}", "the first scheme's link")
    await page.js(f"{run}.click(), 1")
    seen["scheme_page"] = await page.wait(
        "(h => h.includes('/runs/') && !h.includes('runs?') && h)(location.hash)", "the run page"
    )
    seen["scheme_text"] = await page.wait(
        "(t => t.includes('Against the controls') && t)(document.body.innerText)",
        "the scheme's description",
    )
    await page.tidy()
    await page.js(f"{deepest('Show more')}?.click(), 1")  # the verdict table below the fold
    await page.shot(shots / "mlflow-scheme.png")

    await page.js("location.hash = location.hash.split('?')[0].replace(/\\/?$/, '') + '/artifacts'")
    seen["artifacts_text"] = await page.wait(
        "(t => t.includes('verdicts.md') && t)(document.body.innerText)", "the scheme's artifacts"
    )
    await page.tidy()
    await page.js(f"{deepest('verdicts.md')}?.click(), 1")
    await page.wait("document.body.innerText.includes('KL ratio')", "verdicts.md's preview", 20)
    await page.shot(shots / "mlflow-scheme-artifacts.png")
    return seen


async def drive(
    browser: str, base: str, experiment: str, shots: Path, work: Path
) -> dict[str, Any]:
    port = free_port()
    cmd = [
        browser,
        "--headless=new",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-dev-shm-usage",
        "--no-first-run",
        f"--user-data-dir={work / 'profile'}",
        f"--remote-debugging-port={port}",
        f"--window-size={SIZE[0]},{SIZE[1]}",
        "about:blank",
    ]
    with process(cmd, work / "chromium.log"):
        tabs = wait_http(f"http://127.0.0.1:{port}/json", 60)
        tab = next(t for t in tabs if t["type"] == "page")
        async with (
            aiohttp.ClientSession() as s,
            s.ws_connect(tab["webSocketDebuggerUrl"], max_msg_size=0) as ws,
        ):
            page = Page(ws)
            await page.send(
                "Emulation.setDeviceMetricsOverride",
                width=SIZE[0],
                height=SIZE[1],
                deviceScaleFactor=1,
                mobile=False,
            )
            return await click_path(page, base, experiment, shots)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--output", required=True, type=Path, help="the sweep's folder (its mlflow.db)")
    ap.add_argument("--shots", required=True, type=Path, help="folder the PNGs are written to")
    ap.add_argument("--experiment", default="demo-tiny", help="the experiment's name on home")
    args = ap.parse_args(argv)
    browser = find_browser()
    if browser is None:
        print("error: no chromium on PATH: apt-get install -y chromium", file=sys.stderr)
        return 2
    store = args.output / "mlflow.db"
    if not store.exists():
        print(
            f"error: --output {args.output}: no mlflow.db (run a sweep there first)",
            file=sys.stderr,
        )
        return 2
    args.shots.mkdir(parents=True, exist_ok=True)
    port = free_port()
    mlflow = Path(sys.executable).parent / "mlflow"
    server = [
        str(mlflow) if mlflow.exists() else "mlflow",
        "server",
        "--backend-store-uri",
        f"sqlite:///{store.resolve()}",
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--workers",
        "1",
    ]
    with tempfile.TemporaryDirectory() as d, process(server, Path(d) / "mlflow.log"):
        base = f"http://127.0.0.1:{port}"
        try:
            wait_http(f"{base}/health", 120)
            seen = asyncio.run(drive(browser, base, args.experiment, args.shots, Path(d)))
        except (OSError, TimeoutError, RuntimeError) as e:
            log = (Path(d) / "mlflow.log").read_text()[-2000:]
            print(f"error: {e}\n{log}", file=sys.stderr)
            return 1
    print(json.dumps(seen, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
