// A rollout held up by a lock, followed live on its page:
// 1. the rollouts list shows it running; its page says the canary waits on
//    the controller's lock because the release replaces that block
//    (update_restart), with the progress bars and device statuses;
// 2. pause and resume with the page's buttons (actor and reason given);
// 3. the Rust test lets the canary's controller go: without any reload the
//    page shows the canary done and the next batch held up by the other two
//    controllers; then it lets those go, and the page follows the rollout to
//    completed and stops listening.
import { base, step, shot, expect, until, text, run } from './lib.mjs';

await run(async (page) => {
  const { rollout } = await step('ready');

  // 1. The list, then the rollout's page through its link.
  await page.goto(`${base}/rollouts`);
  const row = `#rollouts tr[data-rollout="${rollout}"]`;
  await until('the rollout listed as running', async () =>
    (await text(`${row} .state`)) === 'running');
  const target = await text(`${row} .target`);
  expect(target === 'release r3', `the list should say release r3, says ${target}`);
  await shot('rollouts-list');
  await page.click(`${row} a[href="/rollouts/${rollout}"]`);
  await page.waitForURL(`${base}/rollouts/${rollout}`);

  const wait = '#waits tr[data-block="controller"][data-reason="update_restart"]';
  await until('the canary held up by the controller for update_restart', async () =>
    (await text(`${wait} .devices`)) === '1');
  const why = await text(`${wait} .reason-text`);
  expect(why && why.includes('replaces this block'), `the reason in words, not ${why}`);
  expect((await text('#state')) === 'running', 'the state shows running');
  const title = await text('#title');
  expect(title.includes('release r3'), `the header names the target, says ${title}`);
  const bar = async (sel, k) => page.getAttribute(`${sel} .bar`, `data-${k}`);
  expect(await bar('#overall', 'in_flight') === '1' && await bar('#overall', 'queued') === '2',
    'overall: one in flight, two queued');
  expect(await bar('#batches tr[data-batch="0"]', 'in_flight') === '1', 'the canary batch is in flight');
  expect((await text('#statuses tr[data-status="waiting_lock"] .num')) === '1', 'one device waiting_lock');
  await until('the live stream to be connected', async () =>
    (await page.getAttribute('#live', 'data-state')) === 'live');
  await shot('rollout-held-by-controller');
  await page.evaluate(() => { window.__sameDocument = true; });

  // 2. Pause and resume from the page.
  expect(await page.isDisabled('#resume'), 'resume is disabled while running');
  await page.fill('#actor', 'ops@site');
  await page.fill('#reason', 'site visit first');
  await page.click('#pause');
  await until('the rollout shown paused', async () => (await text('#state')) === 'paused');
  await until('the reason shown', async () => ((await text('#message')) || '').includes('site visit first'));
  expect(await page.isDisabled('#pause'), 'pause is disabled while paused');
  expect(!(await page.isDisabled('#resume')), 'resume is enabled while paused');
  await shot('rollout-paused');
  await step('paused');
  await page.fill('#reason', 'visit done');
  await page.click('#resume');
  await until('the rollout shown running again', async () => (await text('#state')) === 'running');
  await step('resumed');

  // 3. Progress, live.
  const before = Number(await page.getAttribute('body', 'data-live-events') || 0);
  await step('release-canary');
  await until('the next batch held up by the other two controllers', async () =>
    (await text(`${wait} .devices`)) === '2');
  expect(await bar('#batches tr[data-batch="0"]', 'succeeded') === '1', 'the canary succeeded');
  expect(await bar('#batches tr[data-batch="1"]', 'in_flight') === '2', 'batch 2 in flight');
  await shot('rollout-next-batch-held');
  await step('release-rest');
  await until('the rollout shown completed', async () => (await text('#state')) === 'completed');
  await until('all three shown succeeded', async () =>
    (await bar('#overall', 'succeeded')) === '3');
  const overall = await text('#overall-text');
  expect(overall === '3 of 3 succeeded', `overall progress says ${overall}`);
  expect(!(await page.$('#waits tr[data-block]')), 'nothing holds devices up any more');
  await until('the stream closed after the final status', async () =>
    (await page.getAttribute('#live', 'data-state')) === 'ended');
  for (const b of ['#pause', '#resume', '#abort']) {
    expect(await page.isDisabled(b), `${b} is disabled once completed`);
  }
  expect(await page.evaluate(() => window.__sameDocument === true), 'the page was reloaded');
  const after = Number(await page.getAttribute('body', 'data-live-events') || 0);
  expect(after > before, `live statuses should have arrived (${before} -> ${after})`);
  await shot('rollout-completed');
  await step('done');
});
