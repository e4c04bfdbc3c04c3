// A person in a real browser (Debian's Chromium driven by playwright-core):
// dev sign-in on inkan's login page, consent, the account page, and revoking
// the app there. Screenshots of each page go to --screenshots DIR.
//
// Usage: node browser.mjs --inkan URL --hanko URL --screenshots DIR [--service ID]

import { createHash, randomBytes } from 'node:crypto';
import { mkdirSync, mkdtempSync, rmSync } from 'node:fs';
import { createServer } from 'node:http';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { chromium } from 'playwright-core';
import { check, expectRefreshRefused, parseArgs, randomEmail, rawMcp, runMain } from './lib.mjs';

const CHROMIUM = '/usr/bin/chromium';
const CLIENT_NAME = 'inkan e2e browser app';

const b64url = (buf) => buf.toString('base64url');

runMain('browser', async () => {
  const args = parseArgs(process.argv.slice(2));
  const shots = args.screenshots ?? 'target/e2e-screenshots';
  mkdirSync(shots, { recursive: true });
  const resource = `${args.inkan}/mcp/${args.service}`;

  // The app's loopback listener, as a native app has one: it receives the redirect.
  let callback;
  const listener = createServer((req, res) => {
    const url = new URL(req.url, 'http://127.0.0.1');
    // Chromium also asks for /favicon.ico.
    if (url.pathname === '/callback') callback = url;
    res.writeHead(200, { 'content-type': 'text/html' }).end('<h1>Back in the app</h1>');
  });
  await new Promise((r) => listener.listen(0, '127.0.0.1', r));
  const REDIRECT_URI = `http://127.0.0.1:${listener.address().port}/callback`;
  const email = randomEmail('browser');

  const reg = await fetch(`${args.inkan}/oauth/register`, {
    method: 'POST',
    headers: { 'content-type': 'application/json' },
    body: JSON.stringify({
      client_name: CLIENT_NAME,
      redirect_uris: [REDIRECT_URI],
      grant_types: ['authorization_code', 'refresh_token'],
      response_types: ['code'],
      token_endpoint_auth_method: 'none',
    }),
  });
  check(reg.status === 201, `registered a client (HTTP ${reg.status})`);
  const { client_id: clientId } = await reg.json();

  const verifier = b64url(randomBytes(32));
  const state = b64url(randomBytes(16));
  const authorize = new URL(`${args.inkan}/oauth/authorize`);
  authorize.search = new URLSearchParams({
    response_type: 'code',
    client_id: clientId,
    redirect_uri: REDIRECT_URI,
    state,
    code_challenge: b64url(createHash('sha256').update(verifier).digest()),
    code_challenge_method: 'S256',
    resource,
  }).toString();

  const profile = mkdtempSync(join(tmpdir(), 'inkan-e2e-chromium-'));
  const context = await chromium.launchPersistentContext(profile, {
    executablePath: CHROMIUM,
    headless: true,
    args: [
      '--headless',
      '--no-sandbox',
      '--disable-gpu',
      '--disable-quic',
      '--no-first-run',
      '--disable-background-networking',
      '--disable-component-update',
      '--disable-sync',
    ],
  });
  try {
    const page = context.pages()[0] ?? (await context.newPage());
    page.setDefaultTimeout(15_000);

    // Not signed in: the authorization request lands on the login page.
    await page.goto(authorize.href);
    check(new URL(page.url()).pathname.startsWith('/login'), `authorize without a session shows the login page (${page.url()})`);
    await page.screenshot({ path: join(shots, '1-login.png'), fullPage: true });
    const emailInput = page.locator('input[type=email], input[name=email]').first();
    check((await emailInput.count()) === 1, 'login page offers the dev sign-in email form');
    await emailInput.fill(email);
    await emailInput.press('Enter');

    // Signed in: back at the authorization request, consent names the client and offers the service.
    const approve = page.locator('button[name=decision][value=approve], input[name=decision][value=approve]');
    await approve.waitFor();
    check(new URL(page.url()).pathname.startsWith('/oauth/authorize'), `sign-in returned to the authorization request (${page.url()})`);
    const consentText = await page.locator('body').innerText();
    check(consentText.includes(CLIENT_NAME), 'consent page names the client');
    check(consentText.includes('127.0.0.1'), 'consent page shows the redirect host');
    const services = page.locator('input[type=checkbox][name=service]');
    check((await services.count()) > 0, 'consent page has a service checkbox');
    check(await services.first().isChecked(), 'the requested service is preselected');
    await page.screenshot({ path: join(shots, '2-consent.png'), fullPage: true });
    await Promise.all([page.waitForURL(`${REDIRECT_URI}**`), approve.click()]);
    check(callback?.searchParams.get('state') === state, 'redirect returns the state');
    check(callback?.searchParams.get('iss') === args.inkan, 'redirect carries iss (RFC 9207)');
    const code = callback.searchParams.get('code');
    check(Boolean(code), 'redirect carries a code');

    const tok = await fetch(`${args.inkan}/oauth/token`, {
      method: 'POST',
      headers: { 'content-type': 'application/x-www-form-urlencoded' },
      body: new URLSearchParams({
        grant_type: 'authorization_code',
        code,
        redirect_uri: REDIRECT_URI,
        client_id: clientId,
        code_verifier: verifier,
        resource,
      }),
    });
    check(tok.status === 200, `code exchanged for tokens (HTTP ${tok.status})`);
    const tokens = await tok.json();
    let r = await rawMcp(resource, tokens.access_token);
    check(r.status === 200, `the access token opens an MCP session (HTTP ${r.status})`);
    await r.body?.cancel();

    // The account page lists the app; revoking it ends its tokens at once.
    await page.goto(`${args.inkan}/account`);
    const accountText = await page.locator('body').innerText();
    check(accountText.includes(CLIENT_NAME), 'account page lists the app');
    await page.screenshot({ path: join(shots, '3-account.png'), fullPage: true });
    const row = page.locator('tr', { hasText: CLIENT_NAME });
    check((await row.count()) === 1, 'the app has one row on the account page');
    const revokeButton = row.locator('form[action$="/account/revoke"] button, form[action$="/account/revoke"] input[type=submit]');
    await Promise.all([page.waitForNavigation(), revokeButton.click()]);
    check(new URL(page.url()).pathname.startsWith('/account'), `revoking returns to the account page (${page.url()})`);
    const afterText = await page.locator('body').innerText();
    check(!afterText.includes(CLIENT_NAME), 'the app is gone from the account page');
    await page.screenshot({ path: join(shots, '4-revoked.png'), fullPage: true });

    r = await rawMcp(resource, tokens.access_token);
    check(r.status === 401, `the revoked app's access token gets 401 (HTTP ${r.status})`);
    await expectRefreshRefused(args.inkan, tokens.refresh_token, clientId);

    // "Sign out everywhere" ends the session: the account page needs a new sign-in.
    const signOut = page.locator('form[action$="/logout"] button, form[action$="/logout"] input[type=submit]').first();
    await Promise.all([page.waitForNavigation(), signOut.click()]);
    check(new URL(page.url()).pathname.startsWith('/login'), `sign-out lands on the login page (${page.url()})`);
    await page.screenshot({ path: join(shots, '5-signed-out.png'), fullPage: true });
    await page.goto(`${args.inkan}/account`);
    check(new URL(page.url()).pathname.startsWith('/login'), 'after sign-out the account page asks to sign in');
  } finally {
    await context.close();
    listener.close();
    rmSync(profile, { recursive: true, force: true });
  }
});
