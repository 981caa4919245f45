// The outbox-worker console: one page, hash routes, the JSON API of docs/console.md.
//
// Rules this file keeps:
// - Every value that comes from the service is inserted as text (textContent, createTextNode,
//   setAttribute), never parsed as HTML: payloads, error messages and keys are written by
//   applications and may hold markup.
// - No inline script or style anywhere (the service's Content-Security-Policy forbids both).
// - A view's asynchronous work checks that the view is still the current one before it paints,
//   so a slow answer for a page the operator already left changes nothing.
'use strict';

(function () {
  const POLL_INTERVAL_MS = 2000;
  const PAGE_SIZE = 50;

  const state = {
    session: null, // the answer of GET /api/session
    routeGen: 0, // bumped on every navigation; async work of an older route is dropped
    pollTimer: null,
    events: { query: null, next: null, count: 0 },
    dlq: { filter: {}, next: null, selected: new Set(), count: 0 },
    keys: { next: null, count: 0 },
    afterLogin: '#/',
    pausedOverride: null, // {list, until}: this page's own pause/resume answer, see renderOverview
    pausedRendered: null, // what the paused table shows now
  };

  // ---------------------------------------------------------------------------------------------
  // Small DOM helpers. el() never interprets a string as HTML.

  function $(selector, root) {
    return (root || document).querySelector(selector);
  }

  function el(tag, attrs, ...children) {
    const node = document.createElement(tag);
    for (const [name, value] of Object.entries(attrs || {})) {
      if (value === null || value === undefined || value === false) continue;
      if (name === 'text') node.textContent = String(value);
      else if (name === 'class') node.className = value;
      else if (name.startsWith('on') && typeof value === 'function') {
        node.addEventListener(name.slice(2), value);
      } else node.setAttribute(name, value === true ? '' : String(value));
    }
    for (const child of children) appendChild(node, child);
    return node;
  }

  function appendChild(node, child) {
    if (child === null || child === undefined || child === false) return;
    if (Array.isArray(child)) {
      for (const c of child) appendChild(node, c);
    } else if (child instanceof Node) {
      node.appendChild(child);
    } else {
      node.appendChild(document.createTextNode(String(child)));
    }
  }

  const SVG_NS = 'http://www.w3.org/2000/svg';
  function svg(tag, attrs, ...children) {
    const node = document.createElementNS(SVG_NS, tag);
    for (const [name, value] of Object.entries(attrs || {})) {
      if (value === null || value === undefined) continue;
      if (name === 'text') node.textContent = String(value);
      else node.setAttribute(name, String(value));
    }
    for (const child of children) appendChild(node, child);
    return node;
  }

  function setText(selector, value) {
    const node = $(selector);
    if (node) node.textContent = value === null || value === undefined ? '' : String(value);
    return node;
  }

  function clear(node) {
    while (node.firstChild) node.removeChild(node.firstChild);
    return node;
  }

  function emptyRow(columns, text) {
    return el('tr', { class: 'empty' }, el('td', { colspan: columns, text }));
  }

  // ---------------------------------------------------------------------------------------------
  // Formatting.

  function fmtCount(n) {
    if (typeof n !== 'number' || !isFinite(n)) return '–';
    return n.toLocaleString('en-US');
  }

  // "2026-12-03T18:41:50.123456Z" → "2026-12-03 18:41:50" (UTC, as the service sends it).
  function fmtTime(iso) {
    if (!iso) return '—';
    const s = String(iso);
    const m = /^(\d{4}-\d{2}-\d{2})T(\d{2}:\d{2}:\d{2})/.exec(s);
    return m ? m[1] + ' ' + m[2] : s;
  }

  function timeCell(iso) {
    return el('td', { title: iso || null, class: 'mono', text: fmtTime(iso) });
  }

  function fmtDuration(seconds) {
    if (typeof seconds !== 'number' || !isFinite(seconds)) return '–';
    if (seconds < 1) return Math.round(seconds * 1000) + ' ms';
    if (seconds < 60) return seconds.toFixed(seconds < 10 ? 1 : 0) + ' s';
    if (seconds < 3600) return Math.floor(seconds / 60) + ' min ' + Math.floor(seconds % 60) + ' s';
    if (seconds < 86400) return Math.floor(seconds / 3600) + ' h ' + Math.floor((seconds % 3600) / 60) + ' min';
    return Math.floor(seconds / 86400) + ' d ' + Math.floor((seconds % 86400) / 3600) + ' h';
  }

  function fmtLatency(seconds) {
    if (seconds === 0) return '0';
    if (seconds < 1) return +(seconds * 1000).toPrecision(3) + ' ms';
    return +seconds.toPrecision(3) + ' s';
  }

  function fmtRate(v) {
    if (v === 0) return '0';
    if (v < 10) return String(+v.toPrecision(2));
    return String(Math.round(v));
  }

  function prettyJson(value) {
    if (value === null || value === undefined) return 'null';
    if (typeof value === 'string') {
      // A payload stored as text that holds JSON is shown parsed; anything else as the text.
      try {
        return JSON.stringify(JSON.parse(value), null, 2);
      } catch (e) {
        return value;
      }
    }
    return JSON.stringify(value, null, 2);
  }

  function statusBadge(status) {
    const s = String(status || '');
    return el('span', { class: 'badge badge-' + s.toLowerCase(), 'data-status': s, text: s || '—' });
  }

  function eventLink(id) {
    return el('a', { href: '#/events/' + encodeURIComponent(id), class: 'mono', text: id });
  }

  // ---------------------------------------------------------------------------------------------
  // The API. Errors become exceptions whose message is the service's own ("error" of the body).

  class ApiError extends Error {
    constructor(status, message) {
      super(message);
      this.status = status;
    }
  }

  async function api(path, options) {
    const opts = options || {};
    const init = {
      method: opts.method || 'GET',
      credentials: 'same-origin',
      headers: { Accept: 'application/json' },
      cache: 'no-store',
    };
    if (init.method !== 'GET') {
      init.headers['Content-Type'] = 'application/json';
      if (state.session && state.session.csrfToken) {
        init.headers['X-Outbox-CSRF'] = state.session.csrfToken;
      }
      init.body = JSON.stringify(opts.body || {});
    }
    let response;
    try {
      response = await fetch(path, init);
    } catch (e) {
      throw new ApiError(0, 'The service does not answer (' + e.message + ').');
    }
    let body = null;
    const text = await response.text();
    if (text) {
      try {
        body = JSON.parse(text);
      } catch (e) {
        body = null;
      }
    }
    if (!response.ok) {
      const message = body && typeof body.error === 'string' ? body.error : 'HTTP ' + response.status;
      throw new ApiError(response.status, message);
    }
    return body || {};
  }

  function query(params) {
    const q = new URLSearchParams();
    for (const [k, v] of Object.entries(params)) {
      if (v !== null && v !== undefined && v !== '') q.set(k, v);
    }
    const s = q.toString();
    return s ? '?' + s : '';
  }

  function showError(message) {
    const banner = $('#error-banner');
    banner.textContent = message;
    banner.hidden = false;
  }

  function clearError() {
    $('#error-banner').hidden = true;
  }

  function reportError(e, gen) {
    if (gen !== undefined && gen !== state.routeGen) return;
    showError(e && e.message ? e.message : String(e));
    // An action refused for missing credentials means the session ended (expired, or the
    // service restarted): show the page as logged out.
    if (e instanceof ApiError && e.status === 401) loadSession();
  }

  // ---------------------------------------------------------------------------------------------
  // Session and permissions.

  function canAct() {
    const s = state.session;
    return !!(s && !s.readOnly && s.authenticated);
  }

  async function loadSession() {
    try {
      state.session = await api('/api/session');
    } catch (e) {
      state.session = state.session || { readOnly: true, authenticated: false, csrfToken: null };
      showError('Cannot read the session: ' + e.message);
    }
    renderSession();
  }

  function renderSession() {
    const s = state.session || {};
    setText('#instance-name', s.instance ? s.instance + (s.version ? ' · v' + s.version : '') : '');
    const status = clear($('#session-status'));
    const note = $('#permission-note');
    clear(note);
    if (s.readOnly) {
      status.appendChild(el('span', { class: 'badge', id: 'readonly-badge', text: 'read-only' }));
      note.appendChild(document.createTextNode(
        'Read-only console: the service runs without OUTBOX_ADMIN_TOKEN, so retry, skip, purge, ' +
        'pause and resume are not available here.'));
      note.hidden = false;
    } else if (s.authenticated) {
      status.appendChild(el('span', { class: 'muted', text: 'logged in' }));
      status.appendChild(document.createTextNode(' '));
      status.appendChild(el('button', { type: 'button', class: 'secondary', id: 'logout', onclick: logout }, 'Log out'));
      note.hidden = true;
    } else {
      status.appendChild(el('a', { href: '#/login', id: 'login-link', text: 'Log in' }));
      note.appendChild(document.createTextNode('Actions need the admin token: '));
      note.appendChild(el('a', { href: '#/login', text: 'log in' }));
      note.appendChild(document.createTextNode(' to retry, skip, purge, pause or resume.'));
      note.hidden = false;
    }
    applyPermissions();
  }

  // Elements marked data-act change something. On a read-only console they are hidden; on one
  // that wants a login they are disabled, with the reason in their title.
  function applyPermissions(root) {
    const s = state.session || { readOnly: true };
    const allowed = canAct();
    const reason = s.readOnly ? 'read-only console (no OUTBOX_ADMIN_TOKEN)' : 'log in to act';
    for (const node of (root || document).querySelectorAll('[data-act]')) {
      node.hidden = !!s.readOnly;
      if ('disabled' in node && node.tagName !== 'FORM') {
        node.disabled = !allowed;
        if (!allowed) node.title = reason;
        else if (node.title === reason) node.removeAttribute('title');
      }
    }
    updateSelection();
  }

  async function logout() {
    try {
      await api('/api/logout', { method: 'POST', body: {} });
    } catch (e) {
      reportError(e);
    }
    await loadSession();
  }

  // ---------------------------------------------------------------------------------------------
  // Routing.

  function parseHash() {
    const raw = location.hash.replace(/^#/, '') || '/';
    const q = raw.indexOf('?');
    const path = q < 0 ? raw : raw.slice(0, q);
    const params = new URLSearchParams(q < 0 ? '' : raw.slice(q + 1));
    const parts = path.split('/').filter((p) => p !== '').map((p) => {
      try {
        return decodeURIComponent(p);
      } catch (e) {
        return p;
      }
    });
    return { parts, params };
  }

  function stopPolling() {
    if (state.pollTimer !== null) {
      clearTimeout(state.pollTimer);
      state.pollTimer = null;
    }
  }

  function showView(name, nav) {
    for (const view of document.querySelectorAll('.view')) view.hidden = view.id !== 'view-' + name;
    for (const a of document.querySelectorAll('[data-nav]')) {
      a.classList.toggle('active', a.getAttribute('data-nav') === nav);
    }
    document.body.setAttribute('data-view', name);
  }

  function route() {
    stopPolling();
    clearError();
    hideConfirm(false);
    const gen = ++state.routeGen;
    // The route this document shows now, for tests: the hashchange event that leads here runs
    // after the navigation itself, so the address alone does not say that the view has switched.
    document.body.setAttribute('data-route', location.hash || '#/');
    const { parts, params } = parseHash();
    const [first, second] = parts;
    if (first === undefined) {
      showView('overview', 'overview');
      pollOverview(gen);
    } else if (first === 'events' && second !== undefined) {
      showView('event', 'events');
      loadEvent(gen, second);
    } else if (first === 'events') {
      showView('events', 'events');
      searchEvents(gen, params);
    } else if (first === 'dlq') {
      showView('dlq', 'dlq');
      loadDlq(gen, params);
    } else if (first === 'keys') {
      showView('keys', 'keys');
      loadKeys(gen, false);
    } else if (first === 'login') {
      showView('login', null);
      renderLogin();
    } else {
      showView('notfound', null);
    }
  }

  // ---------------------------------------------------------------------------------------------
  // Overview.

  async function pollOverview(gen) {
    state.pollTimer = null;
    try {
      const overview = await api('/api/overview');
      if (gen !== state.routeGen) return;
      renderOverview(overview);
      clearError();
    } catch (e) {
      reportError(e, gen);
    }
    // Only the overview polls; leaving it bumps routeGen and stops the chain here.
    if (gen === state.routeGen) {
      state.pollTimer = setTimeout(() => pollOverview(gen), POLL_INTERVAL_MS);
    }
  }

  function setCount(selector, value) {
    const node = setText(selector, fmtCount(value));
    node.setAttribute('data-value', typeof value === 'number' ? String(value) : '');
  }

  function renderOverview(o) {
    const c = o.counts || {};
    setCount('#count-pending', c.pending);
    setCount('#count-processing', c.processing);
    setCount('#count-completed', c.completed);
    setCount('#count-failed', c.failed);
    setCount('#count-dlq', c.dlq);
    setCount('#count-blocked', c.blockedKeys);
    const age = setText('#backlog-age', fmtDuration(c.backlogAgeSeconds));
    age.setAttribute('data-value', typeof c.backlogAgeSeconds === 'number' ? String(c.backlogAgeSeconds) : '');
    const db = setText('#database-up', o.databaseUp ? 'up' : 'down');
    db.className = 'card-value word ' + (o.databaseUp ? 'good' : 'bad');
    const health = setText('#health', o.health || '–');
    health.className = 'card-value word ' + ({ healthy: 'good', degraded: 'warn', unhealthy: 'bad' }[o.health] || '');
    const st = setText('#service-state', o.state || '–');
    st.className = 'card-value word ' + (o.state === 'serving' ? '' : 'warn');
    setText('#overview-read-at', c.readAt ? 'counts read at ' + fmtTime(c.readAt) + ' UTC by ' + (o.instance || '?') : '');

    const series = o.series || {};
    const points = Array.isArray(series.points) ? series.points : [];
    drawChart($('#chart-throughput'), $('#legend-throughput'), points, series.intervalSeconds, {
      title: 'Throughput (events per second)',
      unit: 'events/s',
      format: fmtRate,
      lines: [
        { key: 'completedPerSecond', label: 'completed', cls: 'series-completed', id: 'completed' },
        { key: 'retriedPerSecond', label: 'retried', cls: 'series-retried', id: 'retried' },
        { key: 'deadLetteredPerSecond', label: 'dead-lettered', cls: 'series-dead', id: 'dead-lettered' },
      ],
    });
    drawChart($('#chart-latency'), $('#legend-latency'), points, series.intervalSeconds, {
      title: 'End-to-end latency',
      unit: 'latency',
      format: fmtLatency,
      // The service reports 0 for an interval in which no event completed: a gap, not a value.
      skip: (p) => !(Number(p.completedPerSecond) > 0),
      lines: [
        { key: 'latencyP50Seconds', label: 'p50', cls: 'series-p50', id: 'p50' },
        { key: 'latencyP95Seconds', label: 'p95', cls: 'series-p95', id: 'p95' },
      ],
    });

    renderWorkers(o.workers || []);
    renderInstances(o.instances || []);
    // The overview's paused list is the janitor's, up to 5 s old: right after this page paused or
    // resumed a type, it keeps showing the action's own answer until the janitor agrees (or for
    // 15 s at most, in case another operator changed the list meanwhile).
    let paused = Array.isArray(o.paused) ? o.paused : [];
    const override = state.pausedOverride;
    if (override) {
      if (pausedTypes(paused) === pausedTypes(override.list) || Date.now() > override.until) {
        state.pausedOverride = null;
      } else {
        paused = override.list;
      }
    }
    renderPaused(paused);
  }

  function pausedTypes(list) {
    return JSON.stringify(list.map((p) => p.eventType).sort());
  }

  function renderWorkers(workers) {
    const body = clear($('#workers-table tbody'));
    if (workers.length === 0) body.appendChild(emptyRow(5, 'no handler processes'));
    for (const w of workers) {
      const events = Array.isArray(w.events) ? w.events : [];
      body.appendChild(el('tr', { 'data-slot': w.slot },
        el('td', { class: 'mono', text: w.slot }),
        el('td', { class: 'mono', text: w.pid }),
        el('td', null, el('span', { class: 'badge badge-' + String(w.state || ''), text: w.state })),
        el('td', { class: 'wrap' }, events.length === 0 ? el('span', { class: 'muted', text: '—' })
          : events.map((id, i) => [i > 0 ? ', ' : null, eventLink(id)])),
        el('td', { class: 'num', text: w.restarts })));
    }
  }

  function renderInstances(instances) {
    const body = clear($('#instances-table tbody'));
    if (instances.length === 0) body.appendChild(emptyRow(3, 'no instance holds a lease'));
    for (const i of instances) {
      body.appendChild(el('tr', null,
        el('td', { class: 'mono', text: i.instance }),
        el('td', { class: 'num', text: fmtCount(i.leases) }),
        timeCell(i.latestLeaseExpiresAt)));
    }
  }

  function renderPaused(paused) {
    // Unchanged content is left as it is, so that a poll never replaces a button under the
    // operator's pointer.
    const key = JSON.stringify(paused) + '|' + canAct();
    if (key === state.pausedRendered) return;
    state.pausedRendered = key;
    const body = clear($('#paused-table tbody'));
    if (paused.length === 0) body.appendChild(emptyRow(4, 'no event type is paused'));
    for (const p of paused) {
      body.appendChild(el('tr', { 'data-event-type': p.eventType },
        el('td', { class: 'mono', text: p.eventType }),
        timeCell(p.pausedAt),
        el('td', { text: p.pausedBy || '—' }),
        el('td', { class: 'num' }, el('button', {
          type: 'button', class: 'small', 'data-act': true, 'data-resume': p.eventType,
          onclick: () => pauseOrResume('resume', p.eventType),
        }, 'Resume'))));
    }
    applyPermissions(body);
  }

  async function pauseOrResume(action, eventType) {
    const gen = state.routeGen;
    try {
      const answer = await api('/api/' + action, { method: 'POST', body: { eventType } });
      if (gen !== state.routeGen) return;
      clearError();
      if (Array.isArray(answer.paused)) {
        state.pausedOverride = { list: answer.paused, until: Date.now() + 15000 };
        renderPaused(answer.paused);
      }
      if (action === 'pause') $('#pause-type').value = '';
    } catch (e) {
      reportError(e, gen);
    }
  }

  // ---------------------------------------------------------------------------------------------
  // Charts: SVG line charts drawn here, with a time axis (UTC) and a value axis of round ticks.

  const CHART_W = 600;
  const CHART_H = 200;
  const MARGIN = { left: 64, right: 14, top: 10, bottom: 26 };

  function niceStep(raw) {
    const exp = Math.pow(10, Math.floor(Math.log10(raw)));
    const f = raw / exp;
    const nice = f <= 1 ? 1 : f <= 2 ? 2 : f <= 2.5 ? 2.5 : f <= 5 ? 5 : 10;
    return nice * exp;
  }

  function clockLabel(ms) {
    const d = new Date(ms);
    const two = (n) => String(n).padStart(2, '0');
    return two(d.getUTCHours()) + ':' + two(d.getUTCMinutes()) + ':' + two(d.getUTCSeconds());
  }

  function drawChart(host, legend, points, intervalSeconds, spec) {
    const root = svg('svg', {
      viewBox: '0 0 ' + CHART_W + ' ' + CHART_H, role: 'img', 'aria-label': spec.title,
      'data-points': points.length,
    });
    const x0 = MARGIN.left;
    const x1 = CHART_W - MARGIN.right;
    const y0 = CHART_H - MARGIN.bottom;
    const y1 = MARGIN.top;

    const samples = points
      .map((p) => ({ t: Date.parse(p.at), p }))
      .filter((s) => isFinite(s.t))
      .sort((a, b) => a.t - b.t);
    let tMax = samples.length ? samples[samples.length - 1].t : Date.now();
    let tMin = samples.length ? samples[0].t : tMax - 60000;
    // At least one minute of axis, so that the first samples do not stretch across the chart.
    const span = Math.max(tMax - tMin, 60000, (intervalSeconds || 5) * 1000);
    tMin = tMax - span;

    let vMax = 0;
    for (const s of samples) {
      for (const line of spec.lines) {
        const v = Number(s.p[line.key]);
        if (isFinite(v) && v > vMax) vMax = v;
      }
    }
    const ticks = 4;
    const step = vMax > 0 ? niceStep(vMax / ticks) : spec.unit === 'latency' ? 0.025 : 0.25;
    const top = step * Math.max(1, Math.ceil(vMax / step - 1e-9));
    const xOf = (t) => x0 + ((t - tMin) / span) * (x1 - x0);
    const yOf = (v) => y0 - (Math.max(0, v) / top) * (y0 - y1);
    const r = (n) => Math.round(n * 10) / 10;

    const grid = svg('g', { class: 'grid' });
    const axis = svg('g', { class: 'axis' });
    const labels = svg('g', { class: 'labels' });
    for (let v = 0; v <= top + step / 2; v += step) {
      const y = r(yOf(v));
      grid.appendChild(svg('line', { x1: x0, x2: x1, y1: y, y2: y }));
      labels.appendChild(svg('text', { x: x0 - 6, y: y + 3, 'text-anchor': 'end', text: spec.format(+v.toPrecision(6)) }));
    }
    const xTicks = 5;
    for (let i = 0; i <= xTicks; i++) {
      const t = tMin + (span * i) / xTicks;
      const x = r(xOf(t));
      axis.appendChild(svg('line', { x1: x, x2: x, y1: y0, y2: y0 + 4 }));
      const anchor = i === 0 ? 'start' : i === xTicks ? 'end' : 'middle';
      labels.appendChild(svg('text', { x, y: y0 + 16, 'text-anchor': anchor, text: clockLabel(t) }));
    }
    axis.appendChild(svg('line', { x1: x0, x2: x1, y1: y0, y2: y0 }));
    axis.appendChild(svg('line', { x1: x0, x2: x0, y1: y1, y2: y0 }));
    labels.appendChild(svg('text', {
      x: 12, y: (y0 + y1) / 2, 'text-anchor': 'middle',
      transform: 'rotate(-90 12 ' + (y0 + y1) / 2 + ')', text: spec.unit === 'latency' ? 'seconds' : spec.unit,
    }));
    root.appendChild(grid);
    root.appendChild(axis);
    root.appendChild(labels);

    if (samples.length === 0) {
      root.appendChild(svg('text', {
        class: 'placeholder', x: (x0 + x1) / 2, y: (y0 + y1) / 2, 'text-anchor': 'middle',
        text: 'waiting for the first sample (every ' + (intervalSeconds || 5) + ' s)',
      }));
    }
    for (const line of spec.lines) {
      // Runs of consecutive samples; a sample the spec skips (a latency of an interval in which
      // nothing completed is no measurement) breaks the line into separate runs.
      const runs = [];
      let run = [];
      let count = 0;
      for (const s of samples) {
        const v = Number(s.p[line.key]);
        if (!isFinite(v) || (spec.skip && spec.skip(s.p))) {
          if (run.length) runs.push(run);
          run = [];
          continue;
        }
        run.push(r(xOf(s.t)) + ',' + r(yOf(v)));
        count++;
      }
      if (run.length) runs.push(run);
      if (count === 0) continue;
      // A run of a single sample is drawn as a short tick so that it is visible.
      const d = runs.map((c) => (c.length === 1 ? 'M' + c[0] + ' h-3 h6' : 'M' + c.join(' L'))).join(' ');
      root.appendChild(svg('path', { class: 'series ' + line.cls, d, 'data-series': line.id, 'data-points': count },
        svg('title', { text: line.label })));
    }
    clear(host).appendChild(root);

    clear(legend);
    const measured = samples.filter((s) => !(spec.skip && spec.skip(s.p)));
    const last = measured.length ? measured[measured.length - 1].p : null;
    for (const line of spec.lines) {
      const value = last && isFinite(Number(last[line.key])) ? spec.format(Number(last[line.key])) : '–';
      legend.appendChild(el('span', null, el('span', { class: 'swatch ' + line.cls }), line.label + ' ', el('b', { text: value })));
    }
  }

  // ---------------------------------------------------------------------------------------------
  // Events.

  const EVENT_FILTERS = ['id', 'status', 'type', 'tenant', 'eventKey', 'orderingKey', 'from', 'to'];

  function fillForm(form, params, names) {
    for (const name of names) {
      const input = form.elements[name];
      if (input) input.value = params.get(name) || '';
    }
  }

  function formParams(form, names) {
    const q = new URLSearchParams();
    for (const name of names) {
      const value = (form.elements[name].value || '').trim();
      if (value !== '') q.set(name, value);
    }
    return q;
  }

  async function searchEvents(gen, params) {
    const form = $('#events-form');
    fillForm(form, params, EVENT_FILTERS);
    const filters = {};
    for (const name of EVENT_FILTERS) filters[name] = params.get(name) || '';
    state.events = { query: filters, next: null, count: 0 };
    clear($('#events-table tbody'));
    setText('#events-summary', 'searching…');
    $('#events-next').hidden = true;
    await loadEventsPage(gen, null);
  }

  async function loadEventsPage(gen, after) {
    try {
      const answer = await api('/api/events' + query({ ...state.events.query, after, limit: PAGE_SIZE }));
      if (gen !== state.routeGen) return;
      const body = $('#events-table tbody');
      const rows = Array.isArray(answer.events) ? answer.events : [];
      for (const e of rows) body.appendChild(eventRow(e));
      state.events.count += rows.length;
      state.events.next = answer.next || null;
      if (state.events.count === 0) body.appendChild(emptyRow(10, 'no event matches'));
      setText('#events-summary', state.events.count + (state.events.count === 1 ? ' event' : ' events') +
        (state.events.next ? ' shown, more on the next page' : ''));
      $('#events-next').hidden = !state.events.next;
    } catch (e) {
      if (gen === state.routeGen) setText('#events-summary', '');
      reportError(e, gen);
    }
  }

  function eventRow(e) {
    return el('tr', { 'data-id': e.id },
      el('td', { class: 'id', title: e.id }, eventLink(e.id)),
      el('td', { class: 'mono', text: e.eventType }),
      el('td', { text: e.tenantId || '—' }),
      el('td', null, statusBadge(e.status)),
      timeCell(e.createdAt),
      el('td', { class: 'num', text: e.retryCount + ' / ' + e.maxRetries }),
      timeCell(e.status === 'PENDING' ? e.nextRetryAt : null),
      el('td', { class: 'mono', text: e.orderingKey || '—' }),
      el('td', { class: 'mono', text: e.eventKey || '—' }),
      el('td', { title: e.lastError || null, class: 'bad reason', text: e.lastError || '' }));
  }

  async function loadEvent(gen, id) {
    setText('#event-id', id);
    clear($('#event-status'));
    clear($('#event-fields'));
    setText('#event-payload', '');
    setText('#event-metadata', '');
    $('#event-error-panel').hidden = true;
    try {
      const e = await api('/api/events/' + encodeURIComponent(id));
      if (gen !== state.routeGen) return;
      renderEvent(e);
    } catch (err) {
      reportError(err, gen);
    }
  }

  function renderEvent(e) {
    setText('#event-id', e.id);
    clear($('#event-status')).appendChild(statusBadge(e.status));
    const fields = clear($('#event-fields'));
    const lease = e.lease ? [el('span', { class: 'mono', text: e.lease.owner }), ' until ', fmtTime(e.lease.expiresAt)] : '—';
    const subscribers = Array.isArray(e.subscribers) ? e.subscribers : [];
    const done = new Set(Array.isArray(e.subscribersDone) ? e.subscribersDone : []);
    const subscriberList = subscribers.length === 0 && done.size === 0 ? '—'
      : el('span', null, [...new Set([...subscribers, ...done])].map((name, i) => [
        i > 0 ? ', ' : null,
        el('span', { class: done.has(name) ? 'good' : 'muted', title: done.has(name) ? 'reached' : 'not yet reached',
          'data-subscriber': name, text: (done.has(name) ? '✓ ' : '○ ') + name })]));
    const rows = [
      ['Event type', el('span', { class: 'mono', text: e.eventType })],
      ['Tenant', e.tenantId || '—'],
      ['Status', statusBadge(e.status)],
      ['Tries', e.retryCount + ' of ' + e.maxRetries],
      ['Created', fmtTime(e.createdAt)],
      ['Updated', fmtTime(e.updatedAt)],
      ['Next try', fmtTime(e.nextRetryAt)],
      ['Processed', fmtTime(e.processedAt)],
      ['Event key', el('span', { class: 'mono', id: 'event-event-key', text: e.eventKey || '—' })],
      ['Ordering key', el('span', { class: 'mono', id: 'event-ordering-key', text: e.orderingKey || '—' })],
      ['Ordering seq', e.orderingSeq === null || e.orderingSeq === undefined ? '—' : e.orderingSeq],
      ['Correlation id', el('span', { class: 'mono', text: e.correlationId || '—' })],
      ['Event log id', el('span', { class: 'mono', text: e.eventLogId || '—' })],
      ['Lease', lease],
      ['Subscribers', subscriberList],
    ];
    for (const [name, value] of rows) {
      fields.appendChild(el('dt', { text: name }));
      fields.appendChild(el('dd', null, value));
    }
    setText('#event-payload', prettyJson(e.payload));
    setText('#event-metadata', prettyJson(e.metadata));
    $('#event-error-panel').hidden = !e.lastError;
    setText('#event-last-error', e.lastError || '');
  }

  // ---------------------------------------------------------------------------------------------
  // Dead letters.

  const DLQ_FILTERS = ['type', 'tenant', 'reason'];

  async function loadDlq(gen, params, keepResult) {
    if (!keepResult) $('#dlq-result').hidden = true;
    fillForm($('#dlq-form'), params, DLQ_FILTERS);
    const filter = {};
    for (const name of DLQ_FILTERS) {
      const v = params.get(name);
      if (v) filter[name] = v;
    }
    state.dlq = { filter, next: null, selected: new Set(), count: 0 };
    clear($('#dlq-table tbody'));
    $('#dlq-select-all').checked = false;
    updateSelection();
    setText('#dlq-summary', 'loading…');
    $('#dlq-next').hidden = true;
    loadDlqGroups(gen);
    await loadDlqPage(gen, null);
  }

  async function loadDlqGroups(gen) {
    try {
      const overview = await api('/api/overview');
      if (gen !== state.routeGen) return;
      const groups = Array.isArray(overview.dlqGroups) ? overview.dlqGroups : [];
      const readAt = overview.counts && overview.counts.readAt;
      setText('#dlq-groups-read-at', readAt ? '(read at ' + fmtTime(readAt) + ' UTC)' : '');
      const body = clear($('#dlq-groups tbody'));
      if (groups.length === 0) body.appendChild(emptyRow(4, 'no dead letters'));
      for (const g of groups) {
        const link = '#/dlq' + query({ type: g.eventType, reason: g.reason });
        body.appendChild(el('tr', { class: 'clickable', 'data-event-type': g.eventType },
          el('td', null, el('a', { href: link, class: 'mono', text: g.eventType })),
          el('td', { class: 'wrap', title: g.reason, text: g.reason }),
          el('td', { class: 'num', text: fmtCount(g.count) }),
          timeCell(g.newest)));
      }
    } catch (e) {
      reportError(e, gen);
    }
  }

  async function loadDlqPage(gen, after) {
    try {
      const answer = await api('/api/dlq' + query({ ...state.dlq.filter, after, limit: PAGE_SIZE }));
      if (gen !== state.routeGen) return;
      const body = $('#dlq-table tbody');
      const entries = Array.isArray(answer.entries) ? answer.entries : [];
      for (const entry of entries) body.appendChild(dlqRow(entry));
      state.dlq.count += entries.length;
      state.dlq.next = answer.next || null;
      if (state.dlq.count === 0) body.appendChild(emptyRow(11, 'no dead letter matches'));
      setText('#dlq-summary', state.dlq.count + (state.dlq.count === 1 ? ' entry' : ' entries') +
        (state.dlq.next ? ' shown, more on the next page' : ''));
      $('#dlq-next').hidden = !state.dlq.next;
      applyPermissions(body);
    } catch (e) {
      if (gen === state.routeGen) setText('#dlq-summary', '');
      reportError(e, gen);
    }
  }

  function dlqRow(entry) {
    const box = el('input', { type: 'checkbox', 'data-act': true, 'data-id': entry.id, 'aria-label': 'select ' + entry.id });
    box.addEventListener('change', () => {
      if (box.checked) state.dlq.selected.add(entry.id);
      else state.dlq.selected.delete(entry.id);
      row.classList.toggle('selected', box.checked);
      updateSelection();
    });
    const detailToggle = el('a', { href: '#', class: 'mono', title: 'show the payload', text: entry.id });
    const row = el('tr', { 'data-id': entry.id },
      el('td', { class: 'check' }, box),
      el('td', { class: 'id', title: entry.id }, detailToggle),
      el('td', { class: 'id', title: entry.originalId || null }, entry.originalId ? eventLink(entry.originalId) : '—'),
      el('td', { class: 'mono', text: entry.eventType }),
      el('td', { text: entry.tenantId || '—' }),
      el('td', { class: 'mono', text: entry.eventKey || '—' }),
      el('td', { class: 'mono', text: entry.orderingKey || '—' }),
      el('td', { class: 'num', text: entry.retryCount }),
      timeCell(entry.failedAt),
      el('td', { class: 'bad reason', title: entry.failureReason || null, text: entry.failureReason || '' }),
      el('td', { class: 'actions' }, el('div', { class: 'row-actions' },
        el('button', { type: 'button', class: 'small', 'data-act': true, 'data-action': 'retry',
          onclick: () => dlqAction('retry', { ids: [entry.id] }, null) }, 'Retry'),
        el('button', { type: 'button', class: 'small secondary', 'data-act': true, 'data-action': 'skip',
          onclick: () => dlqAction('skip', { ids: [entry.id] }, null) }, 'Skip'),
        el('button', { type: 'button', class: 'small danger', 'data-act': true, 'data-action': 'purge',
          onclick: () => dlqAction('purge', { ids: [entry.id] }, 'Purge dead letter ' + entry.id + '? Its event is deleted for good.') }, 'Purge'))));
    detailToggle.addEventListener('click', (ev) => {
      ev.preventDefault();
      toggleDlqDetail(row, entry.id);
    });
    return row;
  }

  async function toggleDlqDetail(row, id) {
    const next = row.nextElementSibling;
    if (next && next.classList.contains('detail-row')) {
      next.remove();
      return;
    }
    const cell = el('td', { colspan: 11 }, el('span', { class: 'muted', text: 'loading…' }));
    const detail = el('tr', { class: 'detail-row', 'data-detail-for': id }, cell);
    row.after(detail);
    try {
      const entry = await api('/api/dlq/' + encodeURIComponent(id));
      clear(cell);
      cell.appendChild(el('div', { class: 'grid-2' },
        el('div', null, el('h2', { text: 'Payload' }), el('pre', { class: 'json', text: prettyJson(entry.payload) })),
        el('div', null, el('h2', { text: 'Metadata' }), el('pre', { class: 'json', text: prettyJson(entry.metadata) }),
          el('h2', { text: 'Failure reason' }), el('pre', { class: 'error-text', text: entry.failureReason || '' }))));
    } catch (e) {
      clear(cell).appendChild(el('span', { class: 'bad', text: e.message }));
    }
  }

  function updateSelection() {
    const n = state.dlq.selected.size;
    setText('#dlq-selection', n + ' selected');
    for (const b of document.querySelectorAll('[data-scope="selected"]')) {
      if (canAct()) b.disabled = n === 0;
    }
  }

  const PAST = { retry: 'Retried', skip: 'Skipped', purge: 'Purged' };
  const VERB = { retry: 'Retry', skip: 'Skip', purge: 'Purge' };

  function describeFilter(filter) {
    const parts = [];
    if (filter.type) parts.push('type ' + filter.type);
    if (filter.tenant) parts.push('tenant ' + filter.tenant);
    if (filter.reason) parts.push('reason starting with "' + filter.reason + '"');
    return parts.join(', ');
  }

  function bulkAction(action, scope) {
    if (scope === 'selected') {
      const ids = [...state.dlq.selected];
      if (ids.length === 0) return;
      dlqAction(action, { ids }, VERB[action] + ' ' + ids.length + (ids.length === 1 ? ' selected dead letter?' : ' selected dead letters?'));
    } else {
      const filter = { ...state.dlq.filter };
      const described = describeFilter(filter);
      const body = described ? { filter } : { filter: {}, all: true };
      const what = described ? 'every dead letter matching ' + described : 'every dead letter, with no filter';
      dlqAction(action, body, VERB[action] + ' ' + what + '?' + (action === 'purge' ? ' Their events are deleted for good.' : ''));
    }
  }

  async function dlqAction(action, body, confirmText) {
    if (confirmText && !(await askConfirm(confirmText))) return;
    const gen = state.routeGen;
    const result = $('#dlq-result');
    try {
      const answer = await api('/api/dlq/' + action, { method: 'POST', body });
      if (gen !== state.routeGen) return;
      clearError();
      const unknown = Array.isArray(answer.unknown) ? answer.unknown : [];
      const failed = Array.isArray(answer.failed) ? answer.failed : [];
      clear(result);
      result.className = 'result' + (failed.length ? ' result-error' : '');
      result.appendChild(document.createTextNode(PAST[action] + ' ' + fmtCount(answer.done) + '.'));
      if (unknown.length) result.appendChild(document.createTextNode(' Not found (already handled?): ' + unknown.join(', ') + '.'));
      for (const f of failed) result.appendChild(el('div', { text: f.id + ': ' + f.error }));
      result.setAttribute('data-done', String(answer.done));
      result.hidden = false;
      // The list and the groups change; read both again with the same filter.
      const params = new URLSearchParams(state.dlq.filter);
      state.dlq.selected.clear();
      await loadDlq(gen, params, true);
    } catch (e) {
      reportError(e, gen);
    }
  }

  // The confirm step of bulk actions: a small dialog of the page's own (window.confirm would
  // block the page and cannot be styled).
  let confirmResolve = null;

  function askConfirm(text) {
    hideConfirm(false);
    setText('#confirm-text', text);
    $('#confirm').hidden = false;
    $('#confirm-ok').focus();
    return new Promise((resolve) => {
      confirmResolve = resolve;
    });
  }

  function hideConfirm(answer) {
    $('#confirm').hidden = true;
    if (confirmResolve) {
      const resolve = confirmResolve;
      confirmResolve = null;
      resolve(answer);
    }
  }

  // ---------------------------------------------------------------------------------------------
  // Blocked keys.

  async function loadKeys(gen, more) {
    const body = $('#keys-table tbody');
    if (!more) {
      state.keys = { next: null, count: 0 };
      clear(body);
      setText('#keys-summary', 'loading…');
      $('#keys-next').hidden = true;
    }
    try {
      const answer = await api('/api/blocked-keys' + query({ after: more ? state.keys.next : null, limit: PAGE_SIZE }));
      if (gen !== state.routeGen) return;
      const keys = Array.isArray(answer.keys) ? answer.keys : [];
      for (const k of keys) {
        body.appendChild(el('tr', { 'data-key': k.orderingKey },
          el('td', { class: 'mono', text: k.orderingKey }),
          el('td', { class: 'id', title: k.headId || null }, k.headId ? eventLink(k.headId) : '—'),
          el('td', null, statusBadge(k.headStatus)),
          el('td', { class: 'bad', title: k.reason || null, text: k.reason || '' }),
          timeCell(k.blockedSince),
          el('td', { class: 'num', text: fmtCount(k.waiting) })));
      }
      state.keys.count += keys.length;
      state.keys.next = answer.next || null;
      if (state.keys.count === 0) body.appendChild(emptyRow(6, 'no ordering key is blocked'));
      setText('#keys-summary', state.keys.count + (state.keys.count === 1 ? ' key' : ' keys') +
        (state.keys.next ? ' shown, more on the next page' : ''));
      $('#keys-next').hidden = !state.keys.next;
    } catch (e) {
      if (gen === state.routeGen) setText('#keys-summary', '');
      reportError(e, gen);
    }
  }

  // ---------------------------------------------------------------------------------------------
  // Login.

  function renderLogin() {
    const s = state.session || {};
    const form = $('#login-form');
    const info = $('#login-state');
    $('#login-error').hidden = true;
    form.hidden = !!(s.readOnly || s.authenticated);
    $('#login-explain').hidden = !!(s.readOnly || s.authenticated);
    info.hidden = !(s.readOnly || s.authenticated);
    info.textContent = s.readOnly
      ? 'This console is read-only: the service runs without OUTBOX_ADMIN_TOKEN, so there is nothing to log in to.'
      : s.authenticated ? 'You are logged in.' : '';
    if (!form.hidden) $('#login-token').focus();
  }

  async function login(ev) {
    ev.preventDefault();
    const input = $('#login-token');
    const error = $('#login-error');
    error.hidden = true;
    try {
      await api('/api/login', { method: 'POST', body: { token: input.value } });
      input.value = '';
      await loadSession();
      const target = state.afterLogin && state.afterLogin !== '#/login' ? state.afterLogin : '#/';
      if (location.hash === target) route();
      else location.hash = target;
    } catch (e) {
      error.textContent = e.status === 401 ? 'Wrong token.' : e.message;
      error.hidden = false;
    }
  }

  // ---------------------------------------------------------------------------------------------
  // Start.

  function wire() {
    $('#events-form').addEventListener('submit', (ev) => {
      ev.preventDefault();
      const q = formParams(ev.target, EVENT_FILTERS).toString();
      const target = '#/events' + (q ? '?' + q : '');
      // The same search again (a refresh) does not change the hash, so route by hand.
      if (location.hash === target) route();
      else location.hash = target;
    });
    $('#events-clear').addEventListener('click', () => {
      $('#events-form').reset();
      location.hash = '#/events';
    });
    $('#events-next').addEventListener('click', () => loadEventsPage(state.routeGen, state.events.next));

    $('#dlq-form').addEventListener('submit', (ev) => {
      ev.preventDefault();
      const q = formParams(ev.target, DLQ_FILTERS).toString();
      const target = '#/dlq' + (q ? '?' + q : '');
      if (location.hash === target) route();
      else location.hash = target;
    });
    $('#dlq-clear').addEventListener('click', () => {
      $('#dlq-form').reset();
      location.hash = '#/dlq';
    });
    $('#dlq-next').addEventListener('click', () => loadDlqPage(state.routeGen, state.dlq.next));
    $('#dlq-select-all').addEventListener('change', (ev) => {
      for (const box of document.querySelectorAll('#dlq-table tbody input[type=checkbox]')) {
        if (box.checked !== ev.target.checked) {
          box.checked = ev.target.checked;
          box.dispatchEvent(new Event('change'));
        }
      }
    });
    for (const b of document.querySelectorAll('[data-bulk]')) {
      b.addEventListener('click', () => bulkAction(b.getAttribute('data-bulk'), b.getAttribute('data-scope')));
    }
    $('#keys-next').addEventListener('click', () => loadKeys(state.routeGen, true));

    $('#pause-form').addEventListener('submit', (ev) => {
      ev.preventDefault();
      const type = $('#pause-type').value.trim();
      if (type) pauseOrResume('pause', type);
    });

    $('#login-form').addEventListener('submit', login);
    $('#confirm-ok').addEventListener('click', () => hideConfirm(true));
    $('#confirm-cancel').addEventListener('click', () => hideConfirm(false));
    document.addEventListener('keydown', (ev) => {
      if (ev.key === 'Escape' && !$('#confirm').hidden) hideConfirm(false);
    });
    window.addEventListener('hashchange', () => {
      if (!location.hash.startsWith('#/login')) state.afterLogin = location.hash || '#/';
      route();
    });
  }

  async function start() {
    wire();
    if (!location.hash.startsWith('#/login')) state.afterLogin = location.hash || '#/';
    await loadSession();
    route();
    updateSelection();
    document.body.setAttribute('data-ready', 'true');
  }

  start();
})();
