// The gradient-field tab (the PNG panels pgnd renders: target | generated | true gradient |
// predicted gradient | true proxy | predicted proxy) and the compare tab of train jobs (the arms'
// images side by side per step, their metrics and ratios, their speed and memory).
import { api, jobUrl } from './api.js';
import { emptyNote, zoomImage } from './ui.js';
import { ARM_COLORS, ARMS, fmtNum, h, setChildren } from './util.js';

const PANELS = ['target', 'generated', 'true gradient', 'predicted gradient', 'true proxy', 'predicted proxy'];
const rel = (url) => url.replace(/^\//, '');

// A step picker over a sorted list of steps: slider, previous/next, and "follow the latest".
function stepPicker(onChange) {
  let steps = [];
  let index = -1;
  let follow = true;
  const range = h('input', { type: 'range', min: 0, max: 0, step: 1, value: 0, id: 'step-slider', 'aria-label': 'step',
    oninput: () => { index = Number(range.value); follow = index === steps.length - 1; followBox.checked = follow; changed(); } });
  const label = h('output', { class: 'step-label', for: 'step-slider' });
  const prev = h('button', { class: 'btn small', type: 'button', 'aria-label': 'previous step', onclick: () => go(index - 1) }, '◀');
  const next = h('button', { class: 'btn small', type: 'button', 'aria-label': 'next step', onclick: () => go(index + 1) }, '▶');
  const followBox = h('input', { type: 'checkbox', checked: true, onchange: (e) => { follow = e.target.checked; if (follow) go(steps.length - 1); } });
  const el = h('div', { class: 'step-picker toolbar' }, h('span', null, 'step'), prev, range, next, label,
    h('label', { class: 'inline' }, followBox, ' follow the latest'));
  function go(i) {
    if (i < 0 || i >= steps.length) return;
    index = i;
    range.value = String(i);
    follow = i === steps.length - 1;
    followBox.checked = follow;
    changed();
  }
  function changed() {
    label.textContent = steps.length ? `${steps[index]}  (${index + 1} of ${steps.length})` : '—';
    prev.disabled = index <= 0;
    next.disabled = index >= steps.length - 1;
    onChange(steps[index]);
  }
  return {
    el,
    set(newSteps) {
      const cur = steps[index];
      steps = newSteps;
      range.max = String(Math.max(0, steps.length - 1));
      el.hidden = steps.length === 0;
      if (follow || cur === undefined) index = steps.length - 1;
      else index = Math.max(0, steps.indexOf(cur));
      range.value = String(index);
      changed();
    },
    get step() { return steps[index]; },
  };
}

// Shows img at the largest whole multiple of its size that fits (pixels stay square and sharp).
function fitPixels(img, box, maxScale = 4) {
  const apply = () => {
    if (!img.naturalWidth) return;
    const w = box.clientWidth || img.naturalWidth;
    const k = Math.max(1, Math.min(maxScale, Math.floor(w / img.naturalWidth)));
    img.style.width = `${img.naturalWidth * k}px`;
  };
  img.addEventListener('load', apply);
  return apply;
}

function captionFor(a, job) {
  const m = /fields-ae(\d+)-step/.exec(a.name);
  if (m) return `autoencoder ${m[1]} (max_layer ${m[1]}): its reconstruction of a held-out image`;
  if (job.type === 'train') return 'the pgn arm\'s current image';
  return a.name;
}

export function renderFields(body, model) {
  const job = model.job;
  const figures = h('div', { class: 'fields-list' });
  let shownStep = null;
  const picker = stepPicker((step) => { if (step !== shownStep) show(step); });
  const fitters = [];
  const onResize = () => fitters.forEach((f) => f());
  window.addEventListener('resize', onResize);

  const note = h('p', { class: 'muted small' },
    'Panels rendered by pgnd. Both gradients share the true gradient\'s per-channel scale (its min and max per channel map to 0 and 1; ',
    'spec/method.md §7), so they can be compared pixel by pixel; proxies and images are de-normalised from ImageNet space. Click a panel to see it at native resolution.');
  body.append(note, picker.el, figures);

  function fieldsArtifacts() {
    return model.artifacts.filter((a) => a.kind === 'fields' || /^fields-.*\.png$/.test(a.name));
  }

  const sigAt = (step) => fieldsArtifacts().filter((a) => a.step === step).map((a) => a.name).sort().join(',');
  let shownSig = '';
  function show(step) {
    shownStep = step;
    shownSig = sigAt(step);
    fitters.length = 0;
    const list = fieldsArtifacts().filter((a) => a.step === step).sort((a, b) => a.name.localeCompare(b.name));
    figures.replaceChildren(...list.map((a) => {
      const caption = `${captionFor(a, job)}, step ${a.step}`;
      const img = h('img', { class: 'fields', src: rel(a.url), alt: `gradient-field panels: ${caption}`, 'data-name': a.name,
        title: 'Click to zoom (native resolution)', onclick: () => zoomImage(rel(a.url), caption) });
      const frame = h('div', { class: 'panel-frame' }, h('div', { class: 'panel-labels', 'aria-hidden': 'true' }, PANELS.map((p) => h('span', null, p))), img);
      const fig = h('figure', { class: 'fields-fig' }, h('figcaption', null, caption), h('div', { class: 'panel-box' }, frame));
      const fit = fitPixels(img, figures, 6);
      fitters.push(fit);
      return fig;
    }));
  }

  function refresh() {
    const fa = fieldsArtifacts();
    if (!fa.length) {
      picker.set([]);
      figures.replaceChildren(emptyNote(job.type === 'train'
        ? 'No gradient-field panels: a train job draws them only for its pgn arm (arms must include pgn), every image_every steps.'
        : job.type === 'collect'
          ? 'No panels yet. A collect job\'s panels show the true gradients only (there is no prediction to show).'
          : `No panels yet: a fit job draws them every image_every steps (${job.params?.image_every ?? '?'} here), from its held-out images.`));
      shownStep = null;
      return;
    }
    const steps = [...new Set(fa.map((a) => a.step))].sort((a, b) => a - b);
    picker.set(steps);
    // panels of one step arrive one by one (a fit job draws one per autoencoder)
    if (shownStep === null || (picker.step === shownStep && sigAt(shownStep) !== shownSig)) show(picker.step);
  }
  refresh();
  const off = model.on((what) => { if (what === 'artifacts') refresh(); });
  return () => {
    off();
    window.removeEventListener('resize', onResize);
  };
}

// ---- compare (train jobs) ----
const COMPARE_METRICS = [
  ['psnr', 'PSNR (dB)', 'higher'],
  ['ssim', 'SSIM', 'higher'],
  ['ssim_paper', 'SSIM (paper)', 'higher'],
  ['perceptual', 'perceptual loss', 'lower'],
  ['l1', 'L1', 'lower'],
  ['l2', 'L2', 'lower'],
  ['loss', 'training loss (each arm its own)', null],
  ['step_ms', 'step time (ms)', 'lower'],
];
const RATIOS = [['pgn_vgg', 'PGN / VGG'], ['pgn_mse', 'PGN / MSE'], ['vgg_mse', 'VGG / MSE']];

export function renderCompare(body, model) {
  const job = model.job;
  const arms = ARMS.filter((a) => (job.params?.arms || ARMS).includes(a));
  const row = h('div', { class: 'compare-row' });
  const tableBox = h('div', { class: 'compare-metrics' });
  const speed = h('div', { class: 'cards' });
  let shownStep = null;
  let token = 0;
  let tableEmpty = false;
  const picker = stepPicker((step) => { if (step !== shownStep) show(step); });
  body.append(h('p', { class: 'muted small' }, 'Each arm trains the same Deep Image Prior generator from the same start; only the loss differs. Click an image to zoom.'),
    picker.el, row,
    h('h2', null, 'Metrics at this step'), tableBox,
    h('h2', null, 'Speed and memory'), speed);

  const imagesAt = (step) => {
    const byArm = {};
    for (const a of model.artifacts) {
      const m = /^([a-z]+)-step0*(\d+)\.png$/.exec(a.name);
      if (m && arms.includes(m[1]) && a.step === step) byArm[m[1]] = a;
    }
    return byArm;
  };

  function figure(url, caption, color) {
    const img = h('img', { class: 'arm-img', src: rel(url), alt: caption, onclick: () => zoomImage(rel(url), caption), title: 'Click to zoom' });
    return h('figure', { class: 'arm-fig', style: color ? { borderTopColor: color } : undefined },
      h('div', { class: 'img-box' }, img), h('figcaption', null, caption));
  }

  const sigAt = (step) => Object.keys(imagesAt(step)).sort().join(',') + (model.artifacts.some((a) => a.name === 'target.png') ? '+t' : '');
  let shownSig = '';
  async function show(step) {
    shownStep = step;
    shownSig = sigAt(step);
    const my = ++token;
    const target = model.artifacts.find((a) => a.name === 'target.png');
    const imgs = imagesAt(step);
    setChildren(row,
      target ? figure(target.url, 'target') : null,
      ...arms.map((a) => (imgs[a] ? figure(imgs[a].url, `${a} · step ${step}`, ARM_COLORS[a]) : h('figure', { class: 'arm-fig missing' }, h('div', { class: 'img-box' }, '—'), h('figcaption', null, a)))));
    // the metrics logged at this step (or the first logged after it), exactly, not downsampled
    let values = {};
    let at = null;
    try {
      const m = await api(jobUrl(job.id, `/metrics?since_step=${step - 1}&max_points=2`));
      for (const [k, s] of Object.entries(m.series || {})) {
        if (s.steps.length) {
          values[k] = s.values[0];
          if (at === null || s.steps[0] < at) at = s.steps[0];
        }
      }
    } catch {
      values = {};
    }
    if (my !== token) return;
    renderTable(values, at, step);
  }

  function renderTable(v, at, step) {
    const ratios = RATIOS.filter(([r]) => Object.keys(v).some((k) => k.startsWith(`ratio.${r}.`)));
    const best = (m, dir) => {
      if (!dir) return null;
      const vals = arms.map((a) => v[`${a}.${m}`]).filter(Number.isFinite);
      if (vals.length < 2) return null;
      return dir === 'higher' ? Math.max(...vals) : Math.min(...vals);
    };
    const rows = COMPARE_METRICS.filter(([m]) => arms.some((a) => v[`${a}.${m}`] !== undefined)).map(([m, label, dir]) => {
      const b = best(m, dir);
      return h('tr', { 'data-metric': m },
        h('th', { scope: 'row' }, label, dir ? h('span', { class: 'muted small' }, ` ${dir} is better`) : null),
        arms.map((a) => {
          const x = v[`${a}.${m}`];
          return h('td', { class: `num${x === b ? ' best' : ''}` }, fmtNum(x, 4));
        }),
        ratios.map(([r]) => h('td', { class: 'num ratio' }, v[`ratio.${r}.${m}`] !== undefined ? fmtNum(v[`ratio.${r}.${m}`], 3) : '')));
    });
    tableEmpty = !rows.length;
    if (!rows.length) {
      tableBox.replaceChildren(emptyNote('No metrics logged at or after this step yet.'));
      return;
    }
    tableBox.replaceChildren(
      h('p', { class: 'muted small' }, at !== null && at !== step ? `Metrics are logged every log_every steps: these are from step ${at}.` : `Step ${step}.`),
      h('div', { class: 'table-wrap fit' }, h('table', { class: 'compare' },
        h('thead', null, h('tr', null, h('th', null, 'metric'),
          arms.map((a) => h('th', { class: 'num', style: { color: ARM_COLORS[a] } }, a)),
          ratios.map(([, l]) => h('th', { class: 'num ratio' }, l)))),
        h('tbody', null, rows))));
  }

  function renderSpeed() {
    const s = model.series;
    // the median: robust to the first step (allocation, weights) and to steps slowed by image output
    const mean = (k) => {
      const v = (s[k]?.values || []).filter(Number.isFinite).sort((a, b) => a - b);
      return v.length ? v[Math.floor((v.length - 1) / 2)] : undefined;
    };
    const cards = arms.map((a) => {
      const ms = mean(`${a}.step_ms`);
      const vgg = mean('vgg.step_ms');
      return h('div', { class: 'card', 'data-arm': a, style: { borderTopColor: ARM_COLORS[a] } },
        h('div', { class: 'card-label' }, `${a} step time`),
        h('div', { class: 'card-value' }, ms === undefined ? '—' : `${fmtNum(ms, 3)} ms`),
        h('div', { class: 'card-sub' }, a !== 'vgg' && ms && vgg ? `${fmtNum(vgg / ms, 3)}× the speed of vgg` : 'median of the logged steps'));
    });
    const rss = s.peak_rss_mb?.values;
    if (rss && rss.length) {
      cards.push(h('div', { class: 'card' }, h('div', { class: 'card-label' }, 'peak memory (all arms)'),
        h('div', { class: 'card-value' }, `${fmtNum(rss[rss.length - 1], 4)} MB`),
        h('div', { class: 'card-sub' }, 'the arms run in one process, one after another each step')));
    }
    speed.replaceChildren(...cards);
  }

  function refresh() {
    const steps = [...new Set(model.artifacts.filter((a) => /^([a-z]+)-step\d+\.png$/.test(a.name) && a.kind === 'image').map((a) => a.step))]
      .sort((a, b) => a - b);
    if (!steps.length) {
      picker.set([]);
      row.replaceChildren(emptyNote(`No images yet: each arm saves one every image_every steps (${job.params?.image_every ?? '?'} here).`));
      shownStep = null;
    } else {
      picker.set(steps);
      if (shownStep === null || (picker.step === shownStep && sigAt(shownStep) !== shownSig)) show(picker.step);
    }
    renderSpeed();
  }
  refresh();
  let t = null;
  const off = model.on((what) => {
    if (what === 'artifacts') refresh();
    if (what === 'series') {
      clearTimeout(t);
      t = setTimeout(() => {
        renderSpeed();
        if (tableEmpty && shownStep !== null) show(shownStep); // the metrics of the shown step have come
      }, 1000);
    }
  });
  return () => {
    off();
    clearTimeout(t);
  };
}
