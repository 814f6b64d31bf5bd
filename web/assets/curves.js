// The curves tab: the job's metrics as live uPlot charts, grouped by what they measure, with
// log scale, smoothing and a step or estimated compute-time axis; step time and memory included.
import { loadUPlot, MetricChart, timeAxis } from './charts.js';
import { ARM_COLORS, ARMS, fmtNum, h, PALETTE } from './util.js';

const armKeys = (m) => ARMS.map((a) => `${a}.${m}`);

// [title, keys, unit] per job type; keys missing from a job are skipped.
const GROUPS = {
  fit: [
    ['Held-out gradient cosine: PGN vs the MSE direction', ['val.cos', 'val.mse_dir_cos', 'val.ae.cos', 'val.ae.mse_dir_cos', 'val.blur.cos', 'val.blur.mse_dir_cos']],
    ['Loss', ['loss', 'loss_grad_mse', 'loss_proxy_perceptual', 'loss_proxy_l1']],
    ['Gradient cosine (training window)', ['grad_cos', 'mse_dir_cos']],
    ['Norm ratio and relative error', ['grad_norm_ratio', 'grad_rel_err', 'mse_dir_norm_ratio', 'mse_dir_rel_err']],
    ['Autoencoders', ['ae0_l1', 'ae1_l1', 'ae2_l1', 'ae_resets']],
    ['|g| percentiles', ['g_true_abs_p50', 'g_true_abs_p90', 'g_true_abs_p99', 'g_pred_abs_p50', 'g_pred_abs_p90', 'g_pred_abs_p99']],
    ['Step time', ['step_ms', 'teacher_ms', 'pgn_ms', 'ae_ms', 'update_ms'], 'ms'],
    ['Memory', ['rss_mb', 'peak_rss_mb'], 'MB'],
  ],
  train: [
    ['PSNR', armKeys('psnr'), 'dB'],
    ['Perceptual loss (VGG-19)', armKeys('perceptual')],
    ['SSIM', [...armKeys('ssim'), ...armKeys('ssim_paper')]],
    ['Loss', armKeys('loss')],
    ['L1 and L2 to the target', [...armKeys('l1'), ...armKeys('l2')]],
    ['PGN gradient vs the true gradient: cosine', ['pgn.grad_cos', 'pgn.mse_dir_cos']],
    ['PGN gradient: norm ratio and relative error', ['pgn.grad_norm_ratio', 'pgn.grad_rel_err', 'pgn.mse_dir_norm_ratio', 'pgn.mse_dir_rel_err']],
    ['Step time per arm', armKeys('step_ms'), 'ms'],
    ['Memory', ['peak_rss_mb', 'rss_mb'], 'MB'],
  ],
};

// Arms keep their colour in every chart (a second metric of the same arm is dashed); other
// metrics take the palette's colours in turn.
const DASHES = [null, [6, 4], [2, 3], [10, 3, 2, 3]];
function colorsFor(keys) {
  const c = {};
  const perArm = {};
  let i = 0;
  const palette = PALETTE.filter((x) => !Object.values(ARM_COLORS).includes(x));
  for (const k of keys) {
    const arm = k.split('.')[0];
    if (ARM_COLORS[arm]) {
      const n = perArm[arm] || 0;
      perArm[arm] = n + 1;
      c[k] = { stroke: ARM_COLORS[arm], dash: DASHES[n % DASHES.length] };
    } else {
      c[k] = { stroke: palette[i++ % palette.length], dash: null };
    }
  }
  return c;
}

export function renderCurves(body, model) {
  const settings = { smooth: 0, log: false, x: 'step' };
  const charts = [];
  const grid = h('div', { class: 'charts' });
  const extraGrid = h('div', { class: 'charts' });
  const picker = h('div', { class: 'key-picker' });
  const chosen = new Set();
  let extraChart = null;
  let uPlot = null;

  const smoothLabel = h('output', null, '0');
  const controls = h('div', { class: 'toolbar chart-controls' },
    h('label', { class: 'inline' }, h('input', { type: 'checkbox', id: 'log-scale', onchange: (e) => { settings.log = e.target.checked; draw(); } }), ' log scale'),
    h('label', { class: 'inline' }, 'smoothing ',
      h('input', { type: 'range', id: 'smoothing', min: 0, max: 0.99, step: 0.01, value: 0,
        oninput: (e) => { settings.smooth = Number(e.target.value); smoothLabel.textContent = e.target.value; draw(); } }),
      ' ', smoothLabel),
    h('label', { class: 'inline' }, 'x axis ',
      h('select', { id: 'x-axis', onchange: (e) => { settings.x = e.target.value; draw(); } },
        h('option', { value: 'step' }, 'step'),
        h('option', { value: 'time' }, 'compute time (est.)'))),
    h('span', { class: 'spacer' }),
    h('span', { class: 'muted small', id: 'series-count' }));
  const summary = h('div', { class: 'cards' });
  const emptyNote = h('p', { class: 'muted' }, 'No metrics yet: they appear here as the job logs them.');
  body.append(summary, controls, emptyNote, grid,
    h('section', { class: 'other-metrics' }, h('h2', null, 'Other metrics'),
      h('p', { class: 'muted small' }, 'Tick metrics to plot them together.'), picker, extraGrid));

  const groups = GROUPS[model.job.type] || [];
  const grouped = new Set(groups.flatMap((g) => g[1]));

  function summaryCards() {
    const s = model.series;
    const last = (k) => (s[k] && s[k].values.length ? s[k].values[s[k].values.length - 1] : undefined);
    const median = (k) => {
      const v = (s[k]?.values || []).filter(Number.isFinite).sort((a, b) => a - b);
      return v.length ? v[Math.floor((v.length - 1) / 2)] : undefined;
    };
    const cards = [];
    const stepKeys = Object.keys(s).filter((k) => k === 'step_ms' || k.endsWith('.step_ms'));
    for (const k of stepKeys) {
      cards.push(h('div', { class: 'card', 'data-metric': k }, h('div', { class: 'card-label' }, k.replace('.step_ms', ' step time').replace('step_ms', 'step time')),
        h('div', { class: 'card-value' }, `${fmtNum(median(k), 3)} ms`), h('div', { class: 'card-sub' }, `median of the logged steps; latest ${fmtNum(last(k), 3)} ms`)));
    }
    if (last('peak_rss_mb') !== undefined) {
      cards.push(h('div', { class: 'card', 'data-metric': 'peak_rss_mb' }, h('div', { class: 'card-label' }, 'peak memory (RSS)'),
        h('div', { class: 'card-value' }, `${fmtNum(last('peak_rss_mb'), 4)} MB`),
        h('div', { class: 'card-sub' }, last('rss_mb') !== undefined ? `now ${fmtNum(last('rss_mb'), 4)} MB` : 'whole job')));
    }
    summary.replaceChildren(...cards);
  }

  function renderPicker() {
    const others = Object.keys(model.series).filter((k) => !grouped.has(k)).sort();
    picker.replaceChildren(...(others.length ? others.map((k) => h('label', { class: 'check' },
      h('input', { type: 'checkbox', value: k, checked: chosen.has(k),
        onchange: (e) => { if (e.target.checked) chosen.add(k); else chosen.delete(k); draw(); } }), ` ${k}`))
      : [h('span', { class: 'muted small' }, 'none')]));
  }

  // Known job types have fixed groups; others get one chart per key prefix ("pgn.psnr" -> "pgn").
  const chartByTitle = new Map();
  function ensureCharts(keys) {
    const defs = groups.length ? groups : Object.entries(keys.reduce((acc, k) => {
      const p = k.includes('.') ? k.split('.')[0] : 'metrics';
      (acc[p] = acc[p] || []).push(k);
      return acc;
    }, {}));
    for (const [title, ks, unit] of defs) {
      let c = chartByTitle.get(title);
      if (!c) {
        c = new MetricChart(grid, { title, keys: ks, colors: colorsFor(ks), unit });
        chartByTitle.set(title, c);
        charts.push(c);
      } else if (!groups.length) {
        c.keys = ks;
        c.colors = colorsFor(ks);
      }
    }
  }

  let known = '';
  function draw() {
    summaryCards();
    const keys = Object.keys(model.series);
    const sig = keys.join(',');
    if (sig !== known) {
      known = sig;
      renderPicker();
    }
    body.querySelector('#series-count').textContent = `${keys.length} metrics`;
    emptyNote.hidden = keys.length > 0;
    if (!uPlot) return;
    ensureCharts(keys);
    let timeOf = null;
    if (settings.x === 'time') {
      const stepMs = keys.filter((k) => k === 'step_ms' || k.endsWith('.step_ms')).map((k) => model.series[k]);
      timeOf = timeAxis(stepMs);
    }
    const st = { smooth: settings.smooth, log: settings.log, timeOf };
    for (const c of charts) c.update(uPlot, model.series, st);
    const extra = [...chosen].filter((k) => model.series[k]);
    if (extra.length) {
      const sig2 = extra.join(',');
      if (!extraChart || extraChart.sig !== sig2) {
        if (extraChart) { extraChart.destroy(); extraChart.el.remove(); }
        extraChart = new MetricChart(extraGrid, { title: 'Chosen metrics', keys: extra, colors: colorsFor(extra) });
        extraChart.sig = sig2;
      }
      extraChart.update(uPlot, model.series, st);
    } else if (extraChart) {
      extraChart.destroy();
      extraChart.el.remove();
      extraChart = null;
    }
  }

  let pending = null;
  const scheduleDraw = () => {
    // live updates at most once a second: redrawing is cheap, but not free on a busy machine
    if (pending) return;
    pending = setTimeout(() => { pending = null; draw(); }, 1000);
  };

  loadUPlot().then((u) => {
    uPlot = u;
    if (!u) {
      body.insertBefore(h('div', { class: 'error-box' }, 'The charting library is missing (web/vendor/uPlot.iife.min.js): run `make web` where pgnd was built.'), controls);
    }
    draw();
  });
  draw();
  const off = model.on((what) => {
    if (what === 'series') scheduleDraw();
  });
  return () => {
    off();
    clearTimeout(pending);
    charts.forEach((c) => c.destroy());
    if (extraChart) extraChart.destroy();
  };
}
