// End-to-end run of the MCP Inspector CLI against a running inkan, with the
// Inspector doing its own OAuth (discovery, DCR, PKCE, loopback callback
// listener, token storage, refresh).
//
// The CLI runs its interactive login without a TTY when MCP_AUTO_OPEN_ENABLED
// is "true": it prints "Please navigate to: <authorization URL>" on stderr,
// tries to open a browser (BROWSER=true makes that a no-op here), and waits on
// its --callback-url listener. This script is the person at the browser: it
// approves consent with the user's Hanko cookie and delivers the redirect to
// that listener. Later runs use the stored tokens (--stored-auth-only).
//
// Usage: node inspector.mjs --inkan URL --hanko URL [--service ID] [--access-ttl SECONDS]

import { spawn } from 'node:child_process';
import { mkdtempSync, rmSync } from 'node:fs';
import { createServer } from 'node:net';
import { tmpdir } from 'node:os';
import { join, dirname } from 'node:path';
import { fileURLToPath } from 'node:url';
import { CheckFailed, HankoEmulator, Person, check, parseArgs, randomEmail, runMain, sleep } from './lib.mjs';

const here = dirname(fileURLToPath(import.meta.url));
// The package's own `mcp-inspector` bin, as `npx @modelcontextprotocol/inspector`
// resolves it from this folder, without npx's registry round trip.
const INSPECTOR = join(here, 'node_modules', '.bin', 'mcp-inspector');

function freePort() {
  return new Promise((resolve, reject) => {
    const s = createServer();
    s.on('error', reject);
    s.listen(0, '127.0.0.1', () => {
      const { port } = s.address();
      s.close(() => resolve(port));
    });
  });
}

runMain('inspector cli', async () => {
  const args = parseArgs(process.argv.slice(2));
  const url = `${args.inkan}/mcp/${args.service}`;
  const callback = `http://127.0.0.1:${await freePort()}/oauth/callback`;
  const hanko = new HankoEmulator(args.hanko);
  const person = new Person(args.inkan, callback);
  const email = randomEmail('inspector');
  const userId = await hanko.createUser(email);
  person.signIn(await hanko.createSession(userId));
  const home = mkdtempSync(join(tmpdir(), 'inkan-e2e-inspector-'));

  // One CLI invocation; answers its login prompt when it shows one.
  function inspector(cliArgs) {
    return new Promise((resolve, reject) => {
      const child = spawn(
        INSPECTOR,
        ['--cli', url, '--transport', 'http', '--callback-url', callback, '--format', 'json', '--connect-timeout', '30000', ...cliArgs],
        {
          env: {
            ...process.env,
            HOME: home,
            MCP_INSPECTOR_SECRET_STORE: 'file',
            MCP_AUTO_OPEN_ENABLED: 'true',
            BROWSER: 'true',
            NO_COLOR: '1',
          },
          stdio: ['ignore', 'pipe', 'pipe'],
        },
      );
      let stdout = '';
      let stderr = '';
      let prompted = false;
      let browser = Promise.resolve();
      const timer = setTimeout(() => child.kill('SIGTERM'), 90_000);
      child.stdout.on('data', (d) => (stdout += d));
      child.stderr.on('data', (d) => {
        stderr += d;
        const m = stderr.match(/Please navigate to: (\S+)/);
        if (m && !prompted) {
          prompted = true;
          browser = (async () => {
            const location = await person.approve(m[1]);
            const r = await fetch(location);
            check(r.ok, `the Inspector's callback listener took the code (HTTP ${r.status})`);
          })();
          browser.catch(() => child.kill('SIGTERM'));
        }
      });
      child.on('error', reject);
      child.on('close', async (code) => {
        clearTimeout(timer);
        try {
          await browser;
        } catch (e) {
          reject(e);
          return;
        }
        resolve({ code, stdout, stderr, prompted });
      });
    });
  }

  function expectOk(run, what) {
    if (run.code !== 0) {
      throw new CheckFailed(`${what}: exit ${run.code}\n--- stdout\n${run.stdout}\n--- stderr\n${run.stderr}`);
    }
    check(true, what);
    return run.stdout;
  }

  try {
    // 1. First run: 401, discovery, DCR, consent in "the browser", exchange, tools/list.
    let run = await inspector(['--method', 'tools/list']);
    const tools = expectOk(run, 'inspector --cli --method tools/list completed its OAuth login');
    check(run.prompted && person.authorizations === 1, 'the Inspector asked the person to authorize once');
    check(tools.includes('"whoami"') && tools.includes('"echo"'), 'tools/list has whoami and echo');

    // 2. Stored tokens, no login.
    run = await inspector(['--stored-auth-only', '--method', 'tools/call', '--tool-name', 'whoami']);
    let out = expectOk(run, 'tools/call whoami with the stored token');
    check(out.includes(email) && out.includes(userId), `whoami names the user (${email}, ${userId})`);
    run = await inspector(['--stored-auth-only', '--method', 'tools/call', '--tool-name', 'echo', '--tool-arg', 'text=hello-inkan']);
    check(expectOk(run, 'tools/call echo').includes('hello-inkan'), 'echo returns its input');

    // 3. Past the access-token lifetime: the stored refresh token gets a new access token.
    await sleep((args.accessTtl + 1.5) * 1000);
    run = await inspector(['--stored-auth-only', '--method', 'tools/call', '--tool-name', 'whoami']);
    out = expectOk(run, 'tools/call whoami after the access token expired (refreshed)');
    check(!run.prompted && person.authorizations === 1, 'refresh needed no new login');
    check(out.includes(userId), 'whoami after refresh still names the user');

    // 4. Logout: stored tokens stop working.
    console.log(`# ${await person.logout(undefined, undefined)}`);
    person.signOut();
    run = await inspector(['--stored-auth-only', '--method', 'tools/call', '--tool-name', 'whoami']);
    check(run.code !== 0, `after logout the stored token is refused (exit ${run.code})`);
    check(/401|auth_required|unauthorized|invalid_grant/i.test(run.stderr + run.stdout), 'the Inspector reports an authorization failure');

    // 5. Sign in anew and log in again.
    person.signIn(await hanko.createSession(userId));
    run = await inspector(['--method', 'tools/call', '--tool-name', 'whoami']);
    out = expectOk(run, 'tools/call whoami after signing in again');
    check(run.prompted && person.authorizations === 2, 'the Inspector logged in once more');
    check(out.includes(userId), 'whoami after signing in again names the user');
  } finally {
    rmSync(home, { recursive: true, force: true });
  }
});
