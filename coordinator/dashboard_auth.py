"""Who may read the dashboard: the admin, as on the Admin gRPC API (coordinator/auth.py).

Every page and endpoint except `/healthz` and `/login` needs the coordinator's `admin_token`,
either as `Authorization: Bearer <token>` (the JSON endpoints, Prometheus scraping) or as a login
session: `POST /login` with the token sets a random session id in an HttpOnly, SameSite=Strict
cookie (Secure when the dashboard serves HTTPS). Sessions live in the coordinator's memory and end
after `SESSION_TTL_S` or a coordinator restart. The worker token is refused (403), as on the Admin
API; no credential or a wrong one is 401, and the page then sends a browser to the login form.
"""

from __future__ import annotations

import hmac
import secrets
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from urllib.parse import parse_qs

from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse, RedirectResponse, Response

SESSION_COOKIE = "fedtree_session"
SESSION_TTL_S = 12 * 3600
MAX_LOGIN_BYTES = 4096

Endpoint = Callable[[Request], Response]


def same_secret(a: str | None, b: str | None) -> bool:
    return a is not None and b is not None and hmac.compare_digest(a.encode(), b.encode())


@dataclass
class Sessions:
    """Random session ids -> expiry time."""

    ttl_s: float = SESSION_TTL_S
    clock: Callable[[], float] = time.time
    _expiry: dict[str, float] = field(default_factory=dict)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def new(self) -> str:
        sid = secrets.token_urlsafe(32)
        with self._lock:
            now = self.clock()
            self._expiry = {s: t for s, t in self._expiry.items() if t > now}  # forget expired ones
            self._expiry[sid] = now + self.ttl_s
        return sid

    def valid(self, sid: str | None) -> bool:
        if not sid:
            return False
        with self._lock:
            expiry = self._expiry.get(sid)
            return expiry is not None and expiry > self.clock()

    def end(self, sid: str | None) -> None:
        with self._lock:
            self._expiry.pop(sid or "", None)


class DashboardAuth:
    """The admin credential check of every dashboard route, and the login/logout endpoints."""

    def __init__(self, admin_token: str, worker_token: str | None = None, https: bool = False) -> None:
        if not admin_token:
            raise ValueError("the dashboard needs the coordinator's admin_token")
        self.admin_token = admin_token
        self.worker_token = worker_token
        self.https = https
        self.sessions = Sessions()

    def problem(self, request: Request) -> tuple[int, str] | None:
        """None when the request carries the admin credential, else (HTTP status, why)."""
        header = request.headers.get("authorization", "")
        if header:
            token = header.removeprefix("Bearer ") if header.startswith("Bearer ") else None
            if same_secret(token, self.admin_token):
                return None
            if same_secret(token, self.worker_token):
                return 403, "a worker token does not grant access to the dashboard"
            return 401, "wrong admin token (Authorization: Bearer <admin token>)"
        if self.sessions.valid(request.cookies.get(SESSION_COOKIE)):
            return None
        return 401, "log in at /login, or send Authorization: Bearer <admin token>"

    def guard(self, endpoint: Endpoint, page: bool = False) -> Endpoint:
        """`endpoint` for the admin only; a page sends a browser without a session to /login."""

        def guarded(request: Request) -> Response:
            problem = self.problem(request)
            if problem is None:
                return endpoint(request)
            status, why = problem
            if page and status == 401:
                return RedirectResponse("/login", status_code=303)
            return JSONResponse({"error": why}, status_code=status, headers={"WWW-Authenticate": "Bearer"})

        return guarded

    def login_page(self, request: Request) -> HTMLResponse:
        failed = "failed" in request.query_params
        return HTMLResponse(_LOGIN.replace("{error}", _FAILED if failed else ""), headers={"Cache-Control": "no-store"})

    async def login(self, request: Request) -> Response:
        body = await request.body()
        token = parse_qs(body[:MAX_LOGIN_BYTES].decode("utf-8", "replace")).get("token", [""])[0]
        if not same_secret(token, self.admin_token):
            return RedirectResponse("/login?failed", status_code=303)
        response = RedirectResponse("/", status_code=303)
        response.set_cookie(
            SESSION_COOKIE,
            self.sessions.new(),
            max_age=int(self.sessions.ttl_s),
            httponly=True,
            secure=self.https,
            samesite="strict",
            path="/",
        )
        return response

    def logout(self, request: Request) -> Response:
        self.sessions.end(request.cookies.get(SESSION_COOKIE))
        response = RedirectResponse("/login", status_code=303)
        response.delete_cookie(SESSION_COOKIE, path="/")
        return response


_FAILED = '<p class="error">That is not the admin token.</p>'
_LOGIN = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>fedtree dashboard: log in</title><link rel="icon" href="data:,">
<style>body{font-family:system-ui,sans-serif;max-width:28em;margin:4em auto}input{font-size:1em;padding:.3em;width:100%}
button{margin-top:.8em;font-size:1em}.error{color:#b00}</style></head>
<body><h1>fedtree dashboard</h1>
<p>The dashboard shows every site's id, address and accuracy: it is for the federation's operator.
Log in with the coordinator's admin token (<code>admin_token</code>).</p>
{error}
<form method="post" action="/login"><label for="token">Admin token</label>
<input id="token" name="token" type="password" autocomplete="current-password" autofocus required>
<button type="submit">Log in</button></form>
</body></html>
"""
