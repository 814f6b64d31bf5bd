// pgnd dashboard: boot (who am I, job types, live job list), header, sign-in, and the router
// (hash routes, so any path under which pgnd is served works):
//   #/jobs[?state=&type=]    the live jobs table
//   #/new[/TYPE][?from=ID]   the new-job form (optionally copying job ID's parameters)
//   #/jobs/ID[/TAB]          a job: overview, curves, fields, compare, artifacts
import { api, ApiError, onStreamStatus, onUnauthorized } from './api.js';
import { renderJob } from './job.js';
import { renderJobs } from './jobs.js';
import { renderNewJob } from './newjob.js';
import { canSubmit, jobStore, loadSession, session } from './state.js';
import { errorBox } from './ui.js';
import { h, parseHash } from './util.js';

const main = document.getElementById('main');
const who = document.getElementById('who');
const banner = document.getElementById('banner');
let view = null;     // {cleanup, update} of the current page
let booted = false;

function renderHeader() {
  const me = session.me;
  document.querySelectorAll('[data-nav="new"]').forEach((a) => { a.hidden = !canSubmit(); });
  if (!me) {
    who.replaceChildren();
    return;
  }
  who.replaceChildren(h('span', null,
    h('span', { class: 'who', title: session.authRequired ? 'signed in with a token' : 'this pgnd has no tokens: open to local users' },
      me.name, ' ', h('span', { class: `role role-${me.role}` }, me.role)),
    session.authRequired ? h('button', { class: 'btn small link', type: 'button', onclick: () => showSignIn('Sign in with another token.') }, 'switch token') : null));
  const t = session.info?.teacher;
  banner.replaceChildren();
  if (t && t.random) {
    banner.append(h('div', { class: 'banner warn' },
      h('strong', null, 'Random teacher. '),
      'pgnd has no teacher weights (teacher_weights: VGG-19, or the inception3 tfjs model that make teacher fetches), so its "perceptual" loss and gradients are those of a random network, not a perceptual loss. Fine for trying things out; not for results.'));
  } else if (t && t.description) {
    // Which perceptual loss every job's numbers mean: VGG-19 (the paper's) or inception3.
    banner.append(h('div', { class: 'banner info', 'data-teacher': t.description.split(',')[0] }, 'Teacher: ', t.description));
  }
}

function highlightNav(parts) {
  const section = parts[0] === 'new' ? 'new' : 'jobs';
  document.querySelectorAll('[data-nav]').forEach((a) => a.classList.toggle('active', a.dataset.nav === section));
}

function route() {
  if (!booted) return;
  const { parts, query } = parseHash(location.hash);
  highlightNav(parts);
  if (view && view.update && view.update(parts, query)) return;
  if (view && view.cleanup) view.cleanup();
  view = null;
  main.replaceChildren();
  window.scrollTo(0, 0);
  let r;
  if (parts[0] === 'new') r = renderNewJob(main, parts, query);
  else if (parts[0] === 'jobs' && parts[1]) r = renderJob(main, parts, query);
  else r = renderJobs(main, query);
  view = typeof r === 'function' ? { cleanup: r } : r;
  document.title = parts[0] === 'jobs' && parts[1] ? `Job ${parts[1]} · pgnd` : parts[0] === 'new' ? 'New job · pgnd' : 'Jobs · pgnd';
}

// ---- sign-in ----
let signInShown = false;
function showSignIn(message) {
  if (signInShown) return;
  signInShown = true;
  if (view && view.cleanup) view.cleanup();
  view = null;
  const input = h('input', { type: 'password', id: 'token', name: 'token', autocomplete: 'off', spellcheck: 'false',
    placeholder: 'pgnd_…', required: true, 'aria-describedby': 'token-help' });
  const err = h('div', { class: 'problem', role: 'alert', hidden: true });
  const btn = h('button', { class: 'btn primary', type: 'submit' }, 'Sign in');
  const form = h('form', { class: 'signin', id: 'signin',
    onsubmit: async (e) => {
      e.preventDefault();
      err.hidden = true;
      btn.disabled = true;
      try {
        // trades the token for an HttpOnly session cookie (12 h); the token is not kept
        await api('api/v1/session', { method: 'POST', token: input.value.trim(), quiet401: true });
        input.value = '';
        signInShown = false;
        await boot();
      } catch (ex) {
        err.textContent = ex instanceof ApiError && ex.status === 401 ? 'This token is not valid (unknown or revoked).' : ex.message;
        err.hidden = false;
        input.focus();
      } finally {
        btn.disabled = false;
      }
    } },
  h('h1', null, 'Sign in'),
  h('p', null, message || 'This pgnd requires a token.'),
  h('label', { for: 'token' }, 'API token'),
  input,
  h('p', { class: 'help', id: 'token-help' }, 'An admin creates one with ', h('code', null, 'pgnd token add NAME --role read|submit|admin'),
    '. The browser trades it for a session cookie (valid 12 hours, until pgnd restarts) and does not store the token.'),
  err,
  h('div', { class: 'form-actions' }, btn,
    session.me ? h('button', { class: 'btn', type: 'button', onclick: () => { signInShown = false; route(); } }, 'Back') : null));
  main.replaceChildren(form);
  input.focus();
}

onUnauthorized(() => {
  jobStore.stop();
  session.me = null;
  renderHeader();
  showSignIn('Your session has ended (it lasts 12 hours, or until pgnd restarts). Sign in again.');
});

async function boot() {
  booted = false;
  jobStore.stop();
  try {
    await loadSession();
  } catch (e) {
    if (e.status === 401) {
      session.me = null;
      renderHeader();
      showSignIn();
      return;
    }
    main.replaceChildren(errorBox(e), h('p', null, h('button', { class: 'btn', type: 'button', onclick: () => boot() }, 'Try again')));
    return;
  }
  renderHeader();
  try {
    await jobStore.start();
  } catch (e) {
    if (e.status === 401) return; // onUnauthorized shows the sign-in form
    main.replaceChildren(errorBox(e));
    return;
  }
  booted = true;
  if (view && view.cleanup) view.cleanup();
  view = null;
  route();
}

onStreamStatus((s) => {
  const el = document.getElementById('live');
  el.dataset.status = s;
  el.title = { live: 'live: updates arrive as they happen', connecting: 'connecting to the event stream…',
    offline: 'offline: pgnd cannot be reached; retrying', idle: '' }[s] || s;
  el.querySelector('.live-text').textContent = { live: 'live', connecting: 'connecting', offline: 'offline', idle: '' }[s] || s;
});

window.addEventListener('hashchange', route);
boot();
