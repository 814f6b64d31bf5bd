// The new-job form, generated from GET /api/v1/job-types: one field per parameter (defaults
// filled in, units and help shown). The server validates; its 422 problems are shown next to the
// fields they name.
import { api, ApiError, jobUrl } from './api.js';
import { canSubmit, session } from './state.js';
import { emptyNote, errorBox, toast } from './ui.js';
import { h, setChildren } from './util.js';

const SHOWN_FIRST = 6; // parameters in view; the rest under "More parameters"

function fieldId(name) {
  return `f-${name.replace(/[^A-Za-z0-9_-]/g, '_')}`;
}

function rangeText(p) {
  const has = (x) => x !== undefined && x !== null;
  if (!has(p.min) && !has(p.max)) return '';
  const fmt = (x) => (Math.abs(x) >= 1e6 ? x.toExponential(0).replace('e+', 'e') : String(x));
  return `${has(p.min) ? fmt(p.min) : '…'} – ${has(p.max) ? fmt(p.max) : '…'}`;
}

// One form control for a parameter spec; returns {el, get()} where get() gives the JSON value,
// undefined (leave it to the server's default) or {invalid: message}.
function control(p, value) {
  const id = fieldId(p.name);
  const v = value !== undefined ? value : p.default;
  switch (p.kind) {
    case 'integer':
    case 'number': {
      const input = h('input', { id, name: p.name, type: 'number', inputmode: p.kind === 'integer' ? 'numeric' : 'decimal',
        step: p.kind === 'integer' ? '1' : 'any', value: v ?? '', required: p.required,
        min: p.min ?? undefined, max: p.max ?? undefined });
      return {
        el: input,
        get: () => {
          if (input.validity.badInput) return { invalid: 'is not a number' };
          if (input.value.trim() === '') return p.required ? '' : undefined;
          return Number(input.value);
        },
      };
    }
    case 'boolean': {
      const input = h('input', { id, name: p.name, type: 'checkbox', checked: !!v });
      return { el: input, get: () => input.checked };
    }
    case 'choice': {
      const sel = h('select', { id, name: p.name }, (p.choices || []).map((c) => h('option', { value: c }, c)));
      if (v !== undefined && v !== null) sel.value = v;
      return { el: sel, get: () => sel.value };
    }
    case 'choices': {
      const chosen = new Set(Array.isArray(v) ? v : []);
      const boxes = (p.choices || []).map((c) => h('input', { type: 'checkbox', name: p.name, value: c, checked: chosen.has(c),
        id: `${id}-${c}` }));
      const el = h('div', { class: 'choices', id, role: 'group' },
        boxes.map((b) => h('label', { class: 'check', for: b.id }, b, ` ${b.value}`)));
      return { el, get: () => boxes.filter((b) => b.checked).map((b) => b.value) };
    }
    default: { // string, file, dir
      const placeholder = p.kind === 'file' ? 'path of a file on the pgnd machine'
        : p.kind === 'dir' ? 'path of a folder on the pgnd machine'
        : p.kind === 'path' ? 'path of a file or folder on the pgnd machine' : '';
      const input = h('input', { id, name: p.name, type: 'text', value: v ?? '', required: p.required, placeholder,
        spellcheck: 'false', autocomplete: 'off', class: p.kind === 'file' || p.kind === 'dir' || p.kind === 'path' ? 'path' : '' });
      return { el: input, get: () => input.value };
    }
  }
}

function field(p, value) {
  const c = control(p, value);
  const range = rangeText(p);
  const isBool = p.kind === 'boolean';
  const label = h('label', { for: fieldId(p.name), class: 'field-label' }, p.name, p.required ? h('span', { class: 'req', title: 'required' }, ' *') : null);
  const el = h('div', { class: `field kind-${p.kind}`, 'data-field': p.name },
    isBool ? null : label,
    h('div', { class: 'control' },
      c.el,
      isBool ? h('label', { for: fieldId(p.name), class: 'bool-label' }, p.name) : null,
      p.unit ? h('span', { class: 'unit' }, p.unit) : null),
    h('div', { class: 'help' }, p.help || '', range ? h('span', { class: 'range' }, ` (${range})`) : null,
      p.default !== undefined && p.default !== '' && !p.required && !isBool
        ? h('span', { class: 'default' }, ` default ${JSON.stringify(p.default)}`) : null),
    h('div', { class: 'problem', role: 'alert', hidden: true }));
  return { el, get: c.get, spec: p };
}

export function renderNewJob(main, parts, query) {
  if (!canSubmit()) {
    main.append(h('h1', null, 'New job'),
      emptyNote(`Your token (${session.me?.name}) has the role "${session.me?.role}": you can watch jobs, not submit them.`));
    return null;
  }
  if (!session.types.length) {
    main.append(h('h1', null, 'New job'), emptyNote('This pgnd offers no job types.'));
    return null;
  }
  const typeName = session.typeByName[parts[1]] ? parts[1] : session.types[0].name;
  const type = session.typeByName[typeName];
  const fromId = query.get('from');

  const picker = h('div', { class: 'type-picker', role: 'tablist', 'aria-label': 'Job type' },
    session.types.map((t) => h('a', {
      href: `#/new/${t.name}`, role: 'tab', 'aria-selected': t.name === typeName ? 'true' : 'false',
      class: `type-card${t.name === typeName ? ' active' : ''}`, 'data-type': t.name,
    }, h('strong', null, t.name), h('span', null, t.title))));

  const holder = h('div');
  main.append(h('div', { class: 'page-head' }, h('h1', null, 'New job')), picker, holder);

  const build = (values, note) => {
    const fields = type.params.map((p) => field(p, values ? values[p.name] : undefined));
    const priority = field({ name: 'priority', kind: 'integer', default: 0, min: -100, max: 100,
      help: 'Queued jobs with a higher priority start first' }, values ? values.__priority : undefined);
    const first = fields.filter((f, i) => i < SHOWN_FIRST || f.spec.required);
    const rest = fields.filter((f) => !first.includes(f));
    const more = h('details', { class: 'more-params' },
      h('summary', null, `More parameters (${rest.length + 1})`),
      h('div', { class: 'grid' }, rest.map((f) => f.el), priority.el));
    const summary = h('div', { class: 'form-summary', role: 'alert', hidden: true });
    const preview = h('pre', { class: 'json-preview' });
    const submitBtn = h('button', { class: 'btn primary', type: 'submit' }, `Submit ${type.name} job`);

    const collect = () => {
      const params = {};
      const local = [];
      for (const f of fields) {
        const v = f.get();
        if (v && typeof v === 'object' && !Array.isArray(v) && v.invalid) local.push({ field: f.spec.name, detail: v.invalid });
        else if (v !== undefined) params[f.spec.name] = v;
      }
      const body = { type: type.name, params };
      const pr = priority.get();
      if (pr && typeof pr === 'object' && pr.invalid) local.push({ field: 'priority', detail: pr.invalid });
      else if (pr !== undefined && pr !== 0) body.priority = pr;
      return { body, local };
    };
    const updatePreview = () => {
      const { body } = collect();
      preview.textContent = `curl -s -X POST ${location.origin}${location.pathname.replace(/index\.html$/, '')}api/v1/jobs \\\n`
        + `  -H 'Content-Type: application/json' -d '${JSON.stringify(body)}'`;
    };

    const clearProblems = () => {
      form.querySelectorAll('.field .problem').forEach((p) => { p.hidden = true; p.textContent = ''; });
      form.querySelectorAll('[aria-invalid]').forEach((x) => x.removeAttribute('aria-invalid'));
      form.querySelectorAll('.field.invalid').forEach((x) => x.classList.remove('invalid'));
      summary.hidden = true;
      summary.replaceChildren();
    };
    const showProblems = (detail, problems) => {
      const unplaced = [];
      let firstEl = null;
      for (const pr of problems) {
        const name = String(pr.field || '').replace(/^params\./, '');
        const f = form.querySelector(`.field[data-field="${CSS.escape(name)}"]`);
        if (!f) {
          unplaced.push(pr);
          continue;
        }
        const box = f.querySelector('.problem');
        box.textContent = box.textContent ? `${box.textContent}; ${pr.detail}` : pr.detail;
        box.hidden = false;
        f.classList.add('invalid');
        const input = f.querySelector('input,select');
        if (input) input.setAttribute('aria-invalid', 'true');
        if (f.closest('details')) f.closest('details').open = true;
        if (!firstEl) firstEl = f;
      }
      summary.hidden = false;
      setChildren(summary, h('strong', null, detail || 'The job was not accepted'),
        unplaced.length ? h('ul', null, unplaced.map((p) => h('li', null, p.field ? `${p.field}: ${p.detail}` : p.detail))) : null);
      if (firstEl) {
        firstEl.scrollIntoView({ block: 'center' });
        firstEl.querySelector('input,select')?.focus({ preventScroll: true });
      }
    };

    const form = h('form', { class: 'job-form', novalidate: true, 'data-type': type.name,
      oninput: updatePreview, onchange: updatePreview,
      onsubmit: async (e) => {
        e.preventDefault();
        clearProblems();
        const { body, local } = collect();
        if (local.length) {
          showProblems(`${local.length} field${local.length > 1 ? 's are' : ' is'} not valid`, local);
          return;
        }
        submitBtn.disabled = true;
        submitBtn.textContent = 'Submitting…';
        try {
          const job = await api('api/v1/jobs', { method: 'POST', body });
          toast(`Job ${job.id} submitted`);
          location.hash = `#/jobs/${job.id}`;
        } catch (err) {
          if (err instanceof ApiError && err.status === 422 && err.body && Array.isArray(err.body.problems)) {
            showProblems(err.body.detail, err.body.problems);
          } else {
            showProblems(err.message, []);
          }
        } finally {
          submitBtn.disabled = false;
          submitBtn.textContent = `Submit ${type.name} job`;
        }
      } },
    h('p', { class: 'lead' }, type.title),
    note || null,
    summary,
    h('div', { class: 'grid' }, first.map((f) => f.el)),
    more,
    h('div', { class: 'form-actions' }, submitBtn, h('a', { class: 'btn', href: '#/jobs' }, 'Cancel')),
    h('details', { class: 'api-preview' }, h('summary', null, 'The same request with curl'), preview));
    holder.replaceChildren(form);
    updatePreview();
    const firstInput = form.querySelector('input,select');
    if (firstInput) firstInput.focus({ preventScroll: true });
  };

  if (fromId) {
    api(jobUrl(fromId)).then((j) => {
      if (j.type !== typeName) return build(null);
      build({ ...j.params, __priority: j.priority }, h('p', { class: 'note' }, `Parameters copied from job ${j.id}.`));
    }).catch((e) => build(null, errorBox(e)));
  } else {
    build(null);
  }
  return null;
}
