// Shared state: who is signed in (and what their role allows), the job types, and the live job
// list (loaded once, then kept current by the daemon-wide event stream).
import { api, EventStream, jobUrl } from './api.js';
import { ARMS, fmtNum, pool, TERMINAL } from './util.js';

export const session = {
  me: null,            // {name, role}
  authRequired: false,
  info: null,          // GET api/v1/info
  types: [],           // GET api/v1/job-types .types
  typeByName: {},
};

const ROLE_RANK = { read: 0, submit: 1, admin: 2 };
export const canSubmit = () => !!session.me && ROLE_RANK[session.me.role] >= 1;
// Submitters act on their own jobs, admins on all (as the API enforces).
export const canAct = (job) =>
  !!session.me && (session.me.role === 'admin' || (session.me.role === 'submit' && job.owner === session.me.name));

export async function loadSession() {
  const info = await api('api/v1/info', { quiet401: true });
  session.info = info;
  session.me = info.you;
  session.authRequired = !!info.auth_required;
  const t = await api('api/v1/job-types');
  session.types = t.types || [];
  session.typeByName = Object.fromEntries(session.types.map((x) => [x.name, x]));
}

// ---- the headline metric of a job ----
const HEADLINE_KEYS = {
  fit: ['val.cos', 'val.mse_dir_cos', 'loss'],
  train: ARMS.map((a) => `${a}.psnr`),
  collect: ['loss'],
};
export const headlineKeys = (type) => HEADLINE_KEYS[type] || ['loss'];

// {text, title, cls} for a job's latest values (a {key: value} object).
export function headlineText(type, v) {
  if (!v) return null;
  if (type === 'fit' || (v['val.cos'] !== undefined && type !== 'train')) {
    if (v['val.cos'] !== undefined) {
      const beats = v['val.mse_dir_cos'] !== undefined ? v['val.cos'] > v['val.mse_dir_cos'] : null;
      return {
        text: `val cos ${fmtNum(v['val.cos'], 3)} vs ${fmtNum(v['val.mse_dir_cos'], 3)}`,
        title: 'Held-out cosine of the predicted gradient with the true one, next to the MSE direction\'s '
          + '(the trivial predictor). ' + (beats === null ? '' : beats ? 'The PGN beats it.' : 'The PGN does not beat it yet.'),
        cls: beats === null ? '' : beats ? 'good' : 'bad',
      };
    }
    if (v.loss !== undefined) return { text: `loss ${fmtNum(v.loss, 3)}`, title: 'Training loss (window mean)' };
    return null;
  }
  if (type === 'train') {
    const parts = ARMS.filter((a) => v[`${a}.psnr`] !== undefined).map((a) => `${a} ${fmtNum(v[`${a}.psnr`], 3)}`);
    if (!parts.length) return null;
    return { text: `PSNR ${parts.join(' · ')}`, title: 'PSNR (dB) of each arm\'s image against the target, latest logged step' };
  }
  if (v.loss !== undefined) return { text: `loss ${fmtNum(v.loss, 3)}`, title: 'Latest loss' };
  return null;
}

// Seconds left, as the API computes it: the mean time per step so far times the steps left.
export function etaSeconds(job) {
  if (job.state !== 'running' || !job.started_ms || !(job.step > 0) || !(job.total_steps > job.step)) return null;
  const per = (Date.now() - job.started_ms) / 1000 / job.step;
  return per * (job.total_steps - job.step);
}

// ---- the job list ----
export class JobStore {
  constructor() {
    this.jobs = new Map();
    this.values = new Map();      // job id -> {metric key: latest value}
    this.pending = new Map();     // job id -> "cancelling" | "pausing" (asked, not yet done)
    this.updated = new Map();     // job id -> ms of the last event seen
    this.next = null;             // the list's next page
    this.listeners = new Set();
    this.stream = null;
    this.refetching = new Set();
  }

  subscribe(fn) {
    this.listeners.add(fn);
    return () => this.listeners.delete(fn);
  }

  notify(ids) {
    this.listeners.forEach((fn) => fn(ids));
  }

  sorted() {
    return [...this.jobs.values()].sort((a, b) => b.id - a.id);
  }

  updatedMs(job) {
    return Math.max(job.created_ms || 0, job.started_ms || 0, job.finished_ms || 0, this.updated.get(job.id) || 0);
  }

  put(job) {
    this.jobs.set(job.id, job);
    if (job.state !== 'running' && job.state !== 'queued' && job.state !== 'paused') this.pending.delete(job.id);
  }

  async start() {
    // The newest event first, then the list: the stream then replays only what happened since.
    let cursor = null;
    try {
      cursor = (await api('api/v1/events/latest')).last_event_id;
    } catch (e) {
      if (e.status === 401) throw e;
    }
    await this.reload();
    this.stream = new EventStream('api/v1/events', (t, d, id) => this.onEvent(t, d, id), { after: cursor });
  }

  stop() {
    if (this.stream) this.stream.close();
    this.stream = null;
  }

  async reload() {
    const data = await api('api/v1/jobs?limit=200');
    this.jobs.clear();
    for (const j of data.jobs) this.put(j);
    this.next = data.next || null;
    this.notify(null);
    this.loadValues(data.jobs);
  }

  async loadMore() {
    if (!this.next) return;
    const data = await api(this.next.replace(/^\//, ''));
    for (const j of data.jobs) this.put(j);
    this.next = data.next || null;
    this.notify(null);
    this.loadValues(data.jobs);
  }

  // The latest headline values of jobs that ran (one small request each, three at a time).
  loadValues(jobs) {
    const todo = jobs.filter((j) => j.state !== 'queued' && !this.values.has(j.id)).slice(0, 150);
    pool(todo, 3, async (j) => {
      const keys = headlineKeys(j.type).join(',');
      const m = await api(jobUrl(j.id, `/metrics?keys=${encodeURIComponent(keys)}&max_points=1`));
      const v = { ...(this.values.get(j.id) || {}) };
      for (const [k, s] of Object.entries(m.series || {})) {
        const last = s.values[s.values.length - 1];
        if (last !== null && last !== undefined && v[k] === undefined) v[k] = last;
      }
      this.values.set(j.id, v);
      this.notify([j.id]);
    });
  }

  async refetch(id) {
    if (this.refetching.has(id)) return;
    this.refetching.add(id);
    try {
      const j = await api(jobUrl(id));
      this.put(j);
      this.notify([id]);
    } catch (e) {
      if (e.status === 404) {
        this.jobs.delete(id);
        this.notify([id]);
      }
    } finally {
      this.refetching.delete(id);
    }
  }

  onEvent(type, d) {
    if (!d || typeof d !== 'object') return;
    const id = d.job;
    if (id) this.updated.set(id, Date.now());
    switch (type) {
      case 'state': {
        const job = this.jobs.get(id);
        if (d.state === 'cancelling' || d.state === 'pausing') this.pending.set(id, d.state);
        else if (job) {
          this.pending.delete(id);
          job.state = d.state;
          if (d.error) job.error = d.error;
        }
        this.notify([id]);
        this.refetch(id); // times, progress, checkpoint: the job as the API has it now
        break;
      }
      case 'progress': {
        const job = this.jobs.get(id);
        if (!job) return;
        job.step = d.step;
        job.total_steps = d.total;
        job.progress = d.total > 0 ? d.step / d.total : 0;
        this.notify([id]);
        break;
      }
      case 'metrics': {
        const keys = headlineKeys(this.jobs.get(id)?.type);
        const v = { ...(this.values.get(id) || {}) };
        let changed = false;
        for (const k of keys) {
          if (d.values && d.values[k] !== undefined && d.values[k] !== null) {
            v[k] = d.values[k];
            changed = true;
          }
        }
        if (changed) {
          this.values.set(id, v);
          this.notify([id]);
        }
        break;
      }
      case 'deleted':
        this.jobs.delete(id);
        this.values.delete(id);
        this.notify([id]);
        break;
      case 'daemon':
        // pgnd (re)started: interrupted jobs were re-queued; read the list afresh.
        if (d.state === 'started') this.reload().catch(() => {});
        break;
      default:
        break;
    }
  }
}

export const jobStore = new JobStore();

export const isTerminal = (job) => TERMINAL.has(job.state);
