"""
Who may change things from the dashboard.

Without a C{DashboardToken} nobody may: the dashboard is read-only.  With
one, a write needs either C{Authorization: Bearer <token>} or a session
opened by logging in with the token, and then also the session's CSRF
token in the form.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
from collections import OrderedDict

import attrs
from twisted.internet.interfaces import IReactorTime
from twisted.web.server import Request

#: The name of the session cookie.
COOKIE = b"goophry_session"

#: Seconds a session lasts after it was opened.
SESSION_LIFETIME = 12 * 3600.0

#: Sessions kept at most; the oldest goes first.
MAX_SESSIONS = 1000


def same_secret(given: str | bytes, expected: str | bytes) -> bool:
    """
    Compare secrets in constant time: both are hashed first, so that not
    even their lengths show in the time taken.
    """

    def digest(value: str | bytes) -> bytes:
        raw = value.encode("utf-8", "surrogateescape") if isinstance(value, str) else value
        return hashlib.sha256(raw).digest()

    return hmac.compare_digest(digest(given), digest(expected))


@attrs.frozen
class Session:
    """A logged-in browser: its CSRF token, and when it ends."""

    csrf: str
    expires: float


@attrs.frozen
class Access:
    """
    What a request may do.  C{session} is its session id when it has one;
    C{csrf} the token its forms must carry (None: no form is needed, as for
    a bearer token, or none may write).
    """

    can_write: bool
    session: str | None = None
    csrf: str | None = None


class Guard:
    """Checks tokens, opens and closes sessions, and tells what a request may do."""

    def __init__(self, clock: IReactorTime, token: str | None) -> None:
        self._clock = clock
        self._token = token
        self._sessions: OrderedDict[str, Session] = OrderedDict()

    @property
    def read_only(self) -> bool:
        return self._token is None

    def token_matches(self, given: str) -> bool:
        return self._token is not None and same_secret(given, self._token)

    def open_session(self) -> str:
        """A new session, after a login with the right token; returns its id."""
        now = self._clock.seconds()
        for sid in [sid for sid, s in self._sessions.items() if s.expires <= now]:
            del self._sessions[sid]
        while len(self._sessions) >= MAX_SESSIONS:
            self._sessions.popitem(last=False)
        sid = secrets.token_urlsafe(32)
        self._sessions[sid] = Session(secrets.token_urlsafe(32), now + SESSION_LIFETIME)
        return sid

    def close_session(self, sid: str) -> None:
        self._sessions.pop(sid, None)

    def _session(self, request: Request) -> tuple[str, Session] | None:
        cookie = request.getCookie(COOKIE)
        if not cookie:
            return None
        sid = cookie.decode("ascii", "replace")
        session = self._sessions.get(sid)
        if session is None or session.expires <= self._clock.seconds():
            return None
        return sid, session

    def bearer(self, request: Request) -> str | None:
        """The token of an C{Authorization: Bearer} header, if there is one."""
        header = request.getHeader(b"authorization")
        if header is None:
            return None
        scheme, _, token = header.decode("latin-1").partition(" ")
        return token.strip() if scheme.lower() == "bearer" else None

    def access(self, request: Request) -> Access:
        """What this request may do, from its session cookie (not its bearer token)."""
        if self.read_only:
            return Access(False)
        found = self._session(request)
        if found is None:
            return Access(False)
        sid, session = found
        return Access(True, sid, session.csrf)

    def csrf_matches(self, access: Access, given: str | None) -> bool:
        return access.csrf is not None and given is not None and same_secret(given, access.csrf)
