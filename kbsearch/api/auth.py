"""Who may call what: operator (admin) keys, client keys and the dashboard's session cookie.

- Admin routes (``/dashboard`` data under ``/admin``, review actions, exports) need an operator key from
  ``KBSEARCH_ADMIN_KEYS``, sent as ``Authorization: Bearer <key>`` or exchanged once at ``POST /admin/login``
  for a session cookie (HttpOnly, SameSite=Strict, signed with a secret derived from the keys, so every
  replica with the same keys accepts it and changing the keys ends every session). A key may name its
  owner, ``alice:<secret>``: decisions are stored as made by ``alice``; an unnamed key is known by a
  fingerprint.
- ``/ask`` and ``/feedback`` need a client key from ``KBSEARCH_API_KEYS`` (or an admin key) when any is set.
- With no admin key configured, ``kbsearch serve`` makes one for the run and prints it, and refuses to
  start with the dashboard on a non-loopback host.

Keys are compared with ``hmac.compare_digest`` against every configured key (no early exit on a match).
"""

from __future__ import annotations

import hashlib
import hmac
import ipaddress
import secrets
import time
from dataclasses import dataclass

from fastapi import HTTPException, Request

from kbsearch.config import Settings
from kbsearch.errors import BadInputError

SESSION_COOKIE = "kbsearch_session"
#: The header the dashboard sends on every call; a session-authenticated change needs it (beside SameSite=Strict).
DASHBOARD_HEADER = "kbsearch-dashboard"


@dataclass(frozen=True)
class Key:
    """A configured key and who it belongs to."""

    secret: str
    owner: str


def parse_keys(raw: tuple[str, ...]) -> list[Key]:
    """``name:secret`` or ``secret`` entries -> keys (an unnamed key's owner is ``key-<fingerprint>``)."""
    keys = []
    for item in raw:
        name, sep, secret = item.partition(":")
        if sep and name and secret and len(secret) >= 16 and name.replace("-", "").replace("_", "").replace(".", "").isalnum():
            keys.append(Key(secret, name))
        else:
            keys.append(Key(item, "key-" + hashlib.sha256(item.encode()).hexdigest()[:8]))
    return keys


def is_loopback(host: str) -> bool:
    """Whether ``host`` (a bind address or name) is only reachable from this machine."""
    if host in ("localhost", "localhost.localdomain"):
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def _match(keys: list[Key], presented: str) -> Key | None:
    found = None
    for k in keys:  # compare with every key: the time does not tell which (or whether one) matched
        if hmac.compare_digest(k.secret.encode(), presented.encode()):
            found = k
    return found


def _bearer(request: Request) -> str | None:
    header = request.headers.get("authorization", "")
    scheme, _, value = header.partition(" ")
    return value.strip() if scheme.lower() == "bearer" and value.strip() else None


class Guard:
    """Checks keys and sessions for the app.

    Args:
        settings: ``admin_keys``, ``api_keys``, ``api.host``, ``dashboard``.
        generated_admin_key: The key made for this run when none is configured (``kbsearch serve`` prints it).

    Raises:
        BadInputError: the dashboard is on, the host is not loopback and no admin key is configured.
    """

    def __init__(self, settings: Settings, generated_admin_key: str | None = None) -> None:
        if settings.dashboard.enabled and not settings.admin_keys and not is_loopback(settings.api.host):
            raise BadInputError(f"refusing to serve the dashboard on {settings.api.host} without an operator key: set "
                                "KBSEARCH_ADMIN_KEYS, or KBSEARCH_DASHBOARD__ENABLED=false")
        self.generated_admin_key = None
        admin = list(settings.admin_keys)
        if not admin:
            self.generated_admin_key = generated_admin_key or secrets.token_urlsafe(24)
            admin = [f"local:{self.generated_admin_key}"]
        self.admin = parse_keys(tuple(admin))
        self.clients = parse_keys(settings.api_keys)
        self.session_seconds = settings.dashboard.session_hours * 3600
        self._secret = hashlib.sha256(("kbsearch-session\n" + "\n".join(sorted(k.secret for k in self.admin))).encode()).digest()

    # -- sessions ---------------------------------------------------------------------------------
    def _sign(self, payload: str) -> str:
        return hmac.new(self._secret, payload.encode(), hashlib.sha256).hexdigest()

    def login(self, key: str) -> tuple[str, str] | None:
        """A session token for a valid admin key, and its owner; None for anything else."""
        match = _match(self.admin, key)
        if match is None:
            return None
        payload = f"{match.owner}|{int(time.time() + self.session_seconds)}"
        return f"{payload}|{self._sign(payload)}", match.owner

    def _session_owner(self, token: str | None) -> str | None:
        if not token or token.count("|") != 2:
            return None
        owner, expires, sig = token.split("|")
        if not hmac.compare_digest(sig, self._sign(f"{owner}|{expires}")):
            return None
        try:
            return owner if int(expires) > time.time() else None
        except ValueError:
            return None

    # -- dependencies -----------------------------------------------------------------------------
    def admin_actor(self, request: Request) -> str:
        """The operator making an admin request (a FastAPI dependency); 401 without a valid key or session."""
        token = _bearer(request)
        if token is not None:
            match = _match(self.admin, token)
            if match is not None:
                return match.owner
            raise HTTPException(401, "not an operator key", headers={"WWW-Authenticate": "Bearer"})
        owner = self._session_owner(request.cookies.get(SESSION_COOKIE))
        if owner is None:
            raise HTTPException(401, "operator key required (Authorization: Bearer <key>, or log in at /dashboard)",
                                headers={"WWW-Authenticate": "Bearer"})
        if request.method not in ("GET", "HEAD") and request.headers.get("x-requested-with") != DASHBOARD_HEADER:
            # a cookie rides along on any request the browser sends; this header only on the dashboard's own
            raise HTTPException(403, f"a session changes data only with X-Requested-With: {DASHBOARD_HEADER}")
        return owner

    def client(self, request: Request) -> None:
        """Check a client key on ``/ask`` and ``/feedback`` when client keys are configured (a dependency)."""
        if not self.clients:
            return
        token = _bearer(request)
        if token is None or (_match(self.clients, token) is None and _match(self.admin, token) is None):
            raise HTTPException(401, "client key required (Authorization: Bearer <key>)",
                                headers={"WWW-Authenticate": "Bearer"})
