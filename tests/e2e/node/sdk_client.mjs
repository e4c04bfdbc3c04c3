// End-to-end run of the MCP TypeScript SDK against a running inkan.
//
// The SDK does the OAuth work (401 -> protected resource metadata -> AS
// metadata -> DCR -> PKCE authorization -> exchange -> refresh on 401). This
// script's OAuthClientProvider only plays the person at the browser:
// `redirectToAuthorization` approves the consent form with the user's Hanko
// cookie, and the captured `code` goes to `transport.finishAuth(code)`.
//
// Usage: node sdk_client.mjs --inkan URL --hanko URL [--service ID] [--access-ttl SECONDS]

import { Client } from '@modelcontextprotocol/sdk/client/index.js';
import { StreamableHTTPClientTransport } from '@modelcontextprotocol/sdk/client/streamableHttp.js';
import { UnauthorizedError } from '@modelcontextprotocol/sdk/client/auth.js';
import {
  HankoEmulator,
  Person,
  check,
  expectRefreshRefused,
  parseArgs,
  randomEmail,
  rawMcp,
  runMain,
  sleep,
} from './lib.mjs';

// Nothing listens here: the consent redirect is read from its Location header.
const REDIRECT_URI = 'http://127.0.0.1:53683/callback';

class E2EProvider {
  constructor(person, resource) {
    this.person = person;
    this.resource = resource;
    this._client = undefined;
    this._tokens = undefined;
    this._verifier = undefined;
    this._state = undefined;
    this.code = undefined;
    this.tokenWrites = 0;
  }

  get redirectUrl() {
    return REDIRECT_URI;
  }

  get clientMetadata() {
    return {
      client_name: 'inkan e2e (TypeScript SDK)',
      redirect_uris: [REDIRECT_URI],
      grant_types: ['authorization_code', 'refresh_token'],
      response_types: ['code'],
      token_endpoint_auth_method: 'none',
    };
  }

  state() {
    this._state = crypto.randomUUID();
    return this._state;
  }

  clientInformation() {
    return this._client;
  }

  saveClientInformation(info) {
    this._client = info;
  }

  tokens() {
    return this._tokens;
  }

  saveTokens(tokens) {
    this._tokens = tokens;
    this.tokenWrites += 1;
  }

  saveCodeVerifier(v) {
    this._verifier = v;
  }

  codeVerifier() {
    return this._verifier;
  }

  invalidateCredentials(scope) {
    if (scope === 'all' || scope === 'client') this._client = undefined;
    if (scope === 'all' || scope === 'tokens') this._tokens = undefined;
    if (scope === 'all' || scope === 'verifier') this._verifier = undefined;
  }

  async redirectToAuthorization(authorizationUrl) {
    const q = authorizationUrl.searchParams;
    check(q.get('code_challenge_method') === 'S256', 'authorization request uses PKCE S256');
    check(q.get('resource') === this.resource, `authorization request names resource ${this.resource}`);
    const callback = new URL(await this.person.approve(authorizationUrl.href));
    check(callback.searchParams.get('state') === this._state, 'redirect returns the request state');
    this.code = callback.searchParams.get('code');
  }
}

function traced(log) {
  return async (url, init) => {
    const r = await fetch(url, init);
    log.push([init?.method ?? 'GET', new URL(url).pathname, r.status]);
    return r;
  };
}

runMain('typescript sdk client', async () => {
  const args = parseArgs(process.argv.slice(2));
  const url = `${args.inkan}/mcp/${args.service}`;
  const hanko = new HankoEmulator(args.hanko);
  const person = new Person(args.inkan, REDIRECT_URI);
  const email = randomEmail('ts');
  const userId = await hanko.createUser(email);
  person.signIn(await hanko.createSession(userId));
  const provider = new E2EProvider(person, url);
  const log = [];

  const newClient = () => ({
    client: new Client({ name: 'inkan-e2e-ts', version: '1.0.0' }),
    transport: new StreamableHTTPClientTransport(new URL(url), { authProvider: provider, fetch: traced(log) }),
  });

  // Connects the way an app does: the first attempt ends in the browser,
  // finishAuth swaps the code, and a fresh transport connects with the token.
  async function connect() {
    let { client, transport } = newClient();
    try {
      await client.connect(transport);
      return client;
    } catch (e) {
      if (!(e instanceof UnauthorizedError)) throw e;
    }
    check(provider.code !== undefined, 'the SDK sent the person to the authorization page');
    await transport.finishAuth(provider.code);
    provider.code = undefined;
    ({ client, transport } = newClient());
    await client.connect(transport);
    return client;
  }

  async function whoami(client, when) {
    const r = await client.callTool({ name: 'whoami', arguments: {} });
    check(!r.isError, 'tools/call whoami succeeded');
    const claims = JSON.parse(r.content.map((c) => c.text ?? '').join(''));
    check(claims.sub === userId && claims.email === email, `whoami ${when} names the user (sub ${claims.sub}, email ${claims.email})`);
  }

  // 1. Discovery, registration, consent, exchange, tool calls.
  let client = await connect();
  const flow = log.filter(([, p]) => !p.startsWith('/mcp/'));
  const has = (m, p, s) => flow.some(([a, b, c]) => a === m && b === p && c === s);
  check(log[0][2] === 401, 'first MCP request without a token got 401');
  check(flow.some(([, p]) => p.startsWith('/.well-known/oauth-protected-resource')), 'SDK read protected resource metadata');
  check(
    flow.some(([, p]) => p.startsWith('/.well-known/oauth-authorization-server') || p.startsWith('/.well-known/openid-configuration')),
    'SDK read authorization server metadata',
  );
  check(has('POST', '/oauth/register', 201), 'SDK registered with DCR (201)');
  check(has('POST', '/oauth/token', 200), 'SDK exchanged the code (200)');
  const tools = await client.listTools();
  const names = tools.tools.map((t) => t.name);
  check(names.includes('whoami') && names.includes('echo'), `tools/list has whoami and echo (${names})`);
  await whoami(client, 'after sign-in');
  const echo = await client.callTool({ name: 'echo', arguments: { text: 'hello inkan' } });
  check(!echo.isError && JSON.stringify(echo).includes('hello inkan'), 'echo returns its input');
  check(Boolean(provider.tokens()?.refresh_token), 'token response has a refresh token');
  const first = provider.tokens();

  // 2. Past the access-token lifetime the gateway answers 401 and the SDK refreshes.
  await sleep((args.accessTtl + 1.5) * 1000);
  let mark = log.length;
  await whoami(client, 'after refresh');
  const afterTtl = log.slice(mark);
  check(afterTtl.some(([m, p, s]) => m === 'POST' && p === '/oauth/token' && s === 200), 'SDK refreshed the expired access token');
  check(provider.tokens().access_token !== first.access_token, 'refresh issued a new access token');
  check(provider.tokens().refresh_token !== first.refresh_token, 'refresh rotated the refresh token');
  check(person.authorizations === 1, 'refresh needed no new consent');

  // 3. Logout revokes: the held access token is refused with 401.
  const held = provider.tokens();
  console.log(`# ${await person.logout(held.refresh_token, provider.clientInformation()?.client_id)}`);
  person.signOut();
  const r = await rawMcp(url, held.access_token);
  check(r.status === 401, `revoked access token gets 401 (HTTP ${r.status})`);
  check((r.headers.get('www-authenticate') ?? '').includes('invalid_token'), '401 challenge says invalid_token');
  await expectRefreshRefused(args.inkan, held.refresh_token, provider.clientInformation()?.client_id);
  mark = log.length;
  let failed = false;
  try {
    await whoami(client, 'after logout');
  } catch (e) {
    failed = true;
    check(true, `the SDK call after logout failed (${e.constructor.name}: ${e.message.slice(0, 80)})`);
  }
  check(failed, 'no call succeeds after logout');
  const mcpStatuses = log.slice(mark).filter(([, p]) => p.startsWith('/mcp/')).map(([, , s]) => s);
  check(mcpStatuses.includes(401), `the MCP endpoint answered 401 after logout (${mcpStatuses})`);
  await client.close().catch(() => {});

  // 4. Sign in anew: a new consent, and everything works again.
  person.signIn(await hanko.createSession(userId));
  client = await connect();
  check(person.authorizations === 2, 'signing in again went through consent once more');
  await whoami(client, 'after signing in again');
  await client.close();
});
