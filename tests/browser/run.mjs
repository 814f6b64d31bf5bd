#!/usr/bin/env node
// Browser tests of the dashboard: a real `build/pgnd serve` on a free loopback port with a fresh
// state directory, driven through Debian's chromium (headless) by playwright-core.
//
//   node tests/browser/run.mjs            (from the repository root; `make test` runs it)
//
// It submits a tiny train job through the form, watches it reach `succeeded` without a reload,
// opens its curves, gradient-field panels (checking that the images really loaded), comparison and
// artifacts, checks that a bad value gets the server's 422 next to its field, and signs in with
// tokens (a reader sees no write actions; an admin cancels and deletes with confirmation).
// Screenshots and pgnd's logs go to build/browser-artifacts/, the summary line to its summary.txt.
//
// Environment: PGND_CHROMIUM (default /usr/bin/chromium), PGND_BROWSER_TIMEOUT_S (whole run,
// default 170), PGND_DOCS_SCREENSHOTS=1 also writes the README's screenshots into docs/.
import { spawn } from 'node:child_process';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';

const ROOT = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..', '..');
process.chdir(ROOT);
const OUT = path.join('build', 'browser-artifacts');
const CHROMIUM = process.env.PGND_CHROMIUM || '/usr/bin/chromium';
const TIMEOUT_S = Number(process.env.PGND_BROWSER_TIMEOUT_S || (process.env.PGND_DOCS_SCREENSHOTS === '1' ? 400 : 170));
const DOCS = process.env.PGND_DOCS_SCREENSHOTS === '1';
const FIXTURE_IMAGE = path.join(ROOT, 'tests/fixtures/images/pattern_80x72.png');
const FIXTURE_PGN = path.join(ROOT, 'tests/fixtures/pgn_resnet4_v2_legacy.pth');
const JOB_WAIT_MS = 150000;

const t0 = Date.now();
const results = [];
const cleanups = [];
let failures = 0;

fs.mkdirSync(OUT, { recursive: true });
for (const f of fs.readdirSync(OUT)) fs.rmSync(path.join(OUT, f), { recursive: true, force: true });

function log(...a) {
  console.log(...a);
}

async function cleanup() {
  while (cleanups.length) {
    try { await cleanups.pop()(); } catch { /* best effort */ }
  }
}

function writeSummary() {
  const passed = results.filter((r) => r.ok).length;
  const line = `browser tests: ${passed} passed, ${results.length - passed} failed`;
  fs.writeFileSync(path.join(OUT, 'summary.txt'), `${line}\n`);
  return line;
}

// The whole run has a deadline: a hung browser or daemon must not hang `make test`.
const watchdog = setTimeout(async () => {
  console.error(`browser tests: over the ${TIMEOUT_S} s limit, stopping`);
  results.push({ name: 'the whole run finishes in time', ok: false });
  writeSummary();
  await cleanup();
  process.exit(1);
}, TIMEOUT_S * 1000);
watchdog.unref();

// ---- prerequisites ----
function need(cond, msg) {
  if (!cond) {
    console.error(`browser tests: ${msg}`);
    results.push({ name: 'prerequisites', ok: false });
    console.log(writeSummary());
    process.exit(1);
  }
}
need(fs.existsSync('build/pgnd'), 'build/pgnd is missing: run `make` first');
need(fs.existsSync('web/index.html'), 'web/index.html is missing');
need(fs.existsSync('web/vendor/uPlot.iife.min.js'), 'web/vendor/uPlot.iife.min.js is missing: run `make web` (needs `npm ci`)');
need(fs.existsSync(CHROMIUM), `${CHROMIUM} is missing: apt-get install chromium (or set PGND_CHROMIUM)`);
let chromium;
try {
  ({ chromium } = await import('playwright-core'));
} catch (e) {
  need(false, `playwright-core is not installed: run \`npm ci\` (${e.message})`);
}

// ---- pgnd ----
// Starts build/pgnd serve on 127.0.0.1 with a free port and a fresh state directory; resolves
// {port, base, dir, proc} once it listens (it writes the port to --ready-fd).
function startPgnd(name, env = {}, { dir = null, port = 0 } = {}) {
  dir = dir || fs.mkdtempSync(path.join(os.tmpdir(), `pgnd-browser-${name}-`));
  const logPath = path.join(OUT, `pgnd-${name}.log`);
  const logFd = fs.openSync(logPath, 'w');
  const proc = spawn('build/pgnd', ['serve', '--ready-fd', '3'], {
    env: { ...process.env, PGND_STATE_DIR: dir, PGND_LISTEN: `127.0.0.1:${port}`, PGND_WEB_DIR: 'web', PGND_LOG_LEVEL: 'info', ...env },
    stdio: ['ignore', logFd, logFd, 'pipe'],
  });
  cleanups.push(async () => {
    if (proc.exitCode === null) {
      proc.kill('SIGTERM');
      await new Promise((r) => { const t = setTimeout(() => { proc.kill('SIGKILL'); r(); }, 8000); proc.once('exit', () => { clearTimeout(t); r(); }); });
    }
    fs.closeSync(logFd);
    fs.rmSync(dir, { recursive: true, force: true });
  });
  return new Promise((resolve, reject) => {
    let buf = '';
    const timer = setTimeout(() => reject(new Error(`pgnd (${name}) did not start in 20 s; see ${logPath}`)), 20000);
    proc.stdio[3].on('data', (d) => {
      buf += d.toString();
      if (buf.includes('\n')) {
        clearTimeout(timer);
        const port = Number(buf.trim());
        resolve({ port, base: `http://127.0.0.1:${port}`, dir, proc });
      }
    });
    proc.once('exit', (code) => { clearTimeout(timer); reject(new Error(`pgnd (${name}) exited with ${code}; see ${logPath}`)); });
  });
}

async function http(base, pathname, { method = 'GET', body, token, headers = {} } = {}) {
  const h = { ...headers };
  if (body !== undefined) h['Content-Type'] = 'application/json';
  if (token) h.Authorization = `Bearer ${token}`;
  const res = await fetch(base + pathname, { method, headers: h, body: body === undefined ? undefined : JSON.stringify(body) });
  const text = await res.text();
  let json = null;
  try { json = JSON.parse(text); } catch { /* not JSON */ }
  return { status: res.status, headers: res.headers, text, json };
}

// ---- the browser ----
async function launch(name) {
  const dataDir = fs.mkdtempSync(path.join(os.tmpdir(), `pgnd-chromium-${name}-`));
  const ctx = await chromium.launchPersistentContext(dataDir, {
    executablePath: CHROMIUM,
    headless: true,
    viewport: { width: 1280, height: 860 },
    args: ['--no-sandbox', '--disable-gpu', '--disable-background-networking', '--disable-component-update',
      '--no-first-run', '--disable-dev-shm-usage'],
  });
  cleanups.push(async () => {
    await ctx.close();
    fs.rmSync(dataDir, { recursive: true, force: true });
  });
  const page = ctx.pages()[0] || await ctx.newPage();
  page.setDefaultTimeout(20000);
  const errors = [];
  page.on('pageerror', (e) => errors.push(`page error: ${e.message}`));
  page.on('console', (m) => { if (m.type() === 'error') errors.push(`console: ${m.text()}`); });
  return { ctx, page, errors };
}

async function shot(page, name, { full = false } = {}) {
  const file = path.join(OUT, `${name}.png`);
  await page.screenshot({ path: file, fullPage: full });
  return file;
}

// ---- the test list ----
async function test(name, fn, { page } = {}) {
  const start = Date.now();
  try {
    await fn();
    results.push({ name, ok: true });
    log(`ok   ${name} (${((Date.now() - start) / 1000).toFixed(1)} s)`);
  } catch (e) {
    failures++;
    results.push({ name, ok: false });
    log(`FAIL ${name} (${((Date.now() - start) / 1000).toFixed(1)} s)\n     ${String(e && e.stack || e).split('\n').slice(0, 6).join('\n     ')}`);
    if (page) {
      try { await shot(page, `failed-${name.replace(/[^a-z0-9]+/gi, '-').slice(0, 60)}`, { full: true }); } catch { /* no page */ }
    }
  }
}

function assert(cond, msg) {
  if (!cond) throw new Error(msg);
}

// Every <img> matching sel has loaded with a real size.
async function imagesLoaded(page, sel, min = 1) {
  await page.waitForFunction(([s, n]) => {
    const imgs = [...document.querySelectorAll(s)];
    return imgs.length >= n && imgs.every((i) => i.complete && i.naturalWidth > 0 && i.naturalHeight > 0);
  }, [sel, min], { timeout: 20000 });
  return page.$$eval(sel, (imgs) => imgs.map((i) => ({ src: i.getAttribute('src'), w: i.naturalWidth, h: i.naturalHeight })));
}

// =====================================================================================
const srv = await startPgnd('open');
log(`pgnd on ${srv.base} (no tokens: open, admin), state in ${srv.dir}`);
// ---- tokens and roles: a second pgnd that requires a token ----
const tokens = { admin: 'pgnd_browsertestadmin0000000000000000000001', read: 'pgnd_browsertestreader000000000000000000002',
  submit: 'pgnd_browsertestsubmitter00000000000000003' };
const tokenFile = path.join(fs.mkdtempSync(path.join(os.tmpdir(), 'pgnd-tokens-')), 'tokens');
fs.writeFileSync(tokenFile, `alice admin ${tokens.admin}\nrita read ${tokens.read}\nsam submit ${tokens.submit}\n`, { mode: 0o600 });
cleanups.push(async () => fs.rmSync(path.dirname(tokenFile), { recursive: true, force: true }));
let authed = null;
let samJob = null;
try {
  // this pgnd has the inception3 teacher (make test fetches it), the open one a random teacher
  authed = await startPgnd('tokens', { PGND_TOKEN_FILE: tokenFile,
    PGND_TEACHER_WEIGHTS: path.resolve('var/teachers/inception3-nsfwjs-4.4.0') });
  // sam's job, paused at its first step (a paused job uses no CPU; cancelling it is immediate)
  const r = await http(authed.base, '/api/v1/jobs', { method: 'POST', token: tokens.submit,
    body: { type: 'train', params: { image: FIXTURE_IMAGE, size: 64, steps: 2000, arms: ['mse'] } } });
  if (r.status !== 201) throw new Error(`submit as sam: ${r.status} ${r.text}`);
  samJob = r.json.id;
  await http(authed.base, `/api/v1/jobs/${samJob}/pause`, { method: 'POST', token: tokens.submit });
} catch (e) {
  results.push({ name: 'start a pgnd with tokens', ok: false });
  log(`FAIL start a pgnd with tokens: ${e.message}`);
}

const { page, errors } = await launch('open');
let jobId = null;

await test('pgnd serves the dashboard: types, cache headers, no traversal', async () => {
  const idx = await http(srv.base, '/');
  assert(idx.status === 200, `GET / answered ${idx.status}`);
  assert(idx.headers.get('content-type').startsWith('text/html'), `GET / is ${idx.headers.get('content-type')}`);
  assert(/default-src 'self'/.test(idx.headers.get('content-security-policy') || ''), 'no Content-Security-Policy on /');
  assert(idx.headers.get('cache-control') === 'no-cache', `Cache-Control ${idx.headers.get('cache-control')}`);
  const js = await http(srv.base, '/assets/app.js');
  assert(js.status === 200 && js.headers.get('content-type').startsWith('text/javascript'), `app.js: ${js.status} ${js.headers.get('content-type')}`);
  const css = await http(srv.base, '/vendor/uPlot.min.css');
  assert(css.status === 200 && css.headers.get('content-type').startsWith('text/css'), 'uPlot css');
  const etag = css.headers.get('etag');
  const again = await http(srv.base, '/vendor/uPlot.min.css', { headers: { 'If-None-Match': etag } });
  assert(again.status === 304, `If-None-Match answered ${again.status}, not 304`);
  for (const bad of ['/assets/..%2f..%2fMakefile', '/assets/%2e%2e%2fMakefile', '/assets/.hidden.js', '/vendor/..%2findex.html',
    '/assets/app.sh', '/../Makefile', '/%2e%2e/Makefile']) {
    const r = await http(srv.base, bad);
    assert(r.status === 404 && !r.text.includes('CFLAGS'), `${bad} answered ${r.status}`);
  }
  const cur = await http(srv.base, '/api/v1/events/latest');
  assert(cur.status === 200 && Number.isInteger(cur.json.last_event_id), `events/latest: ${cur.text}`);
});

await test('the jobs page opens, with the live event stream connected', async () => {
  await page.goto(`${srv.base}/`);
  await page.waitForSelector('#jobs-table');
  await page.waitForSelector('#live[data-status="live"]');
  await page.waitForSelector('text=No jobs yet.');
  await page.waitForSelector('.banner.warn >> text=Random teacher.');
  await page.evaluate(() => { window.__sameDocument = true; });
}, { page });

await test('a bad value gets the server\'s 422 detail next to its field', async () => {
  await page.click('a[data-nav="new"]');
  await page.click('a.type-card[data-type="train"]');
  await page.waitForSelector('form.job-form[data-type="train"]');
  await page.fill('#f-image', FIXTURE_IMAGE);
  await page.fill('#f-size', '70');
  await page.click('form.job-form button[type="submit"]');
  const problem = page.locator('.field[data-field="size"] .problem');
  await problem.waitFor({ state: 'visible' });
  const text = await problem.textContent();
  assert(/multiple of 32/.test(text), `the size field shows "${text}"`);
  assert(await page.getAttribute('#f-size', 'aria-invalid') === 'true', 'size is not marked invalid');
  const others = await page.$$eval('.field:not([data-field="size"]) .problem:not([hidden])', (e) => e.length);
  assert(others === 0, `${others} other fields show problems`);
  await shot(page, 'new-job-422', { full: true });
}, { page });

await test('a tiny train job submitted through the form reaches succeeded without a reload', async () => {
  await page.fill('#f-size', '64');
  await page.fill('#f-steps', '6');
  await page.check('#f-arms-pgn');
  await page.uncheck('#f-arms-vgg');
  await page.check('#f-arms-mse');
  await page.fill('#f-pgn_checkpoint', FIXTURE_PGN);
  await page.click('details.more-params > summary');
  await page.fill('#f-log_every', '2');
  await page.fill('#f-image_every', '3');
  await page.click('form.job-form button[type="submit"]');
  await page.waitForFunction(() => /^#\/jobs\/\d+$/.test(location.hash));
  jobId = Number((await page.evaluate(() => location.hash)).split('/').pop());
  assert(jobId > 0, 'no job id after submitting');
  // back to the table (a hash change: the same document, no reload) and watch it finish there
  await page.click('a[data-nav="jobs"]');
  const row = `#jobs-table tr[data-job="${jobId}"]`;
  await page.waitForSelector(row);
  await page.waitForSelector(`${row}[data-state="running"], ${row}[data-state="succeeded"]`, { timeout: JOB_WAIT_MS });
  await shot(page, 'jobs-running');
  await page.waitForSelector(`${row}[data-state="succeeded"]`, { timeout: JOB_WAIT_MS });
  assert(await page.evaluate(() => window.__sameDocument === true), 'the page was reloaded');
  const progress = await page.textContent(`${row} .progress .label`);
  assert(/6 \/ 6/.test(progress), `progress shows "${progress}"`);
  await page.waitForFunction((r) => /PSNR/.test(document.querySelector(`${r} td.headline`)?.textContent || ''), row);
  await shot(page, 'jobs');
}, { page });

const jobTab = async (tab) => {
  await page.click(`a.tab[data-tab="${tab}"]`);
  await page.waitForSelector(`a.tab.active[data-tab="${tab}"]`);
};

await test('the job page shows parameters, state history and log', async () => {
  assert(jobId, 'needs the submitted job');
  await page.click(`#jobs-table tr[data-job="${jobId}"] td.num a`);
  await page.waitForSelector('.job-head h1');
  await page.waitForSelector('.history .badge.state-succeeded');
  const states = await page.$$eval('.history .badge', (b) => b.map((x) => x.textContent));
  assert(states.join(',') === 'queued,running,succeeded', `state history ${states.join(',')}`);
  assert(await page.locator('table.params tr.set td', { hasText: 'pgn_checkpoint' }).count() === 1, 'pgn_checkpoint not listed as set');
  assert(await page.locator('.log .line').count() >= 1, 'empty log');
  await shot(page, 'job-overview', { full: true });
}, { page });

await test('curves: uPlot charts of the metrics, log scale and smoothing', async () => {
  assert(jobId, 'needs the submitted job');
  await jobTab('curves');
  await page.waitForSelector('.chart[data-chart="PSNR"] .uplot canvas');
  const legend = await page.textContent('.chart[data-chart="PSNR"] .u-legend');
  assert(legend.includes('pgn.psnr') && legend.includes('mse.psnr'), `PSNR legend: ${legend}`);
  const charts = await page.locator('.chart:not([hidden]) .uplot').count();
  assert(charts >= 5, `${charts} charts`);
  assert(await page.locator('.card[data-metric="pgn.step_ms"]').count() === 1, 'no step-time card');
  assert(await page.locator('.card[data-metric="peak_rss_mb"]').count() === 1, 'no memory card');
  await page.check('#log-scale');
  await page.locator('#smoothing').fill('0.6');
  await page.waitForFunction(() => /pgn\.psnr \(raw\)/.test(document.querySelector('.chart[data-chart="PSNR"] .u-legend')?.textContent || ''));
  await page.selectOption('#x-axis', 'time');
  await page.waitForSelector('.chart[data-chart="PSNR"] .uplot canvas');
  await page.selectOption('#x-axis', 'step');
  await page.uncheck('#log-scale');
  await page.locator('#smoothing').fill('0');
  await shot(page, 'curves', { full: true });
}, { page });

await test('gradient fields: the panels load, the step slider moves, a click zooms at native size', async () => {
  assert(jobId, 'needs the submitted job');
  await jobTab('fields');
  const imgs = await imagesLoaded(page, 'img.fields');
  assert(imgs.every((i) => i.w > 6 * 64 && i.h === 64), `panel sizes ${JSON.stringify(imgs)}`);
  assert(await page.getAttribute('#step-slider', 'max') === '1', 'the slider should have two steps (3 and 6)');
  const last = await page.getAttribute('img.fields', 'src');
  await page.locator('#step-slider').fill('0');
  await page.waitForFunction((s) => document.querySelector('img.fields')?.getAttribute('src') !== s, last);
  const first = await imagesLoaded(page, 'img.fields');
  assert(/step0+3\.png$/.test(first[0].src), `step 3's panel expected, got ${first[0].src}`);
  await shot(page, 'fields', { full: true });
  await page.click('img.fields');
  await page.waitForSelector('.zoom-overlay img.zoomed');
  const z = await imagesLoaded(page, '.zoom-overlay img.zoomed');
  const zs = await page.$eval('.zoom-overlay img.zoomed', (i) => ({ r: getComputedStyle(i).imageRendering, w: i.getBoundingClientRect().width, n: i.naturalWidth }));
  assert(zs.r === 'pixelated', `image-rendering ${zs.r}`);
  assert(Math.abs(zs.w / zs.n - Math.round(zs.w / zs.n)) < 0.01 && zs.w >= zs.n, `zoomed width ${zs.w} for natural ${zs.n}`);
  await page.click('.zoom-bar button[data-scale="1"]');
  const w1 = await page.$eval('.zoom-overlay img.zoomed', (i) => i.getBoundingClientRect().width);
  assert(Math.abs(w1 - z[0].w) < 0.5, `1× shows ${w1} px for ${z[0].w}`);
  await page.click('.zoom-bar button[data-scale="2"]');
  await shot(page, 'fields-zoom');
  await page.keyboard.press('Escape');
  await page.waitForSelector('.zoom-overlay', { state: 'detached' });
}, { page });

await test('compare: the arms side by side, their metrics with ratios, speed and memory', async () => {
  assert(jobId, 'needs the submitted job');
  await jobTab('compare');
  const imgs = await imagesLoaded(page, 'img.arm-img', 3);
  assert(imgs.length === 3, `${imgs.length} images (target, pgn, mse expected)`);
  await page.waitForSelector('table.compare');
  const head = await page.textContent('table.compare thead');
  assert(head.includes('PGN / MSE'), `table head: ${head}`);
  assert(await page.locator('table.compare tr[data-metric="psnr"] td.ratio').count() === 1, 'no PSNR ratio');
  assert(await page.locator('.card[data-arm="pgn"]').count() === 1 && await page.locator('.card[data-arm="mse"]').count() === 1, 'no speed cards');
  await shot(page, 'compare', { full: true });
}, { page });

await test('artifacts: listed with working download links', async () => {
  assert(jobId, 'needs the submitted job');
  await jobTab('artifacts');
  await page.waitForSelector('tr[data-artifact="target.png"]');
  const names = await page.$$eval('table.artifacts tr[data-artifact]', (r) => r.map((x) => x.dataset.artifact));
  assert(names.some((n) => /^fields-step\d+\.png$/.test(n)) && names.some((n) => /^checkpoint-/.test(n)), `artifacts ${names}`);
  const href = await page.getAttribute('tr[data-artifact="target.png"] a.btn', 'href');
  const r = await page.request.get(new URL(href, `${srv.base}/`).toString());
  assert(r.status() === 200 && r.headers()['content-type'] === 'image/png', `download answered ${r.status()}`);
}, { page });

// The README's two screenshots (PGND_DOCS_SCREENSHOTS=1): the panels at the last step, and a
// table with a running, a cancelled and a finished job.
async function clipTo(sel, file) {
  const box = await page.locator(sel).boundingBox();
  await page.screenshot({ path: file, clip: { x: 0, y: 0, width: 1280, height: Math.ceil(box.y + box.height + 20) } });
}
if (DOCS) {
  await test('docs: the README screenshots', async () => {
    fs.mkdirSync('docs', { recursive: true });
    await jobTab('fields');
    await page.locator('#step-slider').fill('1');
    await imagesLoaded(page, 'img.fields');
    await page.evaluate(() => document.activeElement && document.activeElement.blur());
    await clipTo('.fields-list', 'docs/dashboard-fields.png');
    const body = { type: 'train', params: { image: FIXTURE_IMAGE, size: 64, steps: 3000, arms: ['pgn', 'vgg', 'mse'], pgn_checkpoint: FIXTURE_PGN, log_every: 1 } };
    const a = await http(srv.base, '/api/v1/jobs', { method: 'POST', body });
    const b = await http(srv.base, '/api/v1/jobs', { method: 'POST', body: { type: 'fit', params: { data: path.join(ROOT, 'tests/fixtures/images'), arch: 'resnet4', size: 32, batch: 3 } } });
    await http(srv.base, `/api/v1/jobs/${b.json.id}/cancel`, { method: 'POST' });
    await page.click('a[data-nav="jobs"]');
    const row = `#jobs-table tr[data-job="${a.json.id}"]`;
    await page.waitForSelector(`#jobs-table tr[data-job="${b.json.id}"][data-state="cancelled"]`, { timeout: 60000 });
    await page.waitForFunction((r) => /ETA/.test(document.querySelector(`${r} .progress .label`)?.textContent || '')
      && /PSNR/.test(document.querySelector(`${r} td.headline`)?.textContent || ''), row, { timeout: 120000 });
    await page.mouse.move(0, 0);
    await clipTo('#jobs-table', 'docs/dashboard-jobs.png');
    await http(srv.base, `/api/v1/jobs/${a.json.id}/cancel`, { method: 'POST' });
    await page.waitForSelector(`${row}[data-state="cancelled"]`, { timeout: 60000 });
    log('     wrote docs/dashboard-jobs.png and docs/dashboard-fields.png');
  }, { page });
}

// Chrome logs every 4xx answer, and every request refused while pgnd restarts, as a console error:
// those are expected here.
const expected = (e) => /Failed to load resource: (the server responded with a status of (401|422)|net::ERR_CONNECTION_REFUSED)/.test(e)
  || /net::ERR_CONNECTION_REFUSED|net::ERR_EMPTY_RESPONSE|net::ERR_INCOMPLETE_CHUNKED_ENCODING/.test(e);

await test('the live view survives a pgnd restart: it reconnects and resumes after the last event', async () => {
  await page.click('a[data-nav="jobs"]');
  const row = `#jobs-table tr[data-job="${jobId}"]`;
  await page.waitForSelector(row);
  await page.waitForSelector('#live[data-status="live"]');
  // SIGTERM: pgnd ends the event streams and exits; the page notices
  srv.proc.kill('SIGTERM');
  await new Promise((r) => (srv.proc.exitCode !== null ? r() : srv.proc.once('exit', r)));
  await page.waitForSelector('#live:not([data-status="live"])', { timeout: 15000 });
  // the same state, on the same port
  const again = await startPgnd('open-restarted', {}, { dir: srv.dir, port: srv.port });
  assert(again.port === srv.port, `restarted on ${again.port}, not ${srv.port}`);
  await page.waitForSelector('#live[data-status="live"]', { timeout: 30000 });
  // an event after the restart reaches the table: deleting the job removes its row
  const del = await http(srv.base, `/api/v1/jobs/${jobId}`, { method: 'DELETE' });
  assert(del.status === 204, `DELETE answered ${del.status}`);
  await page.waitForSelector(row, { state: 'detached', timeout: 15000 });
  assert(await page.evaluate(() => window.__sameDocument === true), 'the page was reloaded');
}, { page });

await test('no script errors on the page', async () => {
  const errs = errors.filter((e) => !expected(e));
  assert(errs.length === 0, errs.join('\n'));
});

if (authed) {
  const b = await launch('tokens');
  const p2 = b.page;
  await test('sign-in: a reader sees the jobs but no write actions', async () => {
    await p2.goto(`${authed.base}/`);
    await p2.waitForSelector('form#signin');
    await p2.fill('#token', 'pgnd_not_a_token');
    await p2.click('form#signin button[type="submit"]');
    await p2.waitForSelector('form#signin .problem:not([hidden])');
    assert(/not valid/.test(await p2.textContent('form#signin .problem')), 'no message for a wrong token');
    await p2.fill('#token', tokens.read);
    await p2.click('form#signin button[type="submit"]');
    await p2.waitForSelector(`#jobs-table tr[data-job="${samJob}"]`);
    await p2.waitForSelector('#live[data-status="live"]'); // the event stream works with the session cookie
    assert(/rita/.test(await p2.textContent('#who')) && /read/.test(await p2.textContent('#who')), 'who am I');
    await p2.waitForSelector('.banner.info[data-teacher="inception3"]');
    assert(!(await p2.isVisible('.banner.warn')), 'a random-teacher warning with the inception3 teacher');
    assert(await p2.locator('[data-action]').count() === 0, 'a reader sees action buttons');
    assert(!(await p2.isVisible('a[data-nav="new"]')), 'a reader sees "New job"');
    await p2.goto(`${authed.base}/#/jobs/${samJob}`);
    await p2.waitForSelector('.job-head h1');
    assert(await p2.locator('[data-action], a:has-text("Clone")').count() === 0, 'a reader sees actions on the job page');
    await p2.goto(`${authed.base}/#/new`);
    await p2.waitForSelector('text=not submit them');
    await shot(p2, 'reader');
  }, { page: p2 });

  await test('an admin cancels and deletes a job, each after a confirmation', async () => {
    assert(samJob, 'needs sam\'s job');
    // it pauses at the end of its first step
    for (let i = 0; ; i++) {
      const j = await http(authed.base, `/api/v1/jobs/${samJob}`, { token: tokens.admin });
      if (j.json && j.json.state === 'paused') break;
      assert(i < 600, `sam's job is ${j.json && j.json.state}, not paused, after 120 s`);
      await new Promise((r) => setTimeout(r, 200));
    }
    await p2.goto(`${authed.base}/#/jobs`);
    await p2.click('#who button');
    await p2.waitForSelector('form#signin');
    await p2.fill('#token', tokens.admin);
    await p2.click('form#signin button[type="submit"]');
    const row = `#jobs-table tr[data-job="${samJob}"]`;
    await p2.waitForSelector(`${row}[data-state="paused"] [data-action="resume"]`);
    await p2.waitForSelector(`${row} [data-action="cancel"]`);
    assert(/alice/.test(await p2.textContent('#who')), 'signed in as alice');
    // declining the confirmation changes nothing
    await p2.click(`${row} [data-action="cancel"]`);
    await p2.waitForSelector('dialog.confirm[open]');
    await shot(p2, 'confirm-cancel');
    await p2.click('dialog.confirm button[value="cancel"]');
    await p2.waitForSelector('dialog.confirm', { state: 'detached' });
    await p2.waitForTimeout(300);
    assert(await p2.getAttribute(row, 'data-state') === 'paused', 'declined, yet the job changed');
    await p2.click(`${row} [data-action="cancel"]`);
    await p2.click('dialog.confirm button[data-confirm]');
    await p2.waitForSelector(`${row}[data-state="cancelled"]`);
    await p2.click(`${row} [data-action="delete"]`);
    await p2.click('dialog.confirm button[data-confirm]');
    await p2.waitForSelector(row, { state: 'detached' });
    const gone = await http(authed.base, `/api/v1/jobs/${samJob}`, { token: tokens.admin });
    assert(gone.status === 404, `job still there: ${gone.status}`);
  }, { page: p2 });

  await test('no script errors on the signed-in pages', async () => {
    // the 401s before signing in are expected answers, not errors
    const errs = b.errors.filter((e) => !expected(e));
    assert(errs.length === 0, errs.join('\n'));
  });
}

clearTimeout(watchdog);
await cleanup();
const line = writeSummary();
log(`${line} (${((Date.now() - t0) / 1000).toFixed(1)} s; screenshots in ${OUT}/)`);
process.exit(failures || results.some((r) => !r.ok) ? 1 : 0);
