// Metric curves with uPlot (vendored from npm by `make web` into web/vendor/): several series on
// a step (or estimated compute-time) axis, optional log scale and exponential smoothing.
import { fmtNum, h } from './util.js';

let loading = null;
// Resolves to the uPlot constructor, or null when web/vendor/ lacks it (`make web` not run).
export function loadUPlot() {
  if (window.uPlot) return Promise.resolve(window.uPlot);
  if (!loading) {
    loading = new Promise((resolve) => {
      const css = h('link', { rel: 'stylesheet', href: 'vendor/uPlot.min.css' });
      document.head.append(css);
      const s = h('script', { src: 'vendor/uPlot.iife.min.js' });
      s.onload = () => resolve(window.uPlot || null);
      s.onerror = () => resolve(null);
      document.head.append(s);
    });
  }
  return loading;
}

// TensorBoard's smoothing: an exponential moving average with the start-up bias removed.
export function smooth(values, w) {
  if (!(w > 0)) return values;
  const out = new Array(values.length);
  let last = 0, n = 0;
  for (let i = 0; i < values.length; i++) {
    const v = values[i];
    if (v === null || v === undefined || !Number.isFinite(v)) {
      out[i] = null;
      continue;
    }
    last = last * w + (1 - w) * v;
    n += 1;
    out[i] = last / (1 - w ** n);
  }
  return out;
}

// step -> estimated seconds of compute, from per-step times ([{steps, values}] in ms, summed).
export function timeAxis(stepMsSeries) {
  const per = new Map();
  for (const s of stepMsSeries) {
    s.steps.forEach((st, i) => {
      const v = s.values[i];
      if (Number.isFinite(v)) per.set(st, (per.get(st) || 0) + v);
    });
  }
  const steps = [...per.keys()].sort((a, b) => a - b);
  if (!steps.length) return null;
  const t = [];
  let acc = 0, prev = 0;
  for (const st of steps) {
    acc += ((st - prev) * per.get(st)) / 1000;
    t.push(acc);
    prev = st;
  }
  return (step) => {
    // linear between the logged steps; the last rate beyond them
    let lo = 0, hi = steps.length - 1;
    if (step <= steps[0]) return (step * per.get(steps[0])) / 1000;
    if (step >= steps[hi]) return t[hi] + ((step - steps[hi]) * per.get(steps[hi])) / 1000;
    while (hi - lo > 1) {
      const mid = (lo + hi) >> 1;
      if (steps[mid] <= step) lo = mid; else hi = mid;
    }
    return t[lo] + ((t[hi] - t[lo]) * (step - steps[lo])) / (steps[hi] - steps[lo]);
  };
}

// whole steps on the step axis
const STEP_INCRS = [1, 2, 5, 10, 20, 25, 50, 100, 200, 250, 500, 1e3, 2e3, 2500, 5e3, 1e4, 2e4, 25e3, 5e4, 1e5, 2e5, 25e4, 5e5, 1e6, 2e6, 5e6, 1e7];

// Axis ticks with just enough decimals to tell neighbours apart (369.2, 369.4, not 369, 369).
function fmtTicks(vals) {
  const finite = vals.filter((v) => v !== null && Number.isFinite(v));
  let step = Infinity;
  for (let i = 1; i < finite.length; i++) step = Math.min(step, Math.abs(finite[i] - finite[i - 1]));
  const big = Math.max(...finite.map(Math.abs), 0);
  if (!finite.length || big >= 1e6 || (big > 0 && big < 1e-3)) return vals.map((v) => fmtNum(v, 3));
  const tol = Number.isFinite(step) && step > 0 ? step * 1e-3 : 1e-9;
  let decimals = 0;
  while (decimals < 6 && finite.some((v) => Math.abs(v - Number(v.toFixed(decimals))) > tol)) decimals++;
  return vals.map((v) => (v === null || !Number.isFinite(v) ? '' : v.toFixed(decimals)));
}

function fmtSeconds(s) {
  if (s < 60) return `${fmtNum(s, 3)}s`;
  if (s < 3600) return `${Math.floor(s / 60)}m${String(Math.round(s % 60)).padStart(2, '0')}`;
  return `${Math.floor(s / 3600)}h${String(Math.round((s % 3600) / 60)).padStart(2, '0')}`;
}

// One chart: a title, the keys it plots and their colours. update(seriesByKey, settings) draws it.
export class MetricChart {
  constructor(container, { title, keys, colors, unit }) {
    this.keys = keys;
    this.colors = colors;
    this.unit = unit || '';
    this.plot = null;
    this.shape = '';
    this.body = h('div', { class: 'chart-body' });
    this.el = h('section', { class: 'chart', 'data-chart': title }, h('h3', null, title), this.body);
    container.append(this.el);
    this.ro = new ResizeObserver(() => {
      if (this.plot) this.plot.setSize({ width: this.width(), height: 220 });
    });
    this.ro.observe(this.body);
  }

  width() {
    return Math.max(200, this.body.clientWidth || 400);
  }

  update(uPlot, series, settings) {
    const keys = this.keys.filter((k) => series[k] && series[k].steps.length);
    if (!keys.length) {
      this.el.hidden = true;
      return;
    }
    this.el.hidden = false;
    const smoothing = settings.smooth > 0;
    // the union of the series' steps; each series null where it has no point
    const stepSet = new Set();
    for (const k of keys) series[k].steps.forEach((s) => stepSet.add(s));
    const steps = [...stepSet].sort((a, b) => a - b);
    const index = new Map(steps.map((s, i) => [s, i]));
    const xs = settings.timeOf ? steps.map(settings.timeOf) : steps;
    const data = [xs];
    const specs = [{ label: settings.timeOf ? 'time' : 'step', value: (u, v) => (v === null || v === undefined ? '—' : settings.timeOf ? fmtSeconds(v) : String(v)) }];
    keys.forEach((k) => {
      const ys = new Array(steps.length).fill(null);
      series[k].steps.forEach((s, i) => {
        let v = series[k].values[i];
        if (v === null || v === undefined || !Number.isFinite(v) || (settings.log && v <= 0)) v = null;
        ys[index.get(s)] = v;
      });
      const { stroke: color, dash } = this.colors[k] || { stroke: '#495057', dash: null };
      const val = (u, v) => (v === null || v === undefined ? '—' : fmtNum(v, 4));
      if (smoothing) {
        data.push(ys);
        specs.push({ label: `${k} (raw)`, stroke: `${color}40`, width: 1, spanGaps: true, value: val, dash: dash || undefined });
        data.push(smooth(ys, settings.smooth));
        specs.push({ label: k, stroke: color, width: 2, spanGaps: true, value: val, dash: dash || undefined });
      } else {
        data.push(ys);
        specs.push({ label: k, stroke: color, width: 1.75, spanGaps: true, value: val, dash: dash || undefined,
          points: { show: steps.length < 60 } });
      }
    });
    const shape = JSON.stringify([keys, smoothing, settings.log, !!settings.timeOf]);
    if (this.plot && shape === this.shape) {
      this.plot.setData(data);
      return;
    }
    if (this.plot) this.plot.destroy();
    this.shape = shape;
    const opts = {
      width: this.width(),
      height: 220,
      series: specs,
      scales: { x: { time: false }, y: { distr: settings.log ? 3 : 1 } },
      axes: [
        { label: settings.timeOf ? 'compute time (est. from step_ms)' : 'step', labelSize: 18,
          incrs: settings.timeOf ? undefined : STEP_INCRS,
          values: (u, vals) => vals.map((v) => (settings.timeOf ? fmtSeconds(v) : fmtNum(v, 4))) },
        { values: (u, vals) => (settings.log ? vals.map((v) => fmtNum(v, 3)) : fmtTicks(vals)), size: 60, label: this.unit || undefined },
      ],
      cursor: { sync: { key: 'pgnd-metrics' }, drag: { x: true, y: false } },
      legend: { live: true },
    };
    this.plot = new uPlot(opts, data, this.body);
  }

  destroy() {
    this.ro.disconnect();
    if (this.plot) this.plot.destroy();
    this.plot = null;
  }
}
