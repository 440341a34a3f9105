"""Drives the /ui dashboard in headless Chromium (Debian's, through Playwright) for store-node/tests/dashboard.rs.

Usage: dashboard.py URL SCREENSHOT [USER SEGMENT]

Loads URL, waits until the page shows live data (segment rows from every node, a transition in the feed),
asks for the why-trace of USER in SEGMENT through the form (or of the newest row of the feed, by clicking it), takes a screenshot,
and prints one JSON object with what the page shows, for the test to check. Exits non-zero on a timeout or a
JavaScript error on the page.
"""
import json
import sys

from playwright.sync_api import sync_playwright

CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]


def main():
    url, screenshot = sys.argv[1], sys.argv[2]
    errors = []
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path="/usr/bin/chromium", headless=True, args=CHROMIUM_ARGS)
        # bypass_csp: the page forbids eval, which wait_for_function needs.
        page = browser.new_page(viewport={"width": 1400, "height": 1000}, bypass_csp=True)
        page.on("pageerror", lambda e: errors.append(str(e)))
        page.goto(url)
        page.wait_for_selector("body[data-state=live]", timeout=30_000)
        # A transition in the live feed (from the SSE stream) and every node answering.
        page.wait_for_function("Number(document.body.dataset.feed || 0) >= 1", timeout=60_000)
        page.wait_for_function(
            "document.querySelectorAll('#nodes .node.up').length === document.querySelectorAll('#nodes .node').length"
            " && document.querySelectorAll('#nodes .node').length >= 1",
            timeout=30_000,
        )
        # Member counts are recounted every few seconds on each node.
        page.wait_for_function("Number(document.getElementById('total-members').textContent) > 0", timeout=30_000)
        if len(sys.argv) > 4:
            page.fill("#why-user", sys.argv[3])
            page.select_option("#why-segment", sys.argv[4])
            page.click("#why-form button")
        else:
            page.click("#feed tbody tr")
        page.wait_for_selector("#why dl", timeout=15_000)
        # Let one more poll land, so rates and the histogram are drawn.
        page.wait_for_timeout(2500)
        page.screenshot(path=screenshot, full_page=True)
        shown = page.evaluate(
            """() => ({
                state: document.body.dataset.state,
                nodes: [...document.querySelectorAll('#nodes .node')].map(n => ({name: n.textContent, up: n.classList.contains('up')})),
                segments: [...document.querySelectorAll('#segments tbody tr')].map(r => ({
                    segment: r.dataset.segment,
                    members: Number(r.children[2].textContent),
                    entries: Number(r.children[5].textContent),
                })),
                feed: [...document.querySelectorAll('#feed tbody tr')].map(r => [...r.children].map(c => c.textContent)),
                why: [...document.querySelectorAll('#why dt')].map(dt => [dt.textContent, dt.nextElementSibling.textContent]),
                bars: document.querySelectorAll('#histogram .bar').length,
                p50: document.getElementById('lat-p50').textContent,
            })"""
        )
        shown["errors"] = errors
        browser.close()
    print(json.dumps(shown))
    return 1 if errors else 0


if __name__ == "__main__":
    sys.exit(main())
