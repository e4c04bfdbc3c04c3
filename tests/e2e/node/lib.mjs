// Shared by the Node end-to-end clients: checks, the Hanko emulator's admin
// API, and a browser-like HTTP client that approves inkan's consent form.

export class CheckFailed extends Error {}

/** The authorize endpoint showed the login page instead of consent. */
export class SignedOut extends Error {}

export function check(condition, what) {
  if (!condition) throw new CheckFailed(what);
  console.log(`ok - ${what}`);
}

export function parseArgs(argv) {
  const out = { service: 'demo', accessTtl: 5 };
  for (let i = 0; i < argv.length; i += 2) {
    const key = argv[i].replace(/^--/, '').replace(/-([a-z])/g, (_, c) => c.toUpperCase());
    out[key] = argv[i + 1];
  }
  if (!out.inkan || !out.hanko) {
    throw new Error('usage: --inkan URL --hanko URL [--service ID] [--access-ttl SECONDS]');
  }
  out.inkan = out.inkan.replace(/\/$/, '');
  out.hanko = out.hanko.replace(/\/$/, '');
  out.accessTtl = Number(out.accessTtl);
  return out;
}

export const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

export function randomEmail(prefix) {
  return `${prefix}-${Math.random().toString(16).slice(2, 10)}@example.com`;
}

/** Signs a person in the way Hanko would, through the emulator's admin API. */
export class HankoEmulator {
  constructor(base) {
    this.base = base;
  }

  async createUser(email) {
    const r = await fetch(`${this.base}/admin/users`, {
      method: 'POST',
      headers: { 'content-type': 'application/json' },
      body: JSON.stringify({ emails: [{ address: email, is_primary: true, is_verified: true }] }),
    });
    check(r.status === 200 || r.status === 201, `emulator created user ${email} (HTTP ${r.status})`);
    return (await r.json()).id;
  }

  async createSession(userId) {
    const r = await fetch(`${this.base}/admin/sessions`, {
      method: 'POST',
      headers: { 'content-type': 'application/json' },
      body: JSON.stringify({ user_id: userId }),
    });
    check(r.status === 200 || r.status === 201, `emulator created a session (HTTP ${r.status})`);
    return (await r.json()).session_token;
  }
}

function attributes(tag) {
  const attrs = {};
  for (const m of tag.matchAll(/([a-zA-Z_:-]+)(?:\s*=\s*(?:"([^"]*)"|'([^']*)'|([^\s"'>]+)))?/g)) {
    attrs[m[1].toLowerCase()] = decodeEntities(m[2] ?? m[3] ?? m[4] ?? '');
  }
  return attrs;
}

function decodeEntities(s) {
  return s
    .replace(/&#x([0-9a-f]+);/gi, (_, h) => String.fromCodePoint(parseInt(h, 16)))
    .replace(/&#(\d+);/g, (_, d) => String.fromCodePoint(Number(d)))
    .replace(/&quot;/g, '"')
    .replace(/&#39;|&apos;/g, "'")
    .replace(/&lt;/g, '<')
    .replace(/&gt;/g, '>')
    .replace(/&amp;/g, '&');
}

/** Every form in a page: hidden and text fields, checkboxes, submit buttons. */
export function parseForms(html) {
  const forms = [];
  for (const m of html.matchAll(/<form\b([^>]*)>([\s\S]*?)<\/form>/gi)) {
    const a = attributes(m[1].slice(0));
    const form = { action: a.action ?? '', method: (a.method ?? 'get').toLowerCase(), fields: [], checkboxes: [], buttons: [] };
    for (const t of m[2].matchAll(/<(input|button)\b([^>]*)>/gi)) {
      const tag = t[1].toLowerCase();
      const at = attributes(t[2]);
      if (at.name === undefined) continue;
      const type = (at.type ?? (tag === 'input' ? 'text' : 'submit')).toLowerCase();
      if (tag === 'input' && type === 'checkbox') form.checkboxes.push([at.name, at.value ?? 'on']);
      else if (type === 'submit') form.buttons.push([at.name, at.value ?? '']);
      else if (tag === 'input') form.fields.push([at.name, at.value ?? '']);
    }
    forms.push(form);
  }
  return forms;
}

/** A browser-like HTTP client: a cookie jar for one host, redirects by hand. */
export class Person {
  constructor(inkan, redirectUri) {
    this.inkan = inkan;
    this.origin = new URL(inkan).origin;
    this.redirectUri = redirectUri;
    this.cookies = new Map();
    this.authorizations = 0;
  }

  signIn(sessionJwt) {
    this.cookies.set('hanko', sessionJwt);
  }

  /** What the browser is left with after logging out: no session cookie. */
  signOut() {
    this.cookies.clear();
  }

  async request(url, init = {}) {
    const headers = new Headers(init.headers ?? {});
    if (this.cookies.size) {
      headers.set('cookie', [...this.cookies].map(([k, v]) => `${k}=${v}`).join('; '));
    }
    const r = await fetch(url, { ...init, headers, redirect: 'manual' });
    for (const c of r.headers.getSetCookie()) {
      const [pair, ...attrs] = c.split(';');
      const eq = pair.indexOf('=');
      const name = pair.slice(0, eq).trim();
      const value = pair.slice(eq + 1).trim();
      const expired = attrs.some((x) => /^\s*max-age\s*=\s*0\s*$/i.test(x)) || value === '';
      if (expired) this.cookies.delete(name);
      else this.cookies.set(name, value);
    }
    return r;
  }

  /** Opens an authorization URL and approves every offered service; returns the callback URL. */
  async approve(authorizeUrl) {
    let url = authorizeUrl;
    let r;
    for (let hop = 0; ; hop++) {
      r = await this.request(url);
      if (r.status >= 300 && r.status < 400) {
        const location = new URL(r.headers.get('location'), url).href;
        if (location.startsWith(this.redirectUri)) return this.callback(location);
        if (new URL(location).pathname.startsWith('/login')) {
          throw new SignedOut(`authorize redirected to the login page ${location}`);
        }
        if (hop > 5) throw new CheckFailed(`too many redirects from ${authorizeUrl}`);
        url = location;
        continue;
      }
      if (r.status !== 200) throw new CheckFailed(`GET ${url} answered HTTP ${r.status}: ${(await r.text()).slice(0, 300)}`);
      break;
    }
    const forms = parseForms(await r.text());
    const form = forms.find((f) => f.buttons.some(([n]) => n === 'decision'));
    if (!form) throw new SignedOut(`${new URL(url).pathname} shows no consent form (login page?)`);
    check(form.buttons.some(([n, v]) => n === 'decision' && v === 'approve'), 'consent page offers decision=approve');
    const services = form.checkboxes.filter(([n]) => n === 'service');
    check(services.length > 0, `consent page lists services ${JSON.stringify(services.map(([, v]) => v))}`);
    const body = new URLSearchParams([...form.fields, ...services, ['decision', 'approve']]);
    const action = new URL(form.action || url, url).href;
    const posted = await this.request(action, {
      method: 'POST',
      headers: { 'content-type': 'application/x-www-form-urlencoded', origin: this.origin, referer: url },
      body,
    });
    check(posted.status === 302 || posted.status === 303, `consent approval redirects (HTTP ${posted.status})`);
    const location = new URL(posted.headers.get('location'), action).href;
    check(location.startsWith(this.redirectUri), "approval redirects to the client's redirect URI");
    return this.callback(location);
  }

  callback(location) {
    const q = new URL(location).searchParams;
    check(q.has('code'), 'redirect carries an authorization code');
    check(q.get('iss') === this.inkan, "redirect carries iss = inkan's issuer (RFC 9207)");
    this.authorizations += 1;
    return location;
  }

  /** POST /logout; falls back to RFC 7009 revocation when the route is missing. */
  async logout(refreshToken, clientId) {
    let r = await this.request(`${this.inkan}/logout`, { method: 'POST', headers: { origin: this.origin } });
    if (r.status === 404 || r.status === 405) {
      r = await fetch(`${this.inkan}/oauth/revoke`, {
        method: 'POST',
        headers: { 'content-type': 'application/x-www-form-urlencoded' },
        body: new URLSearchParams({ token: refreshToken ?? '', token_type_hint: 'refresh_token', client_id: clientId ?? '' }),
      });
      check(r.status === 200, `POST /oauth/revoke of the refresh token (HTTP ${r.status})`);
      return 'revoked via /oauth/revoke (POST /logout missing)';
    }
    check(r.status === 200, `POST /logout with the session cookie (HTTP ${r.status})`);
    const body = await r.json();
    check(body.revoked_grants >= 1, `logout revoked the user's grants (${body.revoked_grants})`);
    check(!this.cookies.has('hanko'), 'logout cleared the hanko cookie');
    return 'logged out via POST /logout';
  }
}

/** A raw MCP request with a bearer token, outside any SDK. */
export async function rawMcp(url, accessToken) {
  return fetch(url, {
    method: 'POST',
    headers: {
      authorization: `Bearer ${accessToken}`,
      accept: 'application/json, text/event-stream',
      'content-type': 'application/json',
    },
    body: JSON.stringify({
      jsonrpc: '2.0',
      id: 1,
      method: 'initialize',
      params: { protocolVersion: '2025-06-18', capabilities: {}, clientInfo: { name: 'inkan-e2e-raw', version: '0' } },
    }),
  });
}

/** Expects a refresh token to be refused as RFC 6749 invalid_grant. */
export async function expectRefreshRefused(inkan, refreshToken, clientId) {
  const r = await fetch(`${inkan}/oauth/token`, {
    method: 'POST',
    headers: { 'content-type': 'application/x-www-form-urlencoded' },
    body: new URLSearchParams({ grant_type: 'refresh_token', refresh_token: refreshToken ?? '', client_id: clientId ?? '' }),
  });
  const body = await r.json().catch(() => ({}));
  check(r.status === 400 && body.error === 'invalid_grant', `revoked refresh token gets invalid_grant (HTTP ${r.status})`);
}

/** Runs `main`, prints a verdict, sets the exit status. */
export async function runMain(name, main) {
  try {
    await main();
    console.log(`${name}: all checks passed`);
  } catch (e) {
    console.log(`not ok - ${e instanceof CheckFailed || e instanceof SignedOut ? e.message : e.stack ?? e}`);
    process.exitCode = 1;
  }
}
