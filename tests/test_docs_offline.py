"""``/docs`` (Swagger UI) and ``/redoc`` (ReDoc) work with no way off the machine (issue 15): their scripts,
styles and favicon come from the package, not from a CDN, so the pages are not blank on an intranet.

The fast test reads the pages' HTML and fetches every asset they name from the app. The browser test serves a
real ``kbsearch serve`` on loopback and opens both pages in Debian's chromium (Playwright, headless) with every
request to a host other than loopback aborted: Swagger UI must render the ``POST /ask`` operation, ReDoc the
API's title and the operation's heading, and no request may have tried to leave loopback.
"""

from __future__ import annotations

import os
import re
from html.parser import HTMLParser
from urllib.parse import urlsplit

import pytest
from fastapi.testclient import TestClient

from kbsearch.api.app import create_app
from kbsearch.embed.fake import HashEmbedder
from kbsearch.rerank import make_rerank_planner
from kbsearch.service.query import QueryEngine
from debian import CHROMIUM_ARGS, chromium_and_playwright
from servers import running_server

LOOPBACK = {"127.0.0.1", "localhost", "::1"}


class _Assets(HTMLParser):
    """Every URL a page loads by itself: script src, link href, img src."""

    def __init__(self) -> None:
        super().__init__()
        self.urls: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        names = {"script": "src", "link": "href", "img": "src"}
        self.urls += [v for k, v in attrs if tag in names and k == names[tag] and v]


def _assets(html: str) -> list[str]:
    parser = _Assets()
    parser.feed(html)
    return parser.urls


def test_docs_pages_load_their_assets_from_the_app(settings):
    engine = QueryEngine(settings, HashEmbedder(dim=64), make_rerank_planner(settings))
    with TestClient(create_app(settings, engine)) as client:
        for page, wanted in (("/docs", {"swagger-ui-bundle.js", "swagger-ui.css", "favicon.png"}),
                             ("/redoc", {"redoc.standalone.js", "favicon.png"})):
            r = client.get(page)
            assert r.status_code == 200 and "default-src 'self'" in r.headers["content-security-policy"]
            urls = _assets(r.text)
            assert {u.rsplit("/", 1)[-1] for u in urls} == wanted, urls
            assert all(u.startswith("/docs/static/") for u in urls), urls  # same origin, no CDN, no Google fonts
            assert "//" not in r.text.replace("http://www.w3.org", ""), page  # no absolute URL anywhere in the page
            for u in urls:
                asset = client.get(u)
                assert asset.status_code == 200 and len(asset.content) > 100, u
        assert client.get("/docs/oauth2-redirect").status_code == 200
        assert "/docs/static" not in str(client.get("/openapi.json").json()["paths"])  # not an API operation


@pytest.mark.slow
@pytest.mark.browser
def test_swagger_ui_and_redoc_render_in_a_browser_that_cannot_leave_loopback(tmp_path):
    chromium, sync_playwright = chromium_and_playwright()
    # the pages need no knowledge base and no model: an empty home and the hash embedder start in seconds
    env = {**os.environ, "KBSEARCH_HOME": str(tmp_path / "home"), "KBSEARCH_EMBED__BACKEND": "hash",
           "KBSEARCH_QUESTIONLOG__URL": f"sqlite:///{tmp_path / 'questions.db'}"}
    with running_server(env, expect_ready=False) as base:
        with sync_playwright() as p:
            browser = p.chromium.launch(executable_path=chromium, headless=True, args=CHROMIUM_ARGS)
            context = browser.new_context(viewport={"width": 1280, "height": 900}, locale="en-US")
            outside: list[str] = []
            loaded: list[tuple[int, str]] = []
            errors: list[str] = []
            console: list[str] = []

            def route(r) -> None:  # an intranet: nothing but loopback answers
                if urlsplit(r.request.url).hostname in LOOPBACK:
                    r.continue_()
                else:
                    outside.append(r.request.url)
                    r.abort("internetdisconnected")

            context.route("**/*", route)
            context.on("response", lambda resp: loaded.append((resp.status, urlsplit(resp.url).path)))
            page = context.new_page()
            page.on("pageerror", lambda exc: errors.append(str(exc)))
            page.on("console", lambda msg: console.append(msg.text) if msg.type == "error" else None)
            from playwright.sync_api import expect

            page.goto(base + "/docs")
            ask = page.locator("#operations-default-ask_ask_post")
            expect(ask).to_be_visible(timeout=60_000)
            expect(ask.locator(".opblock-summary-method")).to_have_text("POST")
            expect(ask.locator(".opblock-summary-path")).to_have_attribute("data-path", "/ask")
            expect(page.locator(".information-container .title")).to_contain_text("kbsearch")
            # "Try it out" still reaches the API under the page's Content-Security-Policy
            health = page.locator("#operations-default-healthz_healthz_get")
            health.locator(".opblock-summary").click()
            health.get_by_role("button", name="Try it out").click()
            health.get_by_role("button", name="Execute").click()
            status = health.locator(".live-responses-table tr.response .response-col_status")
            expect(status).to_have_text("200", timeout=30_000)
            page.screenshot(path=str(tmp_path / "docs.png"), full_page=False)

            page.goto(base + "/redoc")
            expect(page.get_by_role("heading", level=1)).to_contain_text("kbsearch", timeout=60_000)
            operation = page.locator('[data-section-id="operation/ask_ask_post"]').first  # ReDoc nests two
            expect(operation.get_by_role("heading", level=2)).to_have_text(re.compile(r"^\s*Ask\s*$"))
            expect(operation).to_contain_text("/ask")
            expect(operation).to_contain_text("Request Body schema")
            page.screenshot(path=str(tmp_path / "redoc.png"), full_page=False)
            browser.close()

    assert outside == []
    assert errors == []
    # the one thing the pages try to fetch from elsewhere, ReDoc's Redocly logo, is blocked by the browser itself
    assert all("cdn.redoc.ly/redoc/logo-mini.svg" in m and "Content Security Policy" in m for m in console), console
    assets = {path for status, path in loaded if status == 200}
    assert {"/docs/static/swagger-ui-bundle.js", "/docs/static/swagger-ui.css",
            "/docs/static/redoc.standalone.js", "/openapi.json"} <= assets, sorted(assets)
