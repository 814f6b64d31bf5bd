// The REST API (relative URLs, so the dashboard also works behind a proxy under a sub-path) and
// Server-Sent Event streams that reconnect and resume where they stopped.
//
// Authentication: when pgnd has tokens, the sign-in form trades a token for pgnd's HttpOnly
// session cookie (POST api/v1/session with "Authorization: Bearer"); every request and the event
// streams then carry the cookie. The token itself is never stored by the browser.

export class ApiError extends Error {
  constructor(status, body) {
    const detail = body && typeof body === 'object' ? body.detail || body.title : body;
    super(detail ? String(detail) : `HTTP ${status}`);
    this.status = status;
    this.body = body;
  }
}

const unauthorizedHandlers = new Set();
// fn() runs when a request answers 401 (the session expired or pgnd restarted).
export function onUnauthorized(fn) {
  unauthorizedHandlers.add(fn);
  return () => unauthorizedHandlers.delete(fn);
}

export async function api(path, { method = 'GET', body, token, quiet401 = false } = {}) {
  const headers = { Accept: 'application/json' };
  if (body !== undefined) headers['Content-Type'] = 'application/json';
  if (token) headers.Authorization = `Bearer ${token}`;
  let res;
  try {
    res = await fetch(path, {
      method, headers, credentials: 'same-origin', cache: 'no-store',
      body: body === undefined ? undefined : JSON.stringify(body),
    });
  } catch (e) {
    throw new ApiError(0, { detail: `pgnd cannot be reached (${e.message})` });
  }
  let data = null;
  const text = res.status === 204 ? '' : await res.text();
  if (text) {
    try { data = JSON.parse(text); } catch { data = text; }
  }
  if (!res.ok) {
    if (res.status === 401 && !quiet401) unauthorizedHandlers.forEach((fn) => fn());
    throw new ApiError(res.status, data);
  }
  return data;
}

export const jobUrl = (id, rest = '') => `api/v1/jobs/${encodeURIComponent(id)}${rest}`;

// ---- live status (the dot in the header) ----
const streams = new Set();
const statusListeners = new Set();
export function onStreamStatus(fn) {
  statusListeners.add(fn);
  fn(streamStatus());
  return () => statusListeners.delete(fn);
}
function streamStatus() {
  let s = 'idle';
  for (const st of streams) {
    if (st.status === 'offline') return 'offline';
    if (st.status === 'connecting') s = 'connecting';
    else if (st.status === 'live' && s === 'idle') s = 'live';
  }
  return s;
}
function notifyStatus() {
  const s = streamStatus();
  statusListeners.forEach((fn) => fn(s));
}

const EVENT_TYPES = ['state', 'progress', 'metrics', 'artifact', 'checkpoint', 'log', 'daemon', 'deleted', 'message'];

// An event stream: `onEvent(type, data, id)` for each event. `after` is the id to resume after
// (the stream replays what came since). The browser reconnects by itself after a dropped
// connection (sending Last-Event-ID); when the server refuses or is gone, this reopens the
// stream itself with ?after=<last id>, backing off up to 15 s.
export class EventStream {
  constructor(url, onEvent, { after = null } = {}) {
    this.url = url;
    this.onEvent = onEvent;
    this.after = after;
    this.status = 'connecting';
    this.retryMs = 1000;
    this.closed = false;
    this.timer = null;
    streams.add(this);
    this.open();
  }

  open() {
    if (this.closed) return;
    const sep = this.url.includes('?') ? '&' : '?';
    const url = this.after !== null && this.after !== undefined ? `${this.url}${sep}after=${this.after}` : this.url;
    const es = new EventSource(url);
    this.es = es;
    this.setStatus('connecting');
    es.onopen = () => {
      this.retryMs = 1000;
      this.setStatus('live');
    };
    for (const t of EVENT_TYPES) {
      es.addEventListener(t, (ev) => {
        const id = Number(ev.lastEventId);
        if (Number.isFinite(id) && id > 0) this.after = id;
        let data = null;
        try { data = JSON.parse(ev.data); } catch { data = ev.data; }
        try { this.onEvent(t, data, id); } catch (e) { console.error('event handler', t, e); }
      });
    }
    es.onerror = () => {
      if (this.closed) return;
      if (es.readyState === EventSource.CLOSED) {
        // Refused (401, 404, 503...) or the server went away: check why, then try again later.
        this.setStatus('offline');
        es.close();
        clearTimeout(this.timer);
        this.timer = setTimeout(async () => {
          try {
            await api('api/v1/info');
          } catch (e) {
            if (e.status === 401) return; // the sign-in form takes over; it restarts the streams
          }
          this.open();
        }, this.retryMs);
        this.retryMs = Math.min(this.retryMs * 2, 15000);
      } else {
        this.setStatus('connecting');
      }
    };
  }

  setStatus(s) {
    this.status = s;
    notifyStatus();
  }

  close() {
    this.closed = true;
    clearTimeout(this.timer);
    if (this.es) this.es.close();
    streams.delete(this);
    notifyStatus();
  }
}
