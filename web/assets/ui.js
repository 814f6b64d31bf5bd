// Shared pieces of the page: state badges, progress bars, job actions with confirmation, toasts,
// and the zoom viewer for images at native resolution.
import { api, jobUrl } from './api.js';
import { canAct, etaSeconds, jobStore } from './state.js';
import { fmtDuration, h, TERMINAL } from './util.js';

export function stateBadge(job) {
  const pending = jobStore.pending.get(job.id);
  return h('span', { class: `badge state-${job.state}`, 'data-state': job.state, title: job.error || '' },
    job.state, pending ? h('span', { class: 'pending' }, ` · ${pending}…`) : null);
}

export function progressBar(job, { wide = false } = {}) {
  const total = job.total_steps || 0, step = job.step || 0;
  const frac = total > 0 ? Math.min(1, step / total) : job.state === 'succeeded' ? 1 : 0;
  const eta = etaSeconds(job);
  let label = total > 0 ? `${step} / ${total}` : job.state === 'queued' ? 'waiting' : job.state === 'running' ? 'starting…' : '—';
  if (eta !== null) label += ` · ETA ${fmtDuration(eta)}`;
  return h('div', { class: `progress${wide ? ' wide' : ''}`, title: `${Math.round(frac * 100)} %` },
    h('div', { class: 'bar', role: 'progressbar', 'aria-valuemin': 0, 'aria-valuemax': 100,
      'aria-valuenow': Math.round(frac * 100) },
    h('div', { class: `fill state-${job.state}`, style: { width: `${(frac * 100).toFixed(1)}%` } })),
    h('span', { class: 'label' }, label));
}

// ---- toasts ----
export function toast(text, kind = 'info') {
  let box = document.getElementById('toasts');
  if (!box) {
    box = h('div', { id: 'toasts', 'aria-live': 'polite' });
    document.body.append(box);
  }
  const t = h('div', { class: `toast ${kind}` }, text);
  box.append(t);
  setTimeout(() => t.classList.add('gone'), kind === 'error' ? 7000 : 3500);
  setTimeout(() => t.remove(), kind === 'error' ? 7600 : 4100);
}

// ---- confirmation ----
// Resolves true when the user confirms. Uses a modal <dialog>.
export function confirmDialog({ title, text, ok = 'Confirm', danger = false }) {
  return new Promise((resolve) => {
    const dlg = h('dialog', { class: 'confirm', 'aria-labelledby': 'confirm-title' },
      h('form', { method: 'dialog' },
        h('h2', { id: 'confirm-title' }, title),
        h('p', null, text),
        h('div', { class: 'buttons' },
          h('button', { value: 'cancel', class: 'btn', type: 'submit' }, 'Keep it'),
          h('button', { value: 'ok', class: `btn ${danger ? 'danger' : 'primary'}`, type: 'submit', 'data-confirm': '' }, ok))));
    document.body.append(dlg);
    dlg.addEventListener('close', () => {
      resolve(dlg.returnValue === 'ok');
      dlg.remove();
    });
    dlg.showModal();
    dlg.querySelector('[data-confirm]').focus();
  });
}

const ACTIONS = {
  pause: {
    label: 'Pause', when: ['queued', 'running'],
    text: () => 'A running job writes a checkpoint at its next step and frees its worker; resuming continues from there.',
  },
  resume: {
    label: 'Resume', when: ['paused'],
    text: () => 'It is queued again and continues from its last checkpoint.',
  },
  cancel: {
    label: 'Cancel', when: ['queued', 'running', 'paused'], danger: true,
    text: () => 'A running job stops at its next step. Its metrics and files stay until you delete the job.',
  },
  delete: {
    label: 'Delete', when: [...TERMINAL], danger: true,
    text: () => 'Its metrics, images, models and checkpoints are deleted too. This cannot be undone.',
  },
};

export async function runAction(job, name) {
  const a = ACTIONS[name];
  const ok = await confirmDialog({ title: `${a.label} job ${job.id} (${job.type}, ${job.owner})?`, text: a.text(job), ok: `${a.label} job`, danger: a.danger });
  if (!ok) return false;
  try {
    if (name === 'delete') {
      await api(jobUrl(job.id), { method: 'DELETE' });
      toast(`Job ${job.id} deleted`);
    } else {
      const r = await api(jobUrl(job.id, `/${name}`), { method: 'POST' });
      toast(`Job ${job.id}: ${r.action || r.state}`);
    }
    return true;
  } catch (e) {
    toast(`Cannot ${name} job ${job.id}: ${e.message}`, 'error');
    return false;
  }
}

// The buttons this user may use on this job now (none for readers and others' jobs).
export function actionButtons(job, { onDone } = {}) {
  if (!canAct(job)) return null;
  const pending = jobStore.pending.get(job.id);
  const names = Object.keys(ACTIONS).filter((n) => ACTIONS[n].when.includes(job.state));
  if (!names.length) return null;
  return h('span', { class: 'actions' }, names.map((n) => h('button', {
    class: `btn small${ACTIONS[n].danger ? ' danger-outline' : ''}`,
    type: 'button',
    'data-action': n,
    disabled: !!pending && n !== 'cancel',
    title: ACTIONS[n].label,
    onclick: async (ev) => {
      ev.stopPropagation();
      ev.preventDefault();
      if (await runAction(job, n) && onDone) onDone(n);
    },
  }, ACTIONS[n].label)));
}

// ---- zoom: an image at native resolution (and integer multiples), pixelated ----
export function zoomImage(src, caption) {
  let scale = 1;
  const img = h('img', { src, alt: caption || '', class: 'zoomed' });
  const scales = [1, 2, 4, 8];
  const setScale = (s) => {
    scale = s;
    if (img.naturalWidth) img.style.width = `${img.naturalWidth * s}px`;
    bar.querySelectorAll('button[data-scale]').forEach((b) => b.classList.toggle('active', Number(b.dataset.scale) === s));
  };
  const close = () => {
    overlay.remove();
    document.removeEventListener('keydown', onKey);
  };
  const onKey = (e) => {
    if (e.key === 'Escape') close();
  };
  const bar = h('div', { class: 'zoom-bar' },
    h('span', { class: 'zoom-caption' }, caption || ''),
    h('span', { class: 'zoom-size' }),
    scales.map((s) => h('button', { class: 'btn small', type: 'button', 'data-scale': s, onclick: () => setScale(s) }, `${s}×`)),
    h('a', { class: 'btn small', href: src, download: '' }, 'Download'),
    h('button', { class: 'btn small', type: 'button', onclick: close, 'aria-label': 'Close' }, 'Close ✕'));
  const overlay = h('div', { class: 'zoom-overlay', role: 'dialog', 'aria-modal': 'true',
    onclick: (e) => { if (e.target === overlay || e.target.classList.contains('zoom-stage')) close(); } },
  bar, h('div', { class: 'zoom-stage' }, img));
  img.addEventListener('load', () => {
    bar.querySelector('.zoom-size').textContent = `${img.naturalWidth} × ${img.naturalHeight} px`;
    // the largest integer scale that fits the window, at least 1 (native)
    const fit = Math.max(1, Math.floor(Math.min((window.innerWidth - 40) / img.naturalWidth, (window.innerHeight - 90) / img.naturalHeight)));
    setScale(scales.filter((s) => s <= fit).pop() || 1);
  });
  document.addEventListener('keydown', onKey);
  document.body.append(overlay);
  return overlay;
}

export function emptyNote(text, ...more) {
  return h('div', { class: 'empty' }, h('p', null, text), ...more);
}

export function errorBox(e) {
  return h('div', { class: 'error-box', role: 'alert' }, e instanceof Error ? e.message : String(e));
}
