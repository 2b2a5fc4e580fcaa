"""Headless Chromium (Debian's, driven by Playwright) for the tests of the page, and helpers
to open it against a server and type into it.

WebRTC tests need a loopback-only network namespace (the README's test command runs pytest in
one): outside it Chromium offers this machine's other addresses as ICE candidates and aiortc
would send connectivity checks to them. Test traffic must only go to 127.0.0.1.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--no-sandbox",  # CI runs as root
    # Loopback WebRTC: without these two, ICE never completes and nothing says why.
    "--allow-loopback-in-peer-connection",
    "--disable-features=WebRtcHideLocalIpsWithMdns",
    "--autoplay-policy=no-user-gesture-required",
]


def loopback_only() -> bool:
    lines = Path("/proc/net/dev").read_text().splitlines()[2:]
    return [line.split(":")[0].strip() for line in lines] == ["lo"]


needs_netns = pytest.mark.skipif(
    not loopback_only(),
    reason="WebRTC in a browser is tested only inside a loopback-only network namespace "
    "(unshare -rn; see the README's test command)",
)


@pytest.fixture
async def browser() -> AsyncIterator[Any]:
    from playwright.async_api import async_playwright

    if not Path(CHROMIUM).exists():
        reason = "Debian's chromium is not installed (apt-get install chromium)"
        if os.environ.get("CI"):
            raise RuntimeError(f"CI must run the browser tests: {reason}")
        pytest.skip(reason)

    async with async_playwright() as pw:
        b = await pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        yield b
        await b.close()


async def open_page(browser: Any, url: str, init_script: str | None = None) -> Any:
    # A context per simulated client: a background tab would be throttled to about 1 fps.
    context = await browser.new_context(viewport={"width": 760, "height": 900})
    page = await context.new_page()
    if init_script:
        await page.add_init_script(init_script)
    await page.goto(url)
    await page.wait_for_function("document.getElementById('status').dataset.state === 'connected'",
                                 timeout=20000)
    return page


async def type_and_wait(page: Any, text: str, timeout: int = 20000) -> int:
    await page.fill("#prompt", "")
    await page.type("#prompt", text, delay=30)
    final = await page.evaluate("window.promptcast.seq")
    await page.wait_for_function(f"window.promptcast.shownSeq >= {final}", timeout=timeout)
    return int(final)
