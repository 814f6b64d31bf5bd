// The job page: header (state, progress, actions) and tabs: overview (parameters, state history,
// log), curves, gradient fields, compare (train jobs) and artifacts. One JobModel holds what the
// page knows of the job and keeps it current from the job's event stream.
import { api, EventStream, jobUrl } from './api.js';
import { renderCurves } from './curves.js';
import { renderCompare, renderFields } from './fields.js';
import { canSubmit, jobStore, session } from './state.js';
import { actionButtons, emptyNote, errorBox, progressBar, stateBadge } from './ui.js';
import { debounce, fmtBytes, fmtDate, fmtDuration, fmtWhen, h, perFrame, setChildren, TERMINAL } from './util.js';

export class JobModel {
  constructor(id) {
    this.id = id;
    this.job = null;
    this.history = [];    // state events: {state, error, resume_step, by, at}
    this.log = [];        // {level, message, at}
    this.series = {};     // metric key -> {steps, values}
    this.artifacts = [];  // as GET .../artifacts lists them
    this.cursor = 0;      // events up to this id were read through the REST API
    this.deleted = false;
    this.listeners = new Set();
    this.refetchJob = debounce(() => this.loadJob().catch(() => {}), 300);
    this.refetchArtifacts = debounce(() => this.loadArtifacts().catch(() => {}), 700);
  }

  on(fn) {
    this.listeners.add(fn);
    return () => this.listeners.delete(fn);
  }

  emit(what) {
    this.listeners.forEach((fn) => fn(what));
  }

  async start() {
    try {
      this.cursor = (await api('api/v1/events/latest')).last_event_id;
    } catch (e) {
      if (e.status === 401) throw e;
      this.cursor = Number.MAX_SAFE_INTEGER; // no cursor: take metrics from the REST API only
    }
    await this.loadJob();
    await Promise.all([this.loadSeries(), this.loadArtifacts()]);
    // The whole stream of this job (replayed from its start) gives its state history and log.
    this.stream = new EventStream(jobUrl(this.id, '/events'), (t, d, id) => this.onEvent(t, d, id), { after: 0 });
  }

  stop() {
    if (this.stream) this.stream.close();
  }

  async loadJob() {
    this.job = await api(jobUrl(this.id));
    jobStore.put(this.job);
    this.emit('job');
  }

  async loadSeries() {
    const m = await api(jobUrl(this.id, '/metrics?max_points=2000'));
    this.series = {};
    for (const [k, s] of Object.entries(m.series || {})) this.series[k] = { steps: s.steps.slice(), values: s.values.slice() };
    this.emit('series');
  }

  async loadArtifacts() {
    const a = await api(jobUrl(this.id, '/artifacts'));
    this.artifacts = a.artifacts || [];
    this.emit('artifacts');
  }

  onEvent(type, d, id) {
    if (!d || typeof d !== 'object') return;
    const live = id > this.cursor;
    const at = live ? Date.now() : null;
    switch (type) {
      case 'state':
        this.history.push({ state: d.state, error: d.error, resume_step: d.resume_step, by: d.by, at, id });
        if (live && d.state === 'running' && d.resume_step !== undefined) this.truncate(d.resume_step);
        this.emit('history');
        if (live) this.refetchJob();
        break;
      case 'log':
        this.log.push({ level: d.level, message: d.message, at, id });
        this.emit('log');
        break;
      case 'progress':
        if (live && this.job) {
          this.job.step = d.step;
          this.job.total_steps = d.total;
          this.emit('job');
        }
        break;
      case 'metrics':
        if (live && d.values) {
          for (const [k, v] of Object.entries(d.values)) {
            const s = this.series[k] || (this.series[k] = { steps: [], values: [] });
            if (s.steps.length && s.steps[s.steps.length - 1] >= d.step) continue; // already read
            s.steps.push(d.step);
            s.values.push(v);
          }
          this.emit('series');
        }
        break;
      case 'artifact':
      case 'checkpoint':
        if (live) this.refetchArtifacts();
        if (live && type === 'checkpoint') this.refetchJob();
        break;
      default:
        break;
    }
  }

  // A resumed run replaces what was logged after the checkpoint it resumed from.
  truncate(step) {
    for (const s of Object.values(this.series)) {
      let n = s.steps.length;
      while (n && s.steps[n - 1] > step) n--;
      s.steps.length = n;
      s.values.length = n;
    }
    this.emit('series');
  }
}

const TABS = [
  { id: 'overview', label: 'Overview' },
  { id: 'curves', label: 'Curves' },
  { id: 'fields', label: 'Gradient fields' },
  { id: 'compare', label: 'Compare', only: (j) => j.type === 'train' },
  { id: 'artifacts', label: 'Artifacts' },
];

export function renderJob(main, parts) {
  const id = Number(parts[1]);
  const model = new JobModel(id);
  let tab = parts[2] || 'overview';
  let tabCleanup = null;

  const head = h('div', { class: 'job-head' });
  const tabs = h('nav', { class: 'tabs', role: 'tablist' });
  const body = h('div', { class: 'tab-body' });
  main.append(h('a', { class: 'back', href: '#/jobs' }, '← All jobs'), head, tabs, body);

  const renderHead = () => {
    const j = model.job;
    if (!j) return;
    const duration = j.started_ms ? ((j.finished_ms || Date.now()) - j.started_ms) / 1000 : null;
    setChildren(head,
      h('div', { class: 'title-row' },
        h('h1', null, `Job ${j.id} `, h('span', { class: 'type-tag' }, j.type)),
        stateBadge(j),
        h('span', { class: 'spacer' }),
        actionButtons(j),
        canSubmit() && session.typeByName[j.type]
          ? h('a', { class: 'btn small', href: `#/new/${j.type}?from=${j.id}`, title: 'A new job with these parameters' }, 'Clone') : null),
      h('dl', { class: 'meta' },
        h('div', null, h('dt', null, 'owner'), h('dd', null, j.owner)),
        h('div', null, h('dt', null, 'created'), h('dd', { title: fmtDate(j.created_ms) }, fmtWhen(j.created_ms))),
        h('div', null, h('dt', null, 'started'), h('dd', { title: fmtDate(j.started_ms) }, fmtWhen(j.started_ms))),
        h('div', null, h('dt', null, 'finished'), h('dd', { title: fmtDate(j.finished_ms) }, fmtWhen(j.finished_ms))),
        h('div', null, h('dt', null, TERMINAL.has(j.state) ? 'took' : 'running for'), h('dd', null, duration === null ? '—' : fmtDuration(duration))),
        h('div', null, h('dt', null, 'checkpoint'), h('dd', null, j.checkpoint_step === null ? '—' : `step ${j.checkpoint_step}`)),
        j.priority ? h('div', null, h('dt', null, 'priority'), h('dd', null, j.priority)) : null),
      progressBar(j, { wide: true }),
      j.error ? h('div', { class: 'error-box', role: 'alert' }, h('strong', null, 'Failed: '), j.error) : null,
      model.deleted ? h('div', { class: 'error-box' }, 'This job has been deleted.') : null);
  };

  const renderTabs = () => {
    const j = model.job;
    tabs.replaceChildren(...TABS.filter((t) => !t.only || (j && t.only(j))).map((t) => h('a', {
      href: `#/jobs/${id}/${t.id}`, role: 'tab', class: `tab${t.id === tab ? ' active' : ''}`, 'data-tab': t.id,
      'aria-selected': t.id === tab ? 'true' : 'false',
    }, t.label)));
  };

  const renderTab = () => {
    if (tabCleanup) tabCleanup();
    tabCleanup = null;
    body.replaceChildren();
    renderTabs();
    if (!model.job) return;
    const fn = { overview: renderOverview, curves: renderCurves, fields: renderFields, compare: renderCompare,
      artifacts: renderArtifacts }[tab] || renderOverview;
    tabCleanup = fn(body, model) || null;
  };

  const headFrame = perFrame(renderHead);
  const off = model.on((what) => { if (what === 'job') headFrame(); });
  const offStore = jobStore.subscribe((ids) => {
    if (ids && ids.includes(id) && !jobStore.jobs.has(id) && model.job) {
      model.deleted = true;
      headFrame();
    } else if (ids && ids.includes(id)) headFrame(); // pending cancel/pause
  });
  const tick = setInterval(headFrame, 5000);

  body.append(h('p', { class: 'muted' }, 'Loading…'));
  model.start().then(() => {
    renderHead();
    renderTab();
  }).catch((e) => {
    body.replaceChildren(e.status === 404 ? emptyNote(`There is no job ${id}.`, h('a', { href: '#/jobs' }, 'Back to the jobs')) : errorBox(e));
  });

  return {
    cleanup: () => {
      if (tabCleanup) tabCleanup();
      off();
      offStore();
      clearInterval(tick);
      model.stop();
    },
    // same job, another tab: keep the model and its stream
    update: (p) => {
      if (Number(p[1]) !== id || p[0] !== 'jobs') return false;
      tab = p[2] || 'overview';
      renderTab();
      return true;
    },
  };
}

function renderOverview(body, model) {
  const j = model.job;
  const spec = session.typeByName[j.type];
  const specs = spec ? Object.fromEntries(spec.params.map((p) => [p.name, p])) : {};
  const isDefault = (k, v) => specs[k] && JSON.stringify(specs[k].default) === JSON.stringify(v);
  const params = h('table', { class: 'params' },
    h('thead', null, h('tr', null, h('th', null, 'parameter'), h('th', null, 'value'))),
    h('tbody', null, Object.entries(j.params || {}).map(([k, v]) => h('tr', { class: isDefault(k, v) ? 'default' : 'set', title: specs[k]?.help || '' },
      h('td', null, k),
      h('td', null, h('code', null, typeof v === 'string' ? (v === '' ? '""' : v) : JSON.stringify(v)),
        specs[k]?.unit ? h('span', { class: 'unit' }, ` ${specs[k].unit}`) : null)))));

  const hist = h('ol', { class: 'history' });
  const log = h('div', { class: 'log', role: 'log' });
  const renderHistory = () => {
    const items = model.history.map((e) => h('li', { class: `state-${e.state}` },
      h('span', { class: `badge state-${e.state}` }, e.state),
      e.state === 'running' && e.resume_step >= 0 ? ` resumed from step ${e.resume_step}` : '',
      e.by ? ` by ${e.by}` : '',
      e.error ? h('div', { class: 'err' }, e.error) : null,
      e.at ? h('time', null, fmtWhen(e.at)) : null));
    hist.replaceChildren(...(items.length ? items : [h('li', { class: 'muted' }, 'no state changes recorded')]));
  };
  const renderLog = () => {
    const atBottom = log.scrollHeight - log.scrollTop - log.clientHeight < 30;
    log.replaceChildren(...(model.log.length ? model.log.map((l) => h('div', { class: `line level-${l.level}` },
      h('span', { class: 'level' }, l.level), ' ', l.message)) : [h('div', { class: 'muted' }, 'nothing logged')]));
    if (atBottom) log.scrollTop = log.scrollHeight;
  };
  renderHistory();
  renderLog();
  const times = [['created', j.created_ms], ['started', j.started_ms], ['finished', j.finished_ms]].filter((t) => t[1]);
  body.append(h('div', { class: 'overview' },
    h('section', null, h('h2', null, 'Parameters'),
      h('p', { class: 'muted small' }, 'Values set differently from the default are in bold; hover for the help text.'), params),
    h('section', null,
      h('h2', null, 'State history'),
      h('p', { class: 'muted small' }, times.map(([k, t]) => `${k} ${fmtDate(t)}`).join(' · ')),
      hist,
      h('h2', null, 'Log'), log)));
  const hf = perFrame(renderHistory), lf = perFrame(renderLog);
  return model.on((what) => {
    if (what === 'history') hf();
    if (what === 'log') lf();
  });
}

function renderArtifacts(body, model) {
  const tbody = h('tbody');
  const render = () => {
    const list = model.artifacts.slice().sort((a, b) => (a.step - b.step) || a.name.localeCompare(b.name));
    tbody.replaceChildren(...list.map((a) => h('tr', { 'data-artifact': a.name },
      h('td', null, h('a', { href: a.url.replace(/^\//, ''), download: a.name }, a.name)),
      h('td', null, h('span', { class: `kind kind-${a.kind}` }, a.kind)),
      h('td', { class: 'num' }, a.step >= 0 ? a.step : '—'),
      h('td', { class: 'num' }, fmtBytes(a.size)),
      h('td', { title: fmtDate(a.at_ms) }, fmtWhen(a.at_ms)),
      h('td', null, h('code', { class: 'sha', title: a.sha256 }, (a.sha256 || '').slice(0, 12))),
      h('td', null, h('a', { class: 'btn small', href: a.url.replace(/^\//, ''), download: a.name }, 'Download')))));
    if (!list.length) tbody.append(h('tr', null, h('td', { colspan: 7, class: 'muted' }, 'No artifacts yet.')));
  };
  render();
  body.append(h('p', { class: 'muted small' }, 'Images, gradient-field panels, exported models and the latest checkpoint (older checkpoints are pruned).'),
    h('div', { class: 'table-wrap' }, h('table', { class: 'artifacts' },
      h('thead', null, h('tr', null, ['name', 'kind', 'step', 'size', 'written', 'sha-256', ''].map((x) => h('th', { class: x === 'step' || x === 'size' ? 'num' : '' }, x)))), tbody)));
  return model.on((what) => { if (what === 'artifacts') render(); });
}
