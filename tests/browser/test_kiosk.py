"""Kiosk mode (/?kiosk) and an MJPEG <img>, in a real headless Chromium against real servers on
127.0.0.1."""

from __future__ import annotations

from typing import Any

from promptcast.bench import free_port
from promptcast.engine.pipeline import Engine

from ..conftest import run_server
from .conftest import open_page, type_and_wait

# Records every state the page's status goes through (the status element is hidden in kiosk
# mode, but it still says where the link is).
RECORD_STATES = """
window.states = [];
document.addEventListener("DOMContentLoaded", () => {
  const status = document.getElementById("status");
  new MutationObserver(() => window.states.push(status.dataset.state))
    .observe(status, { attributes: true, attributeFilter: ["data-state"] });
});
"""


async def visible(page: Any, selector: str) -> bool:
    return bool(await page.is_visible(selector))


async def test_kiosk_shows_the_picture_full_screen_with_the_prompt_only(
    engine: Engine, browser: Any
) -> None:
    async with run_server(engine) as srv:
        page = await open_page(browser, srv.http_url + "/?kiosk&transport=websocket")
        assert await visible(page, "#prompt") and await visible(page, "#canvas")
        for hidden in ["header", ".overlay", ".controls", "footer", "#status"]:
            assert not await visible(page, hidden), hidden
        stage = await page.eval_on_selector(".stage", "e => e.getBoundingClientRect().toJSON()")
        assert (stage["width"], stage["height"]) == (760, 900)  # the whole viewport
        await type_and_wait(page, "a big red circle")
        assert await page.evaluate("[canvas.width, canvas.height]") == [64, 64]


async def test_kiosk_reconnects_after_an_idle_timeout_and_a_restart(
    engine: Engine, browser: Any
) -> None:
    port = free_port()
    async with run_server(engine, port=port, idle_timeout_s=1.0) as srv:
        page = await open_page(browser, srv.http_url + "/?kiosk&transport=websocket&channel=hall",
                               init_script=RECORD_STATES)
        await type_and_wait(page, "a blue square")
        # The server closes the idle link (1000) after 1 s; the kiosk reconnects at once.
        await page.wait_for_function("window.states.includes('reconnecting')", timeout=10000)
        await page.wait_for_function(
            "document.getElementById('status').dataset.state === 'connected'", timeout=10000)
    # The server restarts (same port): the page comes back, and sends its prompt again, which
    # the new server's channel shows to an <img> pointing at the MJPEG stream.
    async with run_server(engine, port=port) as srv:
        await page.wait_for_function(
            "document.getElementById('status').dataset.state === 'connected'", timeout=20000)
        assert "idle" not in await page.evaluate("window.states")
        await page.wait_for_function("window.promptcast.shownSeq >= window.promptcast.seq",
                                     timeout=20000)
        context = await browser.new_context()
        screen = await context.new_page()
        await screen.goto(srv.http_url + "/healthz")
        await screen.set_content(f'<img id="s" src="{srv.http_url}/stream.mjpg?channel=hall">')
        await screen.wait_for_function(
            "document.getElementById('s').naturalWidth === 64", timeout=20000)
        # The <img> follows typing in the kiosk: what it shows changes.
        await screen.evaluate("""() => {
            window.snapshot = () => {
                const c = document.createElement('canvas');
                c.width = c.height = 64;
                c.getContext('2d').drawImage(document.getElementById('s'), 0, 0);
                return c.toDataURL();
            };
            window.before = window.snapshot();
        }""")
        await type_and_wait(page, "a big yellow star on the left")
        await screen.wait_for_function("window.snapshot() !== window.before", timeout=20000)
        await context.close()
