// Customer approval on the approvals page:
// 1. an OS update waits for approval; the customer declines it with a
//    message, and the page shows the operation cancelled;
// 2. a second one appears live (no reload); the customer approves the next
//    window occurrence, and the page shows the operation scheduled.
// The Rust test checks each outcome through the API between the steps.
import { base, step, shot, expect, until, text, run } from './lib.mjs';

await run(async (page) => {
  let { operation } = await step('ready');
  await page.goto(`${base}/approvals`);
  await page.fill('#actor', 'customer@site');

  // 1. Decline with a message.
  const first = `#pending article[data-operation="${operation}"]`;
  await until('the pending approval', async () => page.$(`${first} button.approve`));
  const candidates = await page.$$(`${first} button.approve`);
  expect(candidates.length >= 1, 'at least one window occurrence to choose from');
  await until('the live stream to be connected', async () =>
    (await page.getAttribute('#live', 'data-state')) === 'live');
  await shot('approvals-pending-first');
  await page.fill(`${first} textarea[name="message"]`, 'harvest week');
  await page.click(`${first} button.decline-button`);
  const declined = `#decided tr[data-operation="${operation}"]`;
  await until('the decision listed as declined', async () =>
    (await text(`${declined} .decision`)) === 'declined');
  await until('the operation shown cancelled', async () =>
    (await text(`${declined} .operation .badge`)) === 'cancelled');
  expect(!(await page.$(first)), 'a declined approval leaves the pending list');
  expect((await text(declined)).includes('harvest week'), 'the message is shown');
  await shot('approvals-declined');

  // 2. A new request appears without a reload; approve the next window.
  await page.evaluate(() => { window.__sameDocument = true; });
  ({ operation } = await step('declined'));
  const second = `#pending article[data-operation="${operation}"]`;
  await until('the new request to appear live', async () => page.$(`${second} button.approve`));
  expect(await page.evaluate(() => window.__sameDocument === true), 'the page was reloaded');
  const start = await page.getAttribute(`${second} button.approve`, 'data-start');
  await shot('approvals-pending-second');
  await page.click(`${second} button.approve`);
  const approved = `#decided tr[data-operation="${operation}"]`;
  await until('the decision listed as approved', async () =>
    (await text(`${approved} .decision`)) === 'approved');
  const scheduled = ['waiting window', 'waiting lock', 'applying', 'done'];
  const status = await until('the operation shown scheduled', async () => {
    const s = await text(`${approved} .operation .badge`);
    return scheduled.includes(s) ? s : null;
  });
  expect(!(await page.$(second)), 'an approved request leaves the pending list');
  await shot('approvals-approved');
  await step('approved', { start: Number(start), status });
});
