// The jobs table: live (the daemon-wide event stream), filtered by state and type.
import { canSubmit, headlineText, jobStore, session } from './state.js';
import { actionButtons, emptyNote, progressBar, stateBadge } from './ui.js';
import { fmtAgo, fmtDate, fmtWhen, h, perFrame, STATES } from './util.js';

export function renderJobs(main, query) {
  const filter = { state: query.get('state') || '', type: query.get('type') || '' };
  const setFilter = (k, v) => {
    filter[k] = v;
    const q = new URLSearchParams();
    if (filter.state) q.set('state', filter.state);
    if (filter.type) q.set('type', filter.type);
    const hash = `#/jobs${q.toString() ? `?${q}` : ''}`;
    history.replaceState(null, '', hash);
    renderFilters();
    renderRows();
  };

  const stateChips = h('div', { class: 'chips', role: 'group', 'aria-label': 'Filter by state' });
  const typeSelect = h('select', { 'aria-label': 'Filter by type', id: 'type-filter',
    onchange: (e) => setFilter('type', e.target.value) },
  h('option', { value: '' }, 'all types'),
  session.types.map((t) => h('option', { value: t.name }, t.name)));
  typeSelect.value = filter.type;

  const tbody = h('tbody');
  const table = h('table', { class: 'jobs', id: 'jobs-table' },
    h('thead', null, h('tr', null,
      h('th', { class: 'num' }, 'ID'), h('th', null, 'Type'), h('th', null, 'Owner'), h('th', null, 'State'),
      h('th', { class: 'col-progress' }, 'Progress'), h('th', null, 'Headline metric'),
      h('th', null, 'Created'), h('th', null, 'Updated'), h('th', { class: 'col-actions' }, h('span', { class: 'sr' }, 'Actions')))),
    tbody);
  const empty = h('div');
  const more = h('div', { class: 'more' });

  main.append(
    h('div', { class: 'page-head' },
      h('h1', null, 'Jobs'),
      h('span', { class: 'spacer' }),
      canSubmit() ? h('a', { class: 'btn primary', href: '#/new' }, '+ New job') : null),
    h('div', { class: 'toolbar' }, stateChips, h('label', { class: 'inline' }, 'Type ', typeSelect)),
    h('div', { class: 'table-wrap' }, table),
    empty, more);

  function counts() {
    const c = { '': 0 };
    for (const j of jobStore.jobs.values()) {
      if (filter.type && j.type !== filter.type) continue;
      c[''] += 1;
      c[j.state] = (c[j.state] || 0) + 1;
    }
    return c;
  }

  function renderFilters() {
    const c = counts();
    stateChips.replaceChildren(...['', ...STATES].map((s) => h('button', {
      type: 'button',
      class: `chip${filter.state === s ? ' active' : ''}${s ? ` state-${s}` : ''}`,
      'aria-pressed': filter.state === s ? 'true' : 'false',
      'data-state': s || 'all',
      onclick: () => setFilter('state', s),
    }, s || 'all', h('span', { class: 'count' }, c[s] || 0))));
  }

  const rows = new Map();
  function rowFor(job) {
    const open = () => { location.hash = `#/jobs/${job.id}`; };
    const head = headlineText(job.type, jobStore.values.get(job.id));
    const cells = [
      h('td', { class: 'num' }, h('a', { href: `#/jobs/${job.id}` }, job.id)),
      h('td', null, job.type),
      h('td', null, job.owner),
      h('td', { class: 'col-state' }, stateBadge(job)),
      h('td', { class: 'col-progress' }, progressBar(job)),
      h('td', { class: `headline ${head?.cls || ''}`, title: head?.title || '' }, head ? head.text : '—'),
      h('td', { title: fmtDate(job.created_ms) }, fmtWhen(job.created_ms)),
      h('td', { title: fmtDate(jobStore.updatedMs(job)) }, fmtAgo(jobStore.updatedMs(job))),
      h('td', { class: 'col-actions' }, actionButtons(job)),
    ];
    let tr = rows.get(job.id);
    if (!tr) {
      tr = h('tr', { 'data-job': job.id, tabindex: 0,
        onclick: (e) => { if (!e.target.closest('a,button')) open(); },
        onkeydown: (e) => { if (e.key === 'Enter' && e.target === tr) open(); } });
      rows.set(job.id, tr);
    }
    tr.dataset.state = job.state;
    tr.replaceChildren(...cells);
    return tr;
  }

  function visible() {
    return jobStore.sorted().filter((j) => (!filter.state || j.state === filter.state) && (!filter.type || j.type === filter.type));
  }

  function renderRows() {
    const list = visible();
    const keep = new Set(list.map((j) => j.id));
    for (const [id, tr] of rows) {
      if (!keep.has(id)) {
        tr.remove();
        rows.delete(id);
      }
    }
    // in order: reuse rows, insert new ones where they belong
    let prev = null;
    for (const j of list) {
      const tr = rowFor(j);
      const want = prev ? prev.nextSibling : tbody.firstChild;
      if (want !== tr) tbody.insertBefore(tr, want);
      prev = tr;
    }
    empty.replaceChildren();
    if (!list.length) {
      empty.append(jobStore.jobs.size
        ? emptyNote('No jobs match these filters.')
        : emptyNote('No jobs yet.', canSubmit() ? h('a', { class: 'btn primary', href: '#/new' }, 'Submit the first one') : null));
    }
    more.replaceChildren(jobStore.next ? h('button', { class: 'btn', type: 'button',
      onclick: () => jobStore.loadMore() }, 'Load older jobs') : '');
    renderFilters();
  }

  const dirty = new Set();
  let all = true;
  const flush = perFrame(() => {
    if (all) renderRows();
    else {
      for (const id of dirty) {
        const j = jobStore.jobs.get(id);
        const tr = rows.get(id);
        const shown = j && (!filter.state || j.state === filter.state) && (!filter.type || j.type === filter.type);
        if (!j || !shown !== !tr) { renderRows(); break; }
        if (tr) rowFor(j);
      }
      renderFilters();
    }
    dirty.clear();
    all = false;
  });
  const unsub = jobStore.subscribe((ids) => {
    if (!ids) all = true;
    else ids.forEach((id) => dirty.add(id));
    flush();
  });
  // relative times and ETAs move on by themselves
  const tick = setInterval(() => { all = true; flush(); }, 5000);
  renderRows();
  return () => {
    unsub();
    clearInterval(tick);
  };
}
