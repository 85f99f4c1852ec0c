"""Operator and client keys: every admin route refuses no key, a wrong key and a client key; sessions; startup guard."""

from __future__ import annotations

import pytest
from fastapi.testclient import TestClient

from kbsearch.api.app import create_app
from kbsearch.api.auth import SESSION_COOKIE, Guard, is_loopback, parse_keys
from kbsearch.config import Settings
from kbsearch.embed.fake import HashEmbedder
from kbsearch.errors import BadInputError
from kbsearch.rerank import make_rerank_planner
from kbsearch.service.query import QueryEngine

ADMIN = "alice:admin-secret-0123456789"
CLIENT = "client-secret-0123456789"


def _client(settings: Settings) -> TestClient:
    return TestClient(create_app(settings, QueryEngine(settings, HashEmbedder(dim=64), make_rerank_planner(settings))))


@pytest.fixture()
def keyed(settings, built):
    with _client(settings.updated(admin_keys=[ADMIN], api_keys=[CLIENT])) as c:
        yield c


def _admin_routes(app) -> list[tuple[str, str]]:
    """Every /admin/api route and method, from the app's own OpenAPI schema."""
    return [(method.upper(), path.replace("{decision_id}", "1"))
            for path, item in app.openapi()["paths"].items() if path.startswith("/admin/api") for method in item]


def test_every_admin_route_needs_an_operator_key(keyed):
    routes = _admin_routes(keyed.app)
    assert len(routes) >= 18  # the list below is the real route table, not a hand-written copy
    for method, path in routes:
        for headers in ({}, {"Authorization": "Bearer wrong-key-0123456789"}, {"Authorization": f"Bearer {CLIENT}"},
                        {"Authorization": "admin-secret-0123456789"}, {"Cookie": f"{SESSION_COOKIE}=alice|9999999999|forged"}):
            r = keyed.request(method, path, headers=headers)
            assert r.status_code == 401, (method, path, headers, r.status_code)
            assert r.headers["www-authenticate"] == "Bearer"
        r = keyed.request(method, path, headers={"Authorization": "Bearer admin-secret-0123456789"})
        assert r.status_code != 401, (method, path)


def test_an_operator_key_reads_the_dashboard_data(keyed):
    auth = {"Authorization": "Bearer admin-secret-0123456789"}
    me = keyed.get("/admin/api/me", headers=auth).json()
    assert me["actor"] == "alice" and me["kbs"] == ["default"] and me["lines"]["handoff"] == 0.15


def test_login_sets_a_strict_http_only_session_cookie(keyed):
    assert keyed.post("/admin/login", json={"key": "wrong-key-0123456789"}).status_code == 401
    assert keyed.post("/admin/login", json={"key": CLIENT}).status_code == 401
    r = keyed.post("/admin/login", json={"key": "admin-secret-0123456789"})
    assert r.status_code == 200 and r.json() == {"ok": True, "actor": "alice"}
    cookie = r.headers["set-cookie"]
    assert cookie.startswith(f"{SESSION_COOKIE}=") and "HttpOnly" in cookie and "SameSite=strict" in cookie
    assert keyed.get("/admin/api/me").json()["actor"] == "alice"  # the client keeps the cookie
    # a cookie alone does not change data: a cross-site form could send it; the dashboard's header is needed
    body = {"kb": "default", "phrases": ["转人工"]}
    assert keyed.put("/admin/api/rules", json=body).status_code == 403
    assert keyed.put("/admin/api/rules", json=body, headers={"X-Requested-With": "kbsearch-dashboard"}).status_code == 200
    keyed.post("/admin/logout")
    assert keyed.get("/admin/api/me").status_code == 401


def test_a_session_signed_with_other_keys_is_refused(settings, built, keyed):
    token, _ = Guard(settings.updated(admin_keys=["bob:other-secret-0123456789"])).login("other-secret-0123456789")
    assert keyed.get("/admin/api/me", headers={"Cookie": f"{SESSION_COOKIE}={token}"}).status_code == 401
    expired = Guard(settings.updated(admin_keys=[ADMIN], dashboard={"session_hours": 1e-9})).login("admin-secret-0123456789")[0]
    assert keyed.get("/admin/api/me", headers={"Cookie": f"{SESSION_COOKIE}={expired}"}).status_code == 401


def test_ask_and_feedback_need_a_client_key_when_configured(keyed):
    assert keyed.post("/ask", json={"question": "如何申请退货？"}).status_code == 401
    assert keyed.post("/ask", json={"question": "q"}, headers={"Authorization": "Bearer wrong-0123456789abcdef"}).status_code == 401
    r = keyed.post("/ask", json={"question": "如何申请退货？"}, headers={"Authorization": f"Bearer {CLIENT}"})
    assert r.status_code == 200
    rid = r.json()["request_id"]
    assert keyed.post("/feedback", json={"request_id": rid, "helpful": True}).status_code == 401
    ok = keyed.post("/feedback", json={"request_id": rid, "helpful": True}, headers={"Authorization": f"Bearer {CLIENT}"})
    assert ok.status_code == 200
    admin = keyed.post("/ask", json={"question": "如何申请退货？"}, headers={"Authorization": "Bearer admin-secret-0123456789"})
    assert admin.status_code == 200
    assert keyed.get("/healthz").status_code == 200  # probes stay open


def test_without_client_keys_ask_is_open(settings, built):
    with _client(settings.updated(admin_keys=[ADMIN])) as c:
        assert c.post("/ask", json={"question": "如何申请退货？"}).status_code == 200


def test_refuses_to_start_the_dashboard_off_loopback_without_an_admin_key(settings, built):
    for host in ("0.0.0.0", "10.1.2.3", "kbsearch.example.com", "::"):
        with pytest.raises(BadInputError, match="KBSEARCH_ADMIN_KEYS"):
            _client(settings.updated(api={"host": host}))
    _client(settings.updated(api={"host": "0.0.0.0"}, admin_keys=[ADMIN]))
    _client(settings.updated(api={"host": "0.0.0.0"}, dashboard={"enabled": False}))


def test_loopback_without_a_key_gets_a_generated_one(settings, built):
    with _client(settings) as c:
        key = c.app.state.guard.generated_admin_key
        assert key and len(key) >= 24
        assert c.get("/admin/api/me").status_code == 401
        assert c.get("/admin/api/me", headers={"Authorization": f"Bearer {key}"}).json()["actor"] == "local"


def test_short_keys_are_refused_and_keys_stay_out_of_reprs():
    with pytest.raises(ValueError, match="at least 16"):
        Settings(admin_keys="short")
    s = Settings(admin_keys="alice:admin-secret-0123456789,another-key-0123456789")
    assert "admin-secret" not in repr(s)
    keys = parse_keys(s.admin_keys)
    assert [k.owner for k in keys][0] == "alice" and keys[1].owner.startswith("key-")


@pytest.mark.parametrize("host, loop", [("127.0.0.1", True), ("::1", True), ("localhost", True), ("127.0.0.2", True),
                                        ("0.0.0.0", False), ("::", False), ("192.168.1.5", False), ("example.com", False)])
def test_is_loopback(host, loop):
    assert is_loopback(host) is loop


def test_dashboard_page_is_served_from_the_package(keyed):
    page = keyed.get("/dashboard")
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    assert "script-src 'self'" in page.headers["content-security-policy"] and page.headers["x-frame-options"] == "DENY"
    assert "/dashboard/static/dashboard.js" in page.text and "http://" not in page.text.replace("http://www.w3.org", "")
    assert keyed.get("/dashboard/static/dashboard.js").status_code == 200
