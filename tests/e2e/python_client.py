"""End-to-end run of the official MCP Python SDK against a running inkan.

The SDK does all of the OAuth work itself (401 -> protected resource metadata ->
authorization server metadata -> dynamic registration -> PKCE authorization ->
token exchange -> refresh). This script only plays the person at the browser:
its `redirect_handler` opens the authorization URL with the user's Hanko cookie,
approves the consent form, and hands the redirect's `code` to `callback_handler`.

Usage: python_client.py --inkan URL --hanko URL [--service ID] [--access-ttl SECONDS]
Exit status 0 when every check passed.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import secrets
import sys
from dataclasses import dataclass, field
from html.parser import HTMLParser
from typing import Any
from urllib.parse import parse_qs, urlencode, urljoin, urlsplit

import httpx2
from mcp import ClientSession
from mcp.client.auth import AuthorizationCodeResult, OAuthClientProvider
from mcp.client.streamable_http import streamable_http_client
from mcp.shared.auth import OAuthClientInformationFull, OAuthClientMetadata, OAuthToken

# Nothing listens here: the consent redirect is read from the Location header,
# the way a desktop client's loopback listener would receive it.
REDIRECT_URI = "http://127.0.0.1:53682/callback"


class CheckFailed(Exception):
    pass


def check(condition: bool, what: str) -> None:
    if not condition:
        raise CheckFailed(what)
    print(f"ok - {what}", flush=True)


class SignedOut(Exception):
    """The authorize endpoint showed the login page instead of consent."""


@dataclass
class Form:
    action: str
    method: str
    fields: list[tuple[str, str]] = field(default_factory=list)
    checkboxes: list[tuple[str, str]] = field(default_factory=list)
    buttons: list[tuple[str, str]] = field(default_factory=list)


class FormParser(HTMLParser):
    """Collects every form with its hidden fields, checkboxes and submit buttons."""

    def __init__(self) -> None:
        super().__init__()
        self.forms: list[Form] = []
        self._current: Form | None = None

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        a = {k: v or "" for k, v in attrs}
        if tag == "form":
            self._current = Form(action=a.get("action", ""), method=a.get("method", "get").lower())
            self.forms.append(self._current)
            return
        if self._current is None or "name" not in a:
            return
        kind = a.get("type", "text" if tag == "input" else "submit").lower()
        if tag == "input" and kind == "checkbox":
            self._current.checkboxes.append((a["name"], a.get("value", "on")))
        elif kind == "submit":
            self._current.buttons.append((a["name"], a.get("value", "")))
        elif tag == "input":
            self._current.fields.append((a["name"], a.get("value", "")))

    def handle_endtag(self, tag: str) -> None:
        if tag == "form":
            self._current = None


class HankoEmulator:
    """Signs a person in the way Hanko would, through the emulator's admin API."""

    def __init__(self, base: str) -> None:
        self.base = base.rstrip("/")

    async def create_user(self, email: str) -> str:
        async with httpx2.AsyncClient() as c:
            r = await c.post(
                f"{self.base}/admin/users",
                json={"emails": [{"address": email, "is_primary": True, "is_verified": True}]},
            )
        check(r.status_code in (200, 201), f"emulator created user {email} (HTTP {r.status_code})")
        return r.json()["id"]

    async def create_session(self, user_id: str) -> str:
        async with httpx2.AsyncClient() as c:
            r = await c.post(f"{self.base}/admin/sessions", json={"user_id": user_id})
        check(r.status_code in (200, 201), f"emulator created a session (HTTP {r.status_code})")
        return r.json()["session_token"]


class Person:
    """A browser-like HTTP client holding the user's `hanko` cookie."""

    def __init__(self, inkan: str) -> None:
        self.inkan = inkan.rstrip("/")
        self.origin = "{0.scheme}://{0.netloc}".format(urlsplit(self.inkan))
        self.http = httpx2.AsyncClient(follow_redirects=False, timeout=30)
        self.authorizations = 0

    def sign_in(self, session_jwt: str) -> None:
        # Host-only, as the browser SDK writes it, so inkan's expiring Set-Cookie replaces it.
        self.http.cookies.set("hanko", session_jwt, domain=urlsplit(self.inkan).hostname or "", path="/")

    async def approve(self, authorize_url: str) -> AuthorizationCodeResult:
        """Opens the authorization URL and approves every offered service."""
        url = authorize_url
        for _ in range(5):
            r = await self.http.get(url)
            if r.status_code in (301, 302, 303, 307, 308):
                location = urljoin(url, r.headers["location"])
                if location.startswith(REDIRECT_URI):
                    return self._callback(location)
                if urlsplit(location).path.startswith("/login"):
                    raise SignedOut(f"authorize redirected to the login page {location}")
                url = location
                continue
            if r.status_code != 200:
                raise CheckFailed(f"GET {url} answered HTTP {r.status_code}: {r.text[:300]}")
            break
        parser = FormParser()
        parser.feed(r.text)
        consent = [f for f in parser.forms if any(n == "decision" for n, _ in f.buttons)]
        if not consent:
            raise SignedOut(f"{urlsplit(url).path} shows no consent form (login page?)")
        form = consent[0]
        check(
            ("decision", "approve") in form.buttons,
            "consent page offers decision=approve",
        )
        services = [(n, v) for n, v in form.checkboxes if n == "service"]
        check(bool(services), f"consent page lists services {[v for _, v in services]}")
        body = form.fields + services + [("decision", "approve")]
        action = urljoin(str(r.url), form.action or str(r.url))
        posted = await self.http.post(
            action,
            content=urlencode(body),
            headers={
                "Content-Type": "application/x-www-form-urlencoded",
                "Origin": self.origin,
                "Referer": str(r.url),
            },
        )
        check(
            posted.status_code in (302, 303),
            f"consent approval redirects (HTTP {posted.status_code})",
        )
        location = urljoin(action, posted.headers["location"])
        check(location.startswith(REDIRECT_URI), "approval redirects to the client's redirect URI")
        return self._callback(location)

    def _callback(self, location: str) -> AuthorizationCodeResult:
        q = {k: v[0] for k, v in parse_qs(urlsplit(location).query).items()}
        check("code" in q, "redirect carries an authorization code")
        check(q.get("iss") == self.inkan, "redirect carries iss = inkan's issuer (RFC 9207)")
        self.authorizations += 1
        return AuthorizationCodeResult(code=q["code"], state=q.get("state"), iss=q.get("iss"))

    async def logout(self, refresh_token: str | None, client_id: str | None) -> str:
        r = await self.http.post(f"{self.inkan}/logout", headers={"Origin": self.origin})
        if r.status_code in (404, 405):
            # The revocation work has not landed: revoke the grant through RFC 7009.
            r = await self.http.post(
                f"{self.inkan}/oauth/revoke",
                data={"token": refresh_token or "", "token_type_hint": "refresh_token", "client_id": client_id or ""},
            )
            check(r.status_code == 200, f"POST /oauth/revoke of the refresh token (HTTP {r.status_code})")
            return "revoked via /oauth/revoke (POST /logout missing)"
        check(r.status_code == 200, f"POST /logout with the session cookie (HTTP {r.status_code})")
        revoked = r.json().get("revoked_grants", 0)
        check(revoked >= 1, f"logout revoked the user's grants ({revoked})")
        check(self.http.cookies.get("hanko") is None, "logout cleared the hanko cookie")
        return "logged out via POST /logout"

    def sign_out(self) -> None:
        """What the browser is left with after logging out: no session cookie."""
        self.http.cookies.clear()


class MemoryStorage:
    """The SDK's TokenStorage, counting writes so the test can see refreshes."""

    def __init__(self) -> None:
        self.tokens: OAuthToken | None = None
        self.client_info: OAuthClientInformationFull | None = None
        self.token_writes = 0

    async def get_tokens(self) -> OAuthToken | None:
        return self.tokens

    async def set_tokens(self, tokens: OAuthToken) -> None:
        self.tokens = tokens
        self.token_writes += 1

    async def get_client_info(self) -> OAuthClientInformationFull | None:
        return self.client_info

    async def set_client_info(self, client_info: OAuthClientInformationFull) -> None:
        self.client_info = client_info


class Traffic:
    """Every HTTP exchange the SDK made, as (method, path, status)."""

    def __init__(self) -> None:
        self.log: list[tuple[str, str, int]] = []

    async def on_response(self, response: httpx2.Response) -> None:
        self.log.append((response.request.method, response.request.url.path, response.status_code))

    def mark(self) -> int:
        return len(self.log)

    def since(self, mark: int) -> list[tuple[str, str, int]]:
        return self.log[mark:]


def tool_text(result: Any) -> str:
    return "".join(c.get("text", "") for c in result.model_dump(mode="json")["content"])


def check_identity(whoami: str, user_id: str, email: str, when: str) -> None:
    claims = json.loads(whoami)
    check(
        claims.get("sub") == user_id and claims.get("email") == email,
        f"whoami {when} names the user (sub {claims.get('sub')}, email {claims.get('email')})",
    )


async def mcp_round(
    url: str,
    provider: OAuthClientProvider,
    traffic: Traffic,
    calls: list[tuple[str, dict[str, Any]]],
) -> list[str]:
    """One connection: initialize, list tools, then the given tool calls."""
    http = httpx2.AsyncClient(
        auth=provider,
        timeout=httpx2.Timeout(30, read=60),
        event_hooks={"response": [traffic.on_response]},
    )
    async with http, streamable_http_client(url, http_client=http) as (read, write):
        async with ClientSession(read, write) as session:
            await asyncio.wait_for(session.initialize(), 60)
            tools = await asyncio.wait_for(session.list_tools(), 30)
            names = {t.name for t in tools.tools}
            check({"whoami", "echo"} <= names, f"tools/list has whoami and echo ({sorted(names)})")
            out = []
            for name, args in calls:
                result = await asyncio.wait_for(session.call_tool(name, args), 30)
                check(not result.is_error, f"tools/call {name} succeeded")
                out.append(tool_text(result))
            return out


async def run(args: argparse.Namespace) -> None:
    inkan = args.inkan.rstrip("/")
    url = f"{inkan}/mcp/{args.service}"
    hanko = HankoEmulator(args.hanko)
    person = Person(inkan)
    email = f"py-{secrets.token_hex(4)}@example.com"
    user_id = await hanko.create_user(email)
    person.sign_in(await hanko.create_session(user_id))

    approved: list[AuthorizationCodeResult] = []

    async def redirect_handler(authorization_url: str) -> None:
        q = parse_qs(urlsplit(authorization_url).query)
        check(q.get("code_challenge_method") == ["S256"], "authorization request uses PKCE S256")
        check(q.get("resource") == [url], f"authorization request names resource {url}")
        approved.append(await person.approve(authorization_url))

    async def callback_handler() -> AuthorizationCodeResult:
        return approved.pop()

    storage = MemoryStorage()
    provider = OAuthClientProvider(
        server_url=url,
        client_metadata=OAuthClientMetadata(
            client_name="inkan e2e (Python SDK)",
            redirect_uris=[REDIRECT_URI],
            grant_types=["authorization_code", "refresh_token"],
            response_types=["code"],
            token_endpoint_auth_method="none",
        ),
        storage=storage,
        redirect_handler=redirect_handler,
        callback_handler=callback_handler,
    )
    traffic = Traffic()

    # 1. Discovery, registration, consent, exchange, tool calls.
    whoami, echo = await mcp_round(url, provider, traffic, [("whoami", {}), ("echo", {"text": "hello inkan"})])
    flow = [(m, p, s) for m, p, s in traffic.log if not p.startswith("/mcp/")]
    paths = [p for _, p, _ in flow]
    check(traffic.log[0][2] == 401, "first MCP request without a token got 401")
    check(
        any(p.startswith("/.well-known/oauth-protected-resource") for p in paths),
        "SDK read protected resource metadata",
    )
    check(
        any(p.startswith("/.well-known/oauth-authorization-server") or p.startswith("/.well-known/openid-configuration") for p in paths),
        "SDK read authorization server metadata",
    )
    check(("POST", "/oauth/register", 201) in flow, "SDK registered with DCR (201)")
    check(("POST", "/oauth/token", 200) in flow, "SDK exchanged the code (200)")
    check_identity(whoami, user_id, email, "after sign-in")
    check("hello inkan" in echo, "echo returns its input")
    check(storage.tokens is not None and bool(storage.tokens.refresh_token), "token response has a refresh token")
    assert storage.tokens is not None
    first_access = storage.tokens.access_token
    first_refresh = storage.tokens.refresh_token

    # 2. Past the access-token lifetime the SDK refreshes on its own.
    await asyncio.sleep(args.access_ttl + 1.5)
    mark = traffic.mark()
    (whoami,) = await mcp_round(url, provider, traffic, [("whoami", {})])
    check(("POST", "/oauth/token", 200) in traffic.since(mark), "SDK refreshed the expired access token")
    check(storage.tokens.access_token != first_access, "refresh issued a new access token")
    check(storage.tokens.refresh_token != first_refresh, "refresh rotated the refresh token")
    check(person.authorizations == 1, "refresh needed no new consent")
    check_identity(whoami, user_id, email, "after refresh")

    # 3. Logout revokes: the held access token is refused with 401.
    how = await person.logout(storage.tokens.refresh_token, storage.client_info.client_id if storage.client_info else None)
    print(f"# {how}", flush=True)
    person.sign_out()
    async with httpx2.AsyncClient() as raw:
        r = await raw.post(
            url,
            headers={
                "Authorization": f"Bearer {storage.tokens.access_token}",
                "Accept": "application/json, text/event-stream",
                "Content-Type": "application/json",
            },
            json={"jsonrpc": "2.0", "id": 1, "method": "tools/list"},
        )
        check(r.status_code == 401, f"revoked access token gets 401 (HTTP {r.status_code})")
        check("invalid_token" in r.headers.get("www-authenticate", ""), "401 challenge says invalid_token")
        r = await raw.post(
            f"{inkan}/oauth/token",
            data={
                "grant_type": "refresh_token",
                "refresh_token": storage.tokens.refresh_token or "",
                "client_id": storage.client_info.client_id if storage.client_info else "",
            },
        )
        check(r.status_code == 400 and r.json().get("error") == "invalid_grant", "revoked refresh token gets invalid_grant")
    mark = traffic.mark()
    try:
        await mcp_round(url, provider, traffic, [("whoami", {})])
        raise CheckFailed("a call after logout succeeded")
    except CheckFailed:
        raise
    except BaseException as e:  # the SDK surfaces the failed re-authorization in a task group
        check(True, f"the SDK call after logout failed ({type(e).__name__})")
    mcp_statuses = [s for _, p, s in traffic.since(mark) if p.startswith("/mcp/")]
    check(401 in mcp_statuses, f"the MCP endpoint answered 401 after logout ({mcp_statuses})")

    # 4. Sign in anew: a new consent, and everything works again.
    person.sign_in(await hanko.create_session(user_id))
    (whoami,) = await mcp_round(url, provider, traffic, [("whoami", {})])
    check(person.authorizations == 2, "signing in again went through consent once more")
    check_identity(whoami, user_id, email, "after signing in again")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--inkan", required=True)
    ap.add_argument("--hanko", required=True)
    ap.add_argument("--service", default="demo")
    ap.add_argument("--access-ttl", type=float, default=5.0)
    args = ap.parse_args()
    try:
        asyncio.run(run(args))
    except (CheckFailed, SignedOut) as e:
        print(f"not ok - {e}", flush=True)
        return 1
    print("python client: all checks passed", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
