// ahv dashboard: plain JavaScript, no dependencies, works offline.
//
// It uses only the public API with the key the user typed (kept in sessionStorage). Updates
// come from the server-sent events of GET /v1/events, read with fetch() because EventSource
// cannot send the X-API-Key header; when that endpoint is missing or the stream breaks, the
// page polls GET /v1/jobs and GET /stats every 2 s and retries the stream with backoff.
// Everything from the server is put in the page with textContent / attributes, never as HTML.
'use strict';

(() => {
  const KEY_STORE = 'ahv.apiKey';
  const POLL_MS = 2000;
  const LIVE_STATS_MS = 5000;
  const LIVE_RESYNC_MS = 15000; // queue positions move without an event of their own
  const BACKENDS_MS = 4000;
  const STREAM_IDLE_MS = 60000; // no byte (not even a keepalive) for this long: reconnect
  const RETRY_MIN_MS = 2000;
  const RETRY_MAX_MS = 60000;
  const LIST_LIMIT = 50;
  const FINAL = new Set(['succeeded', 'failed', 'rejected', 'canceled']);
  const IMAGE_EXT = new Set(['jpg', 'jpeg', 'png', 'webp', 'gif']);
  const VIDEO_EXT = new Set(['mp4', 'webm', 'mov']);
  const SVG_NS = 'http://www.w3.org/2000/svg';

  const $ = (id) => document.getElementById(id);

  const state = {
    key: null,
    jobs: new Map(), // job_id -> job document, the jobs the current filters show
    filter: { status: '', task: '' },
    selected: null, // job_id of the open detail
    detail: null, // its document (with payload when the server gives it)
    deliveries: null,
    deliveriesPath: 'deliveries', // 'webhooks' on servers without /deliveries
    redeliver: true, // false once the server says it has no redeliver endpoint
    outputKey: '',
    mode: 'idle',
    stream: null, // AbortController of the open stream
    streamTimer: 0,
    retryMs: RETRY_MIN_MS,
    lastEventId: '',
    eventSeq: 0, // job events received; a fetch started before one must not undo it
    touched: new Map(), // job_id -> eventSeq of its latest event
    last: { jobs: 0, stats: 0, backends: 0, detail: 0, deliveries: 0 },
    busy: new Set(), // refreshers in flight
    tick: 0,
    renderQueued: false,
  };

  // -- API ------------------------------------------------------------------------------------

  class ApiError extends Error {
    constructor(status, code, message) {
      super(message);
      this.status = status;
      this.code = code;
    }
  }

  // The endpoint itself is unknown to this server (not: the job is unknown).
  const missing = (e) =>
    e instanceof ApiError && (e.status === 405 || (e.status === 404 && e.code === 'not_found'));

  async function api(method, path) {
    const key = state.key;
    const response = await fetch(path, {
      method,
      headers: { 'X-API-Key': key, Accept: 'application/json' },
      cache: 'no-store',
    });
    const text = await response.text();
    let body = null;
    if (text) {
      try {
        body = JSON.parse(text);
      } catch (_) {
        body = null;
      }
    }
    if (response.status === 401 && key === state.key) unauthorized();
    if (!response.ok) {
      const error = (body && body.error) || {};
      throw new ApiError(
        response.status,
        error.code || `http_${response.status}`,
        error.message || `${method} ${path}: HTTP ${response.status}`,
      );
    }
    return body;
  }

  // Run a refresher unless the same one is still in flight.
  async function once(name, fn) {
    if (state.busy.has(name) || !state.key) return;
    state.busy.add(name);
    try {
      await fn();
    } catch (e) {
      if (!(e instanceof ApiError && e.status === 401)) console.warn(name, e);
    } finally {
      state.busy.delete(name);
    }
  }

  // -- key ------------------------------------------------------------------------------------

  async function login(key, fromStorage) {
    state.key = key;
    try {
      await api('GET', '/stats');
    } catch (e) {
      state.key = null;
      const refused = e instanceof ApiError && e.status === 401;
      if (fromStorage && refused) sessionStorage.removeItem(KEY_STORE);
      showLogin(refused ? 'This key was refused.' : `Cannot reach the server: ${e.message}`);
      return;
    }
    sessionStorage.setItem(KEY_STORE, key);
    $('key-input').value = '';
    $('login').hidden = true;
    $('app').hidden = false;
    $('key-forget').hidden = false;
    start();
  }

  function showLogin(message) {
    $('login').hidden = false;
    $('app').hidden = true;
    $('key-forget').hidden = true;
    const error = $('key-error');
    error.textContent = message || '';
    error.hidden = !message;
    setMode('idle');
  }

  function logout(message) {
    state.key = null;
    sessionStorage.removeItem(KEY_STORE);
    stopStream();
    state.jobs.clear();
    closeDetail();
    showLogin(message);
  }

  function unauthorized() {
    logout('The server refused the key (401). Enter it again.');
  }

  // -- updates: the event stream, else polling ----------------------------------------------

  function setMode(mode) {
    state.mode = mode;
    const el = $('conn-mode');
    el.dataset.mode = mode;
    el.textContent = { live: 'live', polling: 'polling', idle: 'not connected' }[mode] || mode;
    el.title =
      mode === 'live'
        ? 'Live: server-sent events (GET /v1/events)'
        : mode === 'polling'
          ? 'Polling every 2 s (the event stream is not available)'
          : 'Not connected';
  }

  function stopStream() {
    clearTimeout(state.streamTimer);
    if (state.stream) state.stream.abort();
    state.stream = null;
  }

  async function connectStream() {
    if (!state.key) return;
    const control = new AbortController();
    state.stream = control;
    let idle = 0;
    const alive = () => {
      clearTimeout(idle);
      idle = setTimeout(() => control.abort(), STREAM_IDLE_MS);
    };
    try {
      const headers = { 'X-API-Key': state.key, Accept: 'text/event-stream' };
      if (state.lastEventId) headers['Last-Event-ID'] = state.lastEventId;
      const response = await fetch('/v1/events', {
        headers,
        cache: 'no-store',
        signal: control.signal,
      });
      if (response.status === 401) {
        unauthorized();
        return;
      }
      if (!response.ok || !response.body) throw new Error(`GET /v1/events: ${response.status}`);
      alive();
      const reader = response.body.getReader();
      const decoder = new TextDecoder();
      const feed = sseParser(onStreamEvent);
      for (;;) {
        const { value, done } = await reader.read();
        if (done) break;
        alive();
        feed(decoder.decode(value, { stream: true }));
      }
    } catch (_) {
      // a refused, missing or broken stream: poll, and try again later
    } finally {
      clearTimeout(idle);
    }
    if (state.stream !== control || !state.key) return; // logged out or replaced
    state.stream = null;
    setMode('polling');
    const wait = state.retryMs;
    state.retryMs = Math.min(state.retryMs * 2, RETRY_MAX_MS);
    state.streamTimer = setTimeout(connectStream, wait + Math.random() * 500);
  }

  // text/event-stream: `field: value` lines, `:` comments, a blank line ends an event. The
  // event being read and an unfinished line carry over from one chunk to the next.
  function sseParser(onEvent) {
    let buffer = '';
    let event = null;
    return (chunk) => {
      buffer += chunk;
      // A trailing CR may be the first half of a CRLF split across chunks.
      const held = buffer.endsWith('\r') ? '\r' : '';
      if (held) buffer = buffer.slice(0, -1);
      const lines = buffer.split(/\r\n|\r|\n/);
      buffer = lines.pop() + held;
      for (const line of lines) {
        if (line === '') {
          if (event && event.data !== null) onEvent(event);
          event = null;
          continue;
        }
        if (line.startsWith(':')) continue; // a comment: keepalive
        const colon = line.indexOf(':');
        const name = colon < 0 ? line : line.slice(0, colon);
        let value = colon < 0 ? '' : line.slice(colon + 1);
        if (value.startsWith(' ')) value = value.slice(1);
        event = event || { event: 'message', data: null, id: null };
        if (name === 'event') event.event = value;
        else if (name === 'data') event.data = event.data === null ? value : `${event.data}\n${value}`;
        else if (name === 'id') event.id = value;
      }
    };
  }

  function onStreamEvent(event) {
    if (event.id) state.lastEventId = event.id;
    let data = null;
    try {
      data = JSON.parse(event.data);
    } catch (_) {
      return;
    }
    if (event.event === 'hello') {
      setMode('live');
      state.retryMs = RETRY_MIN_MS;
      once('jobs', refreshJobs); // catch up on what happened while not connected
    } else if (event.event === 'job' && data && data.job_id) {
      touch(data.job_id);
      upsertJob(data);
    } else if (event.event === 'deleted' && data && data.job_id) {
      touch(data.job_id);
      removeJob(data.job_id);
    }
  }

  function touch(jobId) {
    state.eventSeq += 1;
    state.touched.delete(jobId); // re-inserted last: the map stays in event order
    state.touched.set(jobId, state.eventSeq);
    if (state.touched.size > 1000) state.touched.delete(state.touched.keys().next().value);
  }

  function start() {
    setMode('polling');
    state.retryMs = RETRY_MIN_MS;
    refreshAll();
    connectStream();
  }

  function refreshAll() {
    once('jobs', refreshJobs);
    once('stats', refreshStats);
    once('backends', refreshBackends);
  }

  // One timer drives every periodic refresh; what runs depends on the mode.
  function onTick() {
    if (!state.key) return;
    const now = Date.now();
    const live = state.mode === 'live';
    const due = (what, ms) => now - state.last[what] >= ms;
    if (due('jobs', live ? LIVE_RESYNC_MS : POLL_MS)) once('jobs', refreshJobs);
    if (due('stats', live ? LIVE_STATS_MS : POLL_MS)) once('stats', refreshStats);
    if (due('backends', BACKENDS_MS)) once('backends', refreshBackends);
    if (state.selected) {
      const open = state.detail && !FINAL.has(state.detail.status);
      if (!live && open && due('detail', POLL_MS)) once('detail', refreshDetail);
      if (deliveriesPending() && due('deliveries', POLL_MS)) once('deliveries', refreshDeliveries);
    }
    renderClock();
  }

  function deliveriesPending() {
    if (!state.detail || !FINAL.has(state.detail.status)) return false;
    return state.deliveries === null || state.deliveries.some((d) => d.state === 'pending');
  }

  let soonTimer = 0;
  function soon() {
    // A job changed state: counts, charts and slots follow shortly (debounced).
    clearTimeout(soonTimer);
    soonTimer = setTimeout(() => {
      once('stats', refreshStats);
      once('backends', refreshBackends);
    }, 300);
  }

  // -- jobs -----------------------------------------------------------------------------------

  function listQuery() {
    const q = new URLSearchParams({ limit: String(LIST_LIMIT) });
    if (state.filter.status) q.set('status', state.filter.status);
    if (state.filter.task) q.set('task', state.filter.task);
    return q.toString();
  }

  async function refreshJobs() {
    const query = listQuery();
    const since = state.eventSeq;
    const body = await api('GET', `/v1/jobs?${query}`);
    state.last.jobs = Date.now();
    if (query !== listQuery()) return; // the filters changed meanwhile
    const jobs = new Map();
    for (const doc of body.jobs || []) {
      // An event that came while this list was on its way is newer than the list (and a
      // job it deleted or moved out of the filters stays out).
      if ((state.touched.get(doc.job_id) || 0) <= since) jobs.set(doc.job_id, doc);
      else if (state.jobs.has(doc.job_id)) jobs.set(doc.job_id, state.jobs.get(doc.job_id));
    }
    for (const [jobId, seq] of state.touched) {
      const current = state.jobs.get(jobId);
      if (seq > since && current && !jobs.has(jobId) && matches(current)) jobs.set(jobId, current);
    }
    const changed = [...jobs.values()].some((doc) => {
      const before = state.jobs.get(doc.job_id);
      return !before || before.status !== doc.status;
    });
    state.jobs = jobs;
    const selected = state.selected && jobs.get(state.selected);
    if (selected) mergeDetail(selected);
    if (changed) soon();
    render();
  }

  function matches(doc) {
    return (
      (!state.filter.status || doc.status === state.filter.status) &&
      (!state.filter.task || doc.task === state.filter.task)
    );
  }

  function upsertJob(doc) {
    const before = state.jobs.get(doc.job_id) || (state.detail && state.detail.job_id === doc.job_id ? state.detail : null);
    if (matches(doc)) {
      state.jobs.set(doc.job_id, doc);
      if (state.jobs.size > LIST_LIMIT) {
        const oldest = sortedJobs().slice(LIST_LIMIT);
        for (const old of oldest) if (old.job_id !== state.selected) state.jobs.delete(old.job_id);
      }
    } else {
      state.jobs.delete(doc.job_id);
    }
    if (doc.job_id === state.selected) mergeDetail(doc);
    if (!before || before.status !== doc.status) soon();
    render();
  }

  function removeJob(jobId) {
    state.jobs.delete(jobId);
    if (jobId === state.selected) closeDetail();
    soon();
    render();
  }

  function sortedJobs() {
    return [...state.jobs.values()].sort(
      (a, b) => (b.created_at_ms || 0) - (a.created_at_ms || 0) || (a.job_id < b.job_id ? 1 : -1),
    );
  }

  function render() {
    if (state.renderQueued) return;
    state.renderQueued = true;
    requestAnimationFrame(() => {
      state.renderQueued = false;
      renderJobs();
      renderDetail();
    });
  }

  function renderJobs() {
    const body = $('jobs-body');
    const rows = sortedJobs().map(jobRow);
    body.replaceChildren(...rows);
    $('jobs-empty').hidden = rows.length > 0;
  }

  function jobRow(doc) {
    const tr = el('tr', { 'data-job-id': doc.job_id, 'data-status': doc.status });
    tr.dataset.progress = String(doc.progress || 0);
    tr.tabIndex = 0;
    if (doc.job_id === state.selected) tr.classList.add('selected');
    tr.addEventListener('click', () => selectJob(doc.job_id));
    tr.addEventListener('keydown', (e) => {
      if (e.key === 'Enter') selectJob(doc.job_id);
    });
    const id = el('code', { title: doc.job_id }, doc.job_id.slice(0, 8));
    tr.append(
      el('td', { class: 'job-id' }, id),
      el('td', { class: 'task' }, doc.task),
      el('td', { class: 'status-cell' }, statusBadge(doc.status)),
      el('td', { class: 'progress-cell' }, progressBar(doc)),
      el('td', { class: 'queue-pos' }, doc.status === 'queued' && doc.queue_position != null ? String(doc.queue_position) : ''),
      el('td', { class: 'eta', 'data-eta-ms': etaMs(doc) }, etaText(doc)),
      el('td', { class: 'created', title: doc.created_at || '' }, ago(doc.created_at_ms)),
      el('td', { class: 'duration', ...durationAttrs(doc) }, durationText(doc)),
    );
    return tr;
  }

  function statusBadge(status) {
    return el('span', { class: `status s-${status}`, 'data-status': status }, status);
  }

  function progressBar(doc) {
    const percent = Math.max(0, Math.min(100, Number(doc.progress) || 0));
    const fill = el('span');
    fill.style.width = `${percent}%`;
    const bar = el('div', { class: 'progress', title: `${percent}%` }, fill);
    return el('div', { class: 'progress-wrap' }, bar, el('small', {}, `${percent}%`));
  }

  // Expected end: a running job's start plus its predicted run time; a queued job's eta_utc.
  function etaMs(doc) {
    if (doc.status === 'running' && doc.started_at_ms && doc.predict_time != null) {
      return String(doc.started_at_ms + 1000 * Number(doc.predict_time));
    }
    if (doc.status !== 'queued' || !doc.eta_utc) return '';
    const t = Date.parse(doc.eta_utc);
    return Number.isNaN(t) ? '' : String(t);
  }

  function etaText(doc) {
    const t = Number(etaMs(doc));
    if (!t) return '';
    const left = (t - Date.now()) / 1000;
    return left > 0 ? `in ${seconds(left)}` : 'due';
  }

  function durationAttrs(doc) {
    if (doc.status === 'running' && doc.started_at_ms) return { 'data-since-ms': String(doc.started_at_ms) };
    return {};
  }

  function durationText(doc) {
    if (doc.duration != null) return seconds(doc.duration);
    if (doc.status === 'running' && doc.started_at_ms) return `${seconds((Date.now() - doc.started_at_ms) / 1000)} …`;
    return '';
  }

  // Relative times tick without a refetch.
  function renderClock() {
    for (const cell of document.querySelectorAll('[data-since-ms]')) {
      cell.textContent = `${seconds((Date.now() - Number(cell.dataset.sinceMs)) / 1000)} …`;
    }
    for (const cell of document.querySelectorAll('[data-eta-ms]')) {
      const t = Number(cell.dataset.etaMs);
      if (!t) continue;
      const left = (t - Date.now()) / 1000;
      cell.textContent = left > 0 ? `in ${seconds(left)}` : 'due';
    }
    for (const row of document.querySelectorAll('#jobs-body tr')) {
      const doc = state.jobs.get(row.dataset.jobId);
      if (doc) row.querySelector('.created').textContent = ago(doc.created_at_ms);
    }
  }

  // -- detail ---------------------------------------------------------------------------------

  async function selectJob(jobId) {
    if (state.selected !== jobId) {
      state.selected = jobId;
      state.detail = state.jobs.get(jobId) || null;
      state.deliveries = null;
      state.outputKey = '';
    }
    $('job-detail').hidden = false;
    render();
    await Promise.all([once('detail', refreshDetail), once('deliveries', refreshDeliveries)]);
  }

  function closeDetail() {
    state.selected = null;
    state.detail = null;
    state.deliveries = null;
    state.outputKey = '';
    $('job-detail').hidden = true;
    $('detail-output').replaceChildren();
    render();
  }

  async function refreshDetail() {
    const jobId = state.selected;
    if (!jobId) return;
    const since = state.eventSeq;
    try {
      const doc = await api('GET', `/v1/jobs/${encodeURIComponent(jobId)}`);
      state.last.detail = Date.now();
      if (state.selected !== jobId) return;
      const before = state.detail;
      const newer = before && (state.touched.get(jobId) || 0) > since;
      // Keep what an event brought meanwhile; take the inputs, which events do not carry.
      state.detail = newer ? { ...before, payload: doc.payload } : { ...(before || {}), ...doc };
      if (before && before.status !== doc.status && FINAL.has(doc.status)) state.deliveries = null;
      render();
    } catch (e) {
      if (e instanceof ApiError && e.status === 404 && state.selected === jobId) {
        removeJob(jobId);
        toast('That job is gone.');
      } else throw e;
    }
  }

  function mergeDetail(doc) {
    const before = state.detail;
    // List and event documents carry no payload; keep what the job's own GET gave.
    state.detail = { ...(before || {}), ...doc };
    if (before && before.status !== doc.status && FINAL.has(doc.status)) {
      state.deliveries = null; // the final event was just written: fetch it
      once('deliveries', refreshDeliveries);
    }
  }

  async function refreshDeliveries() {
    const jobId = state.selected;
    if (!jobId) return;
    let body;
    try {
      body = await api('GET', `/v1/jobs/${encodeURIComponent(jobId)}/${state.deliveriesPath}`);
    } catch (e) {
      if (missing(e) && state.deliveriesPath === 'deliveries') {
        state.deliveriesPath = 'webhooks';
        body = await api('GET', `/v1/jobs/${encodeURIComponent(jobId)}/webhooks`);
      } else throw e;
    }
    state.last.deliveries = Date.now();
    if (state.selected !== jobId) return;
    state.deliveries = body.deliveries || [];
    render();
  }

  function renderDetail() {
    const panel = $('job-detail');
    const doc = state.detail;
    if (!state.selected || !doc) {
      panel.hidden = true;
      return;
    }
    panel.hidden = false;
    panel.dataset.jobId = doc.job_id;
    panel.dataset.status = doc.status;
    $('detail-id').textContent = doc.job_id;
    const badge = $('detail-status');
    badge.className = `status s-${doc.status}`;
    badge.textContent = doc.status;
    $('detail-progress').style.width = `${Math.max(0, Math.min(100, Number(doc.progress) || 0))}%`;
    $('btn-cancel').hidden = FINAL.has(doc.status);
    renderFacts(doc);
    renderInputs(doc);
    renderOutput(doc);
    renderDeliveries(doc);
  }

  function renderFacts(doc) {
    const facts = [
      ['task', doc.task],
      ['status', doc.status],
      ['progress', `${doc.progress || 0}%`],
      ['priority', doc.priority],
      ['attempts', doc.attempts],
      ['queue position', doc.status === 'queued' ? doc.queue_position : null],
      ['created', doc.created_at],
      ['started', doc.started_at],
      ['finished', doc.finished_at],
      ['duration', doc.duration != null ? seconds(doc.duration) : null],
      ['predict time', doc.predict_time != null ? seconds(doc.predict_time) : null],
      ['ETA', FINAL.has(doc.status) ? null : doc.eta_utc],
      ['backend', doc.result && doc.result.meta ? doc.result.meta.backend : null],
    ];
    const items = [];
    for (const [name, value] of facts) {
      if (value === null || value === undefined || value === '') continue;
      items.push(el('dt', {}, name), el('dd', { 'data-fact': name }, String(value)));
    }
    $('detail-facts').replaceChildren(...items);
  }

  function renderInputs(doc) {
    const box = $('detail-inputs');
    if (!doc.payload || typeof doc.payload !== 'object') {
      box.replaceChildren(el('p', { class: 'muted' }, 'The server did not send the inputs.'));
      return;
    }
    const items = [];
    for (const [name, value] of Object.entries(doc.payload)) {
      items.push(el('dt', {}, name), el('dd', { 'data-input': name }, inputValue(value)));
    }
    box.replaceChildren(items.length ? el('dl', { class: 'facts' }, ...items) : el('p', { class: 'muted' }, 'No inputs.'));
  }

  function inputValue(value) {
    if (typeof value === 'string' && isHttpUrl(value)) return link(value);
    if (Array.isArray(value) && value.length && value.every((v) => typeof v === 'string' && isHttpUrl(v))) {
      const list = el('ul', { class: 'links' });
      for (const url of value) list.append(el('li', {}, link(url)));
      return list;
    }
    return el('code', {}, JSON.stringify(value));
  }

  function renderOutput(doc) {
    const result = doc.result || null;
    const key = JSON.stringify([doc.status, result, doc.error]);
    if (key === state.outputKey) return; // unchanged: keep the loaded image or video
    state.outputKey = key;
    const parts = [];
    const url = result && typeof result.url === 'string' && isHttpUrl(result.url) ? result.url : null;
    if (url) {
      const ext = (result.filename || url).split('?')[0].split('.').pop().toLowerCase();
      if (IMAGE_EXT.has(ext)) {
        const img = el('img', { id: 'detail-image', src: url, alt: `result of ${doc.job_id}` });
        parts.push(el('a', { href: url, target: '_blank', rel: 'noopener noreferrer', class: 'preview' }, img));
      } else if (VIDEO_EXT.has(ext)) {
        parts.push(el('video', { id: 'detail-video', src: url, controls: '', preload: 'metadata' }));
      } else if (ext === 'json') {
        const pre = el('pre', { id: 'detail-file-json', class: 'json' }, 'loading…');
        parts.push(pre);
        loadJsonFile(url, pre);
      }
      parts.push(el('p', {}, link(url, result.filename || url)));
    }
    if (result && result.meta && Object.keys(result.meta).length) {
      parts.push(el('h4', {}, 'result.meta'), el('pre', { id: 'detail-meta', class: 'json' }, pretty(result.meta)));
    }
    if (doc.error) {
      parts.push(el('h4', {}, 'error'), el('pre', { id: 'detail-error', class: 'json error' }, pretty(doc.error)));
    }
    if (!parts.length) {
      const text = FINAL.has(doc.status) ? 'No output.' : 'Not finished yet.';
      parts.push(el('p', { class: 'muted' }, text));
    }
    $('detail-output').replaceChildren(...parts);
  }

  async function loadJsonFile(url, pre) {
    try {
      const response = await fetch(url, { cache: 'no-store' }); // /files/ needs no key
      const text = await response.text();
      try {
        pre.textContent = pretty(JSON.parse(text));
      } catch (_) {
        pre.textContent = text.slice(0, 100000);
      }
    } catch (e) {
      pre.textContent = `could not load: ${e.message}`;
    }
  }

  function renderDeliveries(doc) {
    const rows = (state.deliveries || []).map((d) =>
      el(
        'tr',
        { 'data-event-id': d.event_id || '', 'data-state': d.state || '' },
        el('td', {}, el('code', {}, d.event || ''), el('br'), el('small', { class: 'muted' }, d.url || '')),
        el('td', {}, el('span', { class: `dstate d-${d.state}` }, d.state || '')),
        el('td', { class: 'attempts' }, String(d.attempts ?? '')),
        el('td', { class: 'last-status' }, d.last_status == null ? '' : String(d.last_status)),
        el('td', { class: 'last-error' }, d.last_error || ''),
        el('td', {}, d.delivered_at_ms ? `delivered ${ago(d.delivered_at_ms)}` : d.next_attempt_at_ms ? `next ${clock(d.next_attempt_at_ms)}` : ''),
      ),
    );
    $('deliveries-body').replaceChildren(...rows);
    $('deliveries-empty').hidden = rows.length > 0 || state.deliveries === null;
    $('detail-deliveries').hidden = rows.length === 0;
    const finished = rows.length > 0 && FINAL.has(doc.status);
    $('btn-redeliver').hidden = !(state.redeliver && finished);
  }

  // -- actions --------------------------------------------------------------------------------

  async function cancelSelected() {
    const jobId = state.selected;
    if (!jobId) return;
    try {
      const doc = await api('POST', `/v1/jobs/${encodeURIComponent(jobId)}/cancel`);
      upsertJob(doc);
      toast(doc.status === 'canceled' ? 'Job canceled.' : 'Cancel requested: the job stops at its next checkpoint.');
    } catch (e) {
      toast(e.message, true);
    }
  }

  async function deleteSelected() {
    const jobId = state.selected;
    if (!jobId || !window.confirm(`Delete job ${jobId} and its result files?`)) return;
    try {
      await api('DELETE', `/v1/jobs/${encodeURIComponent(jobId)}`);
      removeJob(jobId);
      toast('Job deleted.');
    } catch (e) {
      toast(e.message, true);
    }
  }

  async function redeliverSelected() {
    const jobId = state.selected;
    if (!jobId) return;
    try {
      await api('POST', `/v1/jobs/${encodeURIComponent(jobId)}/redeliver`);
      toast('Webhook queued for delivery again.');
      state.deliveries = null; // pending again: refreshed until delivered
      once('deliveries', refreshDeliveries);
    } catch (e) {
      if (missing(e)) {
        state.redeliver = false;
        $('btn-redeliver').hidden = true;
        toast('This server cannot redeliver webhooks.', true);
      } else toast(e.message, true);
    }
  }

  // -- stats, charts, backends ----------------------------------------------------------------

  async function refreshStats() {
    const stats = await api('GET', '/stats');
    state.last.stats = Date.now();
    renderSummary(stats);
    renderTaskFilter(Object.keys(stats.predict_time_s || {}));
    const history = Array.isArray(stats.history) ? [...stats.history].sort((a, b) => a.t_ms - b.t_ms) : [];
    drawChart($('chart-queue'), history, [{ key: 'queue_depth', kind: 'line', cls: 'line' }]);
    drawChart($('chart-finished'), history, [
      { key: 'finished', kind: 'bar', cls: 'bar-ok' },
      { key: 'failed', kind: 'bar', cls: 'bar-bad' },
    ]);
  }

  function renderSummary(stats) {
    const counts = stats.counts || {};
    const cells = [
      ['queue_depth', 'queue depth', stats.queue_depth],
      ['running', 'running', stats.running],
    ];
    for (const status of ['queued', 'succeeded', 'failed', 'rejected', 'canceled']) {
      cells.push([status, status, counts[status] || 0]);
    }
    const nodes = cells.map(([key, label, value]) =>
      el('div', { class: `stat stat-${key}`, 'data-stat': key }, el('b', {}, String(value ?? 0)), el('span', {}, label)),
    );
    $('summary').replaceChildren(...nodes);
  }

  function renderTaskFilter(tasks) {
    const select = $('filter-task');
    const have = new Set([...select.options].map((o) => o.value));
    for (const task of tasks.sort()) {
      if (!have.has(task)) select.append(el('option', { value: task }, task));
    }
  }

  function drawChart(box, history, series) {
    if (!history.length) {
      box.dataset.empty = 'true';
      box.replaceChildren(el('p', { class: 'muted' }, 'no data yet'));
      return;
    }
    box.dataset.empty = 'false';
    const W = 600;
    const H = 150;
    const pad = { l: 34, r: 8, t: 10, b: 20 };
    const n = history.length;
    const max = Math.max(1, ...history.flatMap((p) => series.map((s) => Number(p[s.key]) || 0)));
    const x = (i) => pad.l + (i * (W - pad.l - pad.r)) / Math.max(1, n);
    const y = (v) => H - pad.b - (v * (H - pad.t - pad.b)) / max;
    const svg = svgEl('svg', { viewBox: `0 0 ${W} ${H}`, role: 'img', class: 'chart-svg' });
    svg.append(
      svgEl('line', { x1: pad.l, y1: y(0), x2: W - pad.r, y2: y(0), class: 'axis' }),
      svgEl('line', { x1: pad.l, y1: pad.t, x2: pad.l, y2: y(0), class: 'axis' }),
      svgText(pad.l - 4, pad.t + 8, String(max), 'end'),
      svgText(pad.l - 4, y(0), '0', 'end'),
      svgText(pad.l, H - 4, `−${n} min`, 'start'),
      svgText(W - pad.r, H - 4, 'now', 'end'),
    );
    const slot = (W - pad.l - pad.r) / Math.max(1, n);
    const bars = series.filter((s) => s.kind === 'bar');
    series.forEach((s) => {
      if (s.kind === 'line') {
        const points = history.map((p, i) => `${(x(i) + slot / 2).toFixed(1)},${y(Number(p[s.key]) || 0).toFixed(1)}`);
        const area = `${(x(0) + slot / 2).toFixed(1)},${y(0)} ${points.join(' ')} ${(x(n - 1) + slot / 2).toFixed(1)},${y(0)}`;
        svg.append(svgEl('polygon', { points: area, class: `${s.cls}-area` }));
        svg.append(svgEl('polyline', { points: points.join(' '), class: s.cls }));
      } else {
        const k = bars.indexOf(s);
        const width = Math.max(1, (slot - 2) / bars.length);
        history.forEach((p, i) => {
          const v = Number(p[s.key]) || 0;
          if (v <= 0) return;
          const rect = svgEl('rect', { x: (x(i) + 1 + k * width).toFixed(1), y: y(v).toFixed(1), width: width.toFixed(1), height: (y(0) - y(v)).toFixed(1), class: s.cls });
          rect.append(svgEl('title', {}, `${clock(p.t_ms)}: ${v} ${s.key}`));
          svg.append(rect);
        });
      }
    });
    const lastPoint = history[n - 1];
    const now = series.map((s) => `${s.key.replace('_', ' ')} ${Number(lastPoint[s.key]) || 0}`).join(' · ');
    box.replaceChildren(svg, el('p', { class: 'chart-now muted' }, `this minute: ${now}`));
  }

  async function refreshBackends() {
    const body = await api('GET', '/diag/backends');
    state.last.backends = Date.now();
    const rows = (body.backends || []).map((b) => {
      const busy = Number(b.busy) || 0;
      const slots = Number(b.slots) || 0;
      const fill = el('span');
      fill.style.width = `${slots ? (100 * busy) / slots : 0}%`;
      const unavailable = Object.entries(b.unavailable_tasks || {});
      const health = [];
      if (b.degraded) health.push(el('div', { class: 'warn', title: b.degraded }, 'degraded: ', b.degraded));
      for (const [task, reason] of unavailable) health.push(el('div', { class: 'warn', title: reason }, `${task} unavailable`));
      if (!health.length) health.push(el('span', { class: 'ok' }, 'ok'));
      return el(
        'tr',
        { 'data-backend': b.name },
        el('td', {}, el('b', {}, b.name)),
        el('td', {}, b.kind || ''),
        el('td', {}, el('code', {}, b.device || '')),
        el('td', { class: 'slots' }, el('div', { class: 'progress slots-bar' }, fill), el('span', { class: 'slots-text' }, `${busy}/${slots}`)),
        el('td', { class: 'queued' }, String(b.queued ?? '')),
        el('td', { class: 'providers' }, ...chips(b.providers)),
        el('td', { class: 'models' }, ...(b.models_loaded && b.models_loaded.length ? chips(b.models_loaded) : [el('span', { class: 'muted' }, 'none')])),
        el('td', { class: 'tasks' }, (b.tasks || []).join(', ')),
        el('td', { class: 'health' }, ...health),
      );
    });
    $('backends-body').replaceChildren(...rows);
  }

  function chips(items) {
    return (items || []).map((item) => el('span', { class: 'chip' }, String(item)));
  }

  // -- small helpers --------------------------------------------------------------------------

  function el(tag, attrs, ...children) {
    const node = document.createElement(tag);
    for (const [name, value] of Object.entries(attrs || {})) {
      if (value !== undefined && value !== null) node.setAttribute(name, String(value));
    }
    for (const child of children) {
      if (child === null || child === undefined) continue;
      node.append(child instanceof Node ? child : String(child));
    }
    return node;
  }

  function svgEl(tag, attrs, text) {
    const node = document.createElementNS(SVG_NS, tag);
    for (const [name, value] of Object.entries(attrs || {})) node.setAttribute(name, String(value));
    if (text !== undefined) node.textContent = text;
    return node;
  }

  function svgText(x, y, text, anchor) {
    return svgEl('text', { x, y, 'text-anchor': anchor, class: 'tick' }, text);
  }

  function isHttpUrl(value) {
    try {
      const url = new URL(value, window.location.href);
      return url.protocol === 'http:' || url.protocol === 'https:';
    } catch (_) {
      return false;
    }
  }

  function link(url, text) {
    return el('a', { href: url, target: '_blank', rel: 'noopener noreferrer' }, text || url);
  }

  function pretty(value) {
    return JSON.stringify(value, null, 2);
  }

  function seconds(s) {
    const v = Number(s);
    if (!Number.isFinite(v)) return '';
    if (v < 10) return `${v.toFixed(1)} s`;
    if (v < 120) return `${Math.round(v)} s`;
    if (v < 7200) return `${Math.floor(v / 60)} min ${Math.round(v % 60)} s`;
    return `${(v / 3600).toFixed(1)} h`;
  }

  function ago(ms) {
    if (!ms) return '';
    const s = (Date.now() - ms) / 1000;
    return s < 1 ? 'just now' : `${seconds(s)} ago`;
  }

  function clock(ms) {
    return new Date(ms).toLocaleTimeString();
  }

  let toastTimer = 0;
  function toast(message, isError) {
    const box = $('toast');
    box.textContent = message;
    box.classList.toggle('error', Boolean(isError));
    box.hidden = false;
    clearTimeout(toastTimer);
    toastTimer = setTimeout(() => {
      box.hidden = true;
    }, 4000);
  }

  // -- wiring ---------------------------------------------------------------------------------

  function onFilterChange() {
    state.filter = { status: $('filter-status').value, task: $('filter-task').value };
    state.jobs.clear();
    render();
    once('jobs', refreshJobs);
  }

  document.addEventListener('DOMContentLoaded', () => {
    $('key-form').addEventListener('submit', (e) => {
      e.preventDefault();
      const key = $('key-input').value.trim();
      if (key) login(key, false);
    });
    $('key-forget').addEventListener('click', () => logout(''));
    $('filter-status').addEventListener('change', onFilterChange);
    $('filter-task').addEventListener('change', onFilterChange);
    $('btn-close').addEventListener('click', closeDetail);
    $('btn-cancel').addEventListener('click', cancelSelected);
    $('btn-delete').addEventListener('click', deleteSelected);
    $('btn-redeliver').addEventListener('click', redeliverSelected);
    setInterval(onTick, 500);
    const stored = sessionStorage.getItem(KEY_STORE);
    if (stored) login(stored, true);
    else showLogin('');
  });
})();
