"""The room inspector in a real browser: `make run`'s scripted conversation, as a user of
the stack sees it at /inspector in headless Chromium (Debian's ``chromium``, driven by
Playwright): its decisions appear, the dropped ``moonwalk`` with its reason included.

``AVATAR_UPDATE_SCREENSHOT=1`` also writes the page to docs/inspector.png (the README's).
"""

from __future__ import annotations

import asyncio
import os
import shutil
import signal
from pathlib import Path

import httpx
import pytest
from playwright.async_api import async_playwright

from tests.support.devstack import ROOT, read_until, start_devstack

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
HAVE_CHROMIUM = Path(CHROMIUM).exists()
#: As root on a closed network: no sandbox, no background connections (docs/testing.md).
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
pytestmark = pytest.mark.timeout(180)


async def test_the_inspector_shows_the_scripted_conversations_decisions(tmp_path: Path) -> None:
    assert HAVE_CHROMIUM, "Debian's chromium is needed: apt-get install chromium"
    proc = (await start_devstack(tmp_path)).proc
    out: list[str] = []
    try:
        line = await read_until(proc, "room inspector:", out, within=90)
        url = line.split("room inspector:")[1].strip()
        await read_until(proc, "dropped action moonwalk", out, within=90)  # the third reply's
        async with httpx.AsyncClient() as http:  # the API without a key: only locally
            assert (await http.get(url + "/api/rooms")).status_code == 200
        async with async_playwright() as pw:
            browser = await pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
            page = await browser.new_page(viewport={"width": 1280, "height": 900})
            await page.goto(url)
            room = page.locator(".room", has_text="local-").first
            await room.wait_for(timeout=15_000)
            await room.click()
            dropped = page.locator("tr", has_text="moonwalk: dropped (unknown_action)")
            await dropped.wait_for(timeout=15_000)
            sent = page.locator("tr", has_text="wave_hand: published, packet sent")
            await sent.first.wait_for(timeout=15_000)
            assert await page.locator("tr[data-type=tag_parsed]").count() >= 3
            assert await page.locator("tr[data-type=agent_state]").count() >= 2
            shot = tmp_path / "inspector.png"
            await page.screenshot(path=str(shot))
            if os.environ.get("AVATAR_UPDATE_SCREENSHOT") == "1":
                shutil.copy(shot, ROOT / "docs" / "inspector.png")
            await browser.close()
    finally:
        proc.send_signal(signal.SIGINT)
        async with asyncio.timeout(60):
            await proc.communicate()
