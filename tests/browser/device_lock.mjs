// A device waits on a held lock, and the pages show it live:
// 1. the fleet overview counts the device as waiting_lock and says it waits
//    on block a's lock for a reboot;
// 2. its device page shows the wait (block and reason) and the lock held;
// 3. the Rust test releases the lock; without any reload the page follows
//    the live events until the reboot is done and the lock is free.
import { base, step, shot, expect, until, text, run } from './lib.mjs';

await run(async (page) => {
  const { device } = await step('ready');

  // 1. The overview.
  await page.goto(`${base}/`);
  const row = `#devices tr[data-device="${device}"]`;
  await until('the device listed as waiting on a lock', async () =>
    (await text(`${row} .status`)) === 'waiting lock');
  const wait = await text(`${row} .waiting li[data-block="a"]`);
  expect(wait && wait.includes('reboot'), `the overview should say a's lock and reboot, says ${wait}`);
  const count = await text('#fleets tr[data-fleet="site"] td[data-status="waiting_lock"]');
  expect(count === '1', `one device counted waiting_lock, not ${count}`);
  await shot('fleet-overview-waiting');

  // 2. The device page, reached by its link.
  await page.click(`${row} a[href="/devices/${device}"]`);
  await page.waitForURL(`${base}/devices/${device}`);
  await until('the wait on a for reboot', async () =>
    (await text('#operation .wait[data-block="a"] .reason')) === 'reboot');
  const lock = await text('#blocks tr[data-block="a"] .lock');
  expect(lock === 'held', `a's lock should show held, shows ${lock}`);
  expect((await text('#device-status')) === 'waiting lock', 'device status waiting lock');
  const op = await page.getAttribute('#operation', 'data-operation');
  await until('the live stream to be connected', async () =>
    (await page.getAttribute('#live', 'data-state')) === 'live');
  await until('the release request in the timeline', async () =>
    page.$('#timeline tr[data-direction="sent"][data-kind="release_request"]'));
  await shot('device-waiting-on-lock');

  // 3. Released: the same document updates itself from live events.
  await page.evaluate(() => { window.__sameDocument = true; });
  const before = Number(await page.getAttribute('body', 'data-live-events') || 0);
  await step('release-lock');
  await until('the reboot to be done', async () =>
    (await text(`#operations tr[data-operation="${op}"] .badge`)) === 'done');
  await until('no current operation', async () =>
    (await page.getAttribute('#operation', 'data-status')) === '');
  await until("a's lock to show free", async () =>
    (await text('#blocks tr[data-block="a"] .lock')) === 'free');
  await until('the device in sync', async () => (await text('#device-status')) === 'in sync');
  expect(await page.evaluate(() => window.__sameDocument === true), 'the page was reloaded');
  const after = Number(await page.getAttribute('body', 'data-live-events') || 0);
  expect(after > before, `live events should have arrived (${before} -> ${after})`);
  await until('the apply and its answer in the timeline', async () =>
    page.$('#timeline tr[data-direction="acked"][data-kind="applied"]'));
  await shot('device-after-release');
  await step('done');
});
