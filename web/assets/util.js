// Small helpers: a DOM builder, formatting of numbers, sizes, times and durations.

// h('div', {class: 'x', onclick: f, dataset: {id: 1}}, 'text', child, [more children])
export function h(tag, attrs, ...children) {
  const el = document.createElement(tag);
  if (attrs) {
    for (const [k, v] of Object.entries(attrs)) {
      if (v === undefined || v === null || v === false) continue;
      if (k === 'class') el.className = v;
      else if (k === 'dataset') Object.assign(el.dataset, v);
      else if (k === 'style' && typeof v === 'object') Object.assign(el.style, v);
      else if (k.startsWith('on') && typeof v === 'function') el.addEventListener(k.slice(2), v);
      else if (k in el && typeof v !== 'string') el[k] = v;
      else el.setAttribute(k, v === true ? '' : String(v));
    }
  }
  append(el, children);
  return el;
}

function append(el, children) {
  for (const c of children) {
    if (c === undefined || c === null || c === false) continue;
    if (Array.isArray(c)) append(el, c);
    else el.append(c instanceof Node ? c : document.createTextNode(String(c)));
  }
}

// Replaces el's children (null, undefined and false are skipped; arrays are flattened).
export function setChildren(el, ...children) {
  el.replaceChildren();
  append(el, children);
  return el;
}

export function clear(el) {
  while (el.firstChild) el.firstChild.remove();
  return el;
}

// Up to `digits` significant digits, no exponent for ordinary magnitudes.
export function fmtNum(v, digits = 4) {
  if (v === null || v === undefined || Number.isNaN(v)) return '—';
  if (!Number.isFinite(v)) return v > 0 ? '∞' : '−∞';
  if (v === 0) return '0';
  const a = Math.abs(v);
  if (a >= 1e6 || a < 1e-3) return v.toExponential(Math.max(0, digits - 2)).replace('e+', 'e');
  if (Number.isInteger(v) && a < 1e6) return String(v);
  return String(Number(v.toPrecision(digits)));
}

export function fmtBytes(n) {
  if (n === null || n === undefined) return '—';
  const u = ['B', 'KiB', 'MiB', 'GiB', 'TiB'];
  let i = 0;
  while (n >= 1024 && i < u.length - 1) { n /= 1024; i++; }
  return `${i ? n.toFixed(n < 10 ? 1 : 0) : n} ${u[i]}`;
}

// "42 s", "3 min 05 s", "2 h 10 min", "3 d 4 h"
export function fmtDuration(s) {
  if (s === null || s === undefined || !Number.isFinite(s)) return '—';
  s = Math.max(0, Math.round(s));
  if (s < 60) return `${s} s`;
  const m = Math.floor(s / 60), ss = s % 60;
  if (m < 60) return `${m} min ${String(ss).padStart(2, '0')} s`;
  const hh = Math.floor(m / 60), mm = m % 60;
  if (hh < 48) return `${hh} h ${String(mm).padStart(2, '0')} min`;
  return `${Math.floor(hh / 24)} d ${hh % 24} h`;
}

const dateFmt = new Intl.DateTimeFormat(undefined, {
  year: 'numeric', month: 'short', day: 'numeric', hour: '2-digit', minute: '2-digit', second: '2-digit',
});
const timeFmt = new Intl.DateTimeFormat(undefined, { hour: '2-digit', minute: '2-digit', second: '2-digit' });

export function fmtDate(ms) {
  return ms ? dateFmt.format(new Date(ms)) : '—';
}

// Today: the time of day; otherwise the date and time.
export function fmtWhen(ms) {
  if (!ms) return '—';
  const d = new Date(ms), now = new Date();
  return d.toDateString() === now.toDateString() ? timeFmt.format(d) : dateFmt.format(d);
}

export function fmtAgo(ms) {
  if (!ms) return '—';
  const s = (Date.now() - ms) / 1000;
  if (s < 5) return 'just now';
  if (s < 60) return `${Math.round(s)} s ago`;
  if (s < 3600) return `${Math.round(s / 60)} min ago`;
  if (s < 86400) return `${Math.round(s / 3600)} h ago`;
  return `${Math.round(s / 86400)} d ago`;
}

export const TERMINAL = new Set(['succeeded', 'failed', 'cancelled']);
export const STATES = ['queued', 'running', 'paused', 'succeeded', 'failed', 'cancelled'];
export const ARMS = ['pgn', 'vgg', 'mse'];
export const ARM_COLORS = { pgn: '#d9480f', vgg: '#1c7ed6', mse: '#2b8a3e' };
export const PALETTE = ['#1c7ed6', '#d9480f', '#2b8a3e', '#9c36b5', '#e67700', '#0b7285', '#c2255c', '#5f3dc4',
  '#5c940d', '#862e9c', '#364fc7', '#a61e4d'];

// Parses "#/jobs/12/curves?x=1" into {parts: ['jobs', '12', 'curves'], query: URLSearchParams}.
export function parseHash(hash) {
  const raw = (hash || '').replace(/^#\/?/, '');
  const [path, q] = raw.split('?');
  return { parts: path.split('/').filter(Boolean).map(decodeURIComponent), query: new URLSearchParams(q || '') };
}

export function debounce(fn, ms) {
  let t = null;
  return (...args) => {
    clearTimeout(t);
    t = setTimeout(() => fn(...args), ms);
  };
}

// Calls fn at most once per animation frame (coalescing calls).
export function perFrame(fn) {
  let queued = false;
  return () => {
    if (queued) return;
    queued = true;
    requestAnimationFrame(() => { queued = false; fn(); });
  };
}

// Runs async tasks with at most `n` at once.
export async function pool(items, n, fn) {
  const queue = items.slice();
  const workers = Array.from({ length: Math.min(n, queue.length) }, async () => {
    while (queue.length) {
      const it = queue.shift();
      try { await fn(it); } catch { /* each task reports its own errors */ }
    }
  });
  await Promise.all(workers);
}
