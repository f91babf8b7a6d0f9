// Shared by the dashboard's browser scenarios (run by tests/dashboard.rs as
// `node tests/browser/<script>.mjs <url> <screenshot-dir>`, with the API
// token to log in with in LOCKSTEP_TOKEN): launches Debian's headless
// Chromium through playwright-core, logs in on the login page, takes
// screenshots, and talks to the Rust test that drives the world around the
// page.
//
// Protocol on stdout/stdin, one line each:
//   STEP <name> <json>  the script waits; the Rust test acts, then answers
//                 with one line of JSON (data for the next step, or {}).
//   SHOT <path>   a screenshot was written.
//   OK            the scenario passed (the exit status says so too).
// Anything else on stdout is a log line. A failed expectation exits 1 with
// the reason on stderr and a screenshot of the page at that moment.

import { chromium } from 'playwright-core';
import { mkdirSync } from 'node:fs';
import { join } from 'node:path';
import { createInterface } from 'node:readline';

export const CHROMIUM = '/usr/bin/chromium';

const [, , baseArg, shotDirArg] = process.argv;
if (!baseArg || !shotDirArg) {
  console.error('usage: node <script>.mjs <dashboard-url> <screenshot-dir>');
  process.exit(2);
}
/** The dashboard's base URL, without a trailing slash. */
export const base = baseArg.replace(/\/+$/, '');
export const shotDir = shotDirArg;
mkdirSync(shotDir, { recursive: true });

const stdinLines = createInterface({ input: process.stdin })[Symbol.asyncIterator]();

/**
 * Tells the Rust test we reached `name` (with `data`, JSON) and waits for
 * its JSON answer.
 */
export async function step(name, data = {}) {
  process.stdout.write(`STEP ${name} ${JSON.stringify(data)}\n`);
  const { value, done } = await stdinLines.next();
  if (done) throw new Error(`the test closed stdin before answering step ${name}`);
  return JSON.parse(value);
}

let page = null;

/** Saves a full-page screenshot as `<shotDir>/<name>.png`. */
export async function shot(name) {
  const path = join(shotDir, `${name}.png`);
  await page.screenshot({ path, fullPage: true });
  process.stdout.write(`SHOT ${path}\n`);
  return path;
}

/** Fails the scenario with `message` unless `cond` holds. */
export function expect(cond, message) {
  if (!cond) throw new Error(message);
}

/**
 * Waits (at most `ms`) until `fn(page)` returns a truthy value, and returns
 * it; fails with `what` and the last value seen otherwise. Polls the page,
 * never reloads it.
 */
export async function until(what, fn, ms = 30000) {
  const deadline = Date.now() + ms;
  let last;
  for (;;) {
    try {
      last = await fn(page);
      if (last) return last;
    } catch (e) {
      last = e.message;
    }
    if (Date.now() > deadline) {
      throw new Error(`timed out after ${ms} ms waiting for ${what} (last: ${JSON.stringify(last)})`);
    }
    await new Promise((r) => setTimeout(r, 100));
  }
}

/** The trimmed text of the first element matching `selector`, or null. */
export async function text(selector) {
  const el = await page.$(selector);
  return el ? (await el.textContent()).replace(/\s+/g, ' ').trim() : null;
}

/**
 * Logs in as a person would: the login page, the token pasted, back on the
 * fleet page.
 */
async function login() {
  const token = process.env.LOCKSTEP_TOKEN;
  expect(token, 'LOCKSTEP_TOKEN (the token to log in with) is not set');
  await page.goto(`${base}/`);
  await page.waitForURL(/\/login\?next=/);
  await page.fill('#token', token);
  await page.click('#login button[type="submit"]');
  await page.waitForURL(`${base}/`);
  const who = await text('#who');
  expect(who && who.includes('admin'), `the header shows who is logged in, shows ${who}`);
}

/**
 * Runs `scenario(page)` in a fresh headless Chromium with a throwaway
 * profile, logged in, and exits 0 on success or 1 with the reason.
 */
export async function run(scenario) {
  let browser;
  let code = 0;
  try {
    browser = await chromium.launch({
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
    const context = await browser.newContext({ viewport: { width: 1280, height: 900 } });
    page = await context.newPage();
    const problems = [];
    page.on('pageerror', (e) => problems.push(`page error: ${e.message}`));
    page.on('console', (m) => {
      if (m.type() === 'error') problems.push(`console error: ${m.text()}`);
    });
    await login();
    await scenario(page);
    expect(problems.length === 0, `the page reported errors:\n${problems.join('\n')}`);
    process.stdout.write('OK\n');
  } catch (e) {
    code = 1;
    console.error(`FAILED: ${e.stack || e.message || e}`);
    if (page) {
      try {
        await shot('failure');
      } catch (_) {
        // The page may be gone; the reason above is what matters.
      }
    }
  } finally {
    if (browser) await browser.close().catch(() => {});
  }
  process.exit(code);
}
