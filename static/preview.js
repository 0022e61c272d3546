/*! tagserver preview UI. No build step, no dependencies.
 * Safety rule: every value that comes from a hit is untrusted (page titles, event
 * parameters, headers...). It is only ever put in the page with textContent or as a text
 * node - never innerHTML - so markup in it shows as text and runs nothing.
 */
(function () {
  'use strict';

  var body = document.body;
  if (!body || !body.classList.contains('page-session')) return;

  var sid = body.getAttribute('data-session');
  var api = '/preview/api/s/' + encodeURIComponent(sid);
  var TABS = ['request', 'event', 'tags', 'variables', 'outgoing', 'console'];
  var STATUS_TEXT = {
    fired: 'fired', not_fired: 'not fired', blocked: 'blocked', paused: 'paused',
    no_consent: 'no consent', rejected: 'rejected', error: 'error'
  };

  var state = {
    session: null, expiresAt: 0, hits: [], byId: {}, cursor: 0,
    selected: null, eventIndex: 0, tab: 'request', detail: null, stream: null
  };

  // -- small DOM helpers (text only) --------------------------------------------------------

  function el(tag, cls, text) {
    var node = document.createElement(tag);
    if (cls) node.className = cls;
    if (text !== undefined && text !== null) node.textContent = String(text);
    return node;
  }

  function add(parent) {
    for (var i = 1; i < arguments.length; i++) {
      var child = arguments[i];
      if (child === null || child === undefined || child === false) continue;
      parent.appendChild(typeof child === 'string' ? document.createTextNode(child) : child);
    }
    return parent;
  }

  function $(id) { return document.getElementById(id); }

  function clear(node) { while (node.firstChild) node.removeChild(node.firstChild); return node; }

  function pad(n, w) { n = String(n); while (n.length < (w || 2)) n = '0' + n; return n; }

  function clock(seconds) {
    var d = new Date(seconds * 1000);
    return pad(d.getHours()) + ':' + pad(d.getMinutes()) + ':' + pad(d.getSeconds()) + '.' +
      pad(d.getMilliseconds(), 3);
  }

  function plural(n, word) { return n + ' ' + word + (n === 1 ? '' : 's'); }

  function safeHref(url) {
    try {
      var u = new URL(url, location.href);
      return (u.protocol === 'http:' || u.protocol === 'https:') ? u.href : '#';
    } catch (e) { return '#'; }
  }

  // -- JSON as a collapsible tree -----------------------------------------------------------

  function scalar(value) {
    var type = value === null ? 'null' : typeof value;
    var text = type === 'string' ? '"' + value + '"' : String(value);  // as devtools show it
    return el('span', 'j-' + type, text);
  }

  function preview(value) {
    if (Array.isArray(value)) return '[ ' + plural(value.length, 'item') + ' ]';
    var keys = Object.keys(value);
    var shown = keys.slice(0, 4).join(', ');
    return '{ ' + shown + (keys.length > 4 ? ', …' : '') + ' }';
  }

  function tree(value, depth) {
    depth = depth || 0;
    if (value === null || typeof value !== 'object') return scalar(value);
    var keys = Array.isArray(value) ? value.map(function (_, i) { return i; }) : Object.keys(value);
    if (!keys.length) return el('span', 'j-empty', Array.isArray(value) ? '[]' : '{}');
    var details = el('details', 'tree');
    if (depth < 2) details.open = true;
    add(details, el('summary', 'j-summary', preview(value)));
    var list = el('ul');
    keys.forEach(function (key) {
      add(list, add(el('li'), el('span', 'j-key', key), el('span', 'j-colon', ': '),
        tree(value[key], depth + 1)));
    });
    return add(details, list);
  }

  function kv(rows) {
    var table = el('table', 'kv');
    rows.forEach(function (row) {
      if (row[1] === undefined) return;
      var value = row[1];
      var cell = el('td');
      if (value instanceof Node) add(cell, value);
      else if (value !== null && typeof value === 'object') add(cell, tree(value, 1));
      else cell.textContent = value === null ? '—' : String(value);
      add(table, add(el('tr'), el('th', null, row[0]), cell));
    });
    return table;
  }

  function section(title, content) {
    return add(el('section', 'block'), el('h3', null, title), content);
  }

  function emptyNote(text) { return el('p', 'empty', text); }

  // -- network --------------------------------------------------------------------------------

  function getJSON(url) {
    return fetch(url, {credentials: 'same-origin', headers: {Accept: 'application/json'}})
      .then(function (r) {
        if (r.status === 401) { location.href = '/preview/login?next=' + encodeURIComponent(location.pathname); throw new Error('signed out'); }
        return r.json().then(function (data) {
          if (!r.ok) throw new Error(data && data.error ? data.error : 'HTTP ' + r.status);
          return data;
        });
      });
  }

  function post(action) {
    return fetch('/preview/s/' + encodeURIComponent(sid) + '/' + action, {
      method: 'POST', credentials: 'same-origin', headers: {Accept: 'application/json'}
    }).then(function (r) {
      if (r.status === 401) { location.href = '/preview/login'; throw new Error('signed out'); }
      return r.json().then(function (data) {
        if (!r.ok) throw new Error(data && data.error ? data.error : 'HTTP ' + r.status);
        return data;
      });
    });
  }

  function problem(err) {
    var bar = $('flash') || add(document.body, el('div', 'flash'));
    bar.id = 'flash';
    bar.textContent = String(err && err.message ? err.message : err);
    setTimeout(function () { bar.remove(); }, 6000);
  }

  // -- session and the "connect a source" panel -----------------------------------------------

  function showSession(session) {
    var first = state.session === null;
    state.session = session;
    state.expiresAt = Date.now() + session.remaining * 1000;
    $('session-name').textContent = session.name;
    document.title = session.name + ' · tagserver preview';
    $('token').textContent = session.token;
    $('header-line').textContent = session.header + ': ' + session.token;
    $('curl').textContent = session.curl;
    if (first) $('site-url').value = session.site_url;
    updateLink();
    updateMark(session.marked);
    tick();
  }

  function updateLink() {
    var s = state.session;
    if (!s) return;
    var link;
    try {
      var u = new URL($('site-url').value.trim() || s.site_url);
      if (u.protocol !== 'http:' && u.protocol !== 'https:') throw new Error('scheme');
      u.searchParams.set(s.param, s.token);
      link = u.href;
    } catch (e) {
      link = '';
    }
    $('site-link').textContent = link || 'Enter a full address, e.g. https://shop.example/';
    $('open-site').href = link ? safeHref(link) : '#';
    var empty = $('empty-link');
    empty.textContent = link || s.site_url;
    empty.href = safeHref(link || s.site_url);
  }

  function updateMark(marked) {
    state.session.marked = marked;
    $('mark').textContent = marked ? 'Unmark this browser' : 'Mark this browser';
    $('mark-state').textContent = marked
      ? 'This browser is marked: its hits are recorded in this session.'
      : 'Not marked.';
  }

  function tick() {
    var s = state.session;
    if (!s) return;
    var badge = $('session-state');
    var left = Math.max(0, Math.round((state.expiresAt - Date.now()) / 1000));
    if (s.stopped) {
      badge.textContent = 'stopped'; badge.className = 'badge muted';
    } else if (left <= 0) {
      badge.textContent = 'expired'; badge.className = 'badge bad';
    } else {
      badge.textContent = 'recording · ' + Math.floor(left / 60) + ':' + pad(left % 60) + ' left';
      badge.className = 'badge ' + (left < 300 ? 'warn' : 'ok');
    }
    $('stop').disabled = s.stopped || left <= 0;
  }

  function copy(id) {
    var text = $(id).textContent;
    var done = function () { problem('Copied.'); };
    if (navigator.clipboard && window.isSecureContext) {
      navigator.clipboard.writeText(text).then(done, function () { fallbackCopy(text); done(); });
    } else {
      fallbackCopy(text); done();
    }
  }

  function fallbackCopy(text) {
    var area = add(document.body, el('textarea', 'offscreen', text));
    area.select();
    try { document.execCommand('copy'); } catch (e) { /* nothing more to try */ }
    area.remove();
  }

  // -- the hit list ---------------------------------------------------------------------------

  function hitHasProblem(hit) {
    return (hit.status && hit.status >= 400) || !!hit.error || hit.tag_errors > 0 ||
      (hit.deliveries && hit.deliveries.failed > 0) || !hit.client;
  }

  function renderHit(hit) {
    var li = el('li', 'hit' + (hitHasProblem(hit) ? ' problem' : ''));
    li.setAttribute('data-id', hit.id);
    var head = el('button', 'hit-head');
    head.type = 'button';
    var status = el('span', 'status s' + String(hit.status || 0).charAt(0), hit.status || '—');
    add(head, el('time', null, clock(hit.time)), el('span', 'method', hit.method),
      el('span', 'path', hit.path), status);
    head.addEventListener('click', function () { select(hit.id, 0); });
    var meta = el('div', 'hit-meta');
    add(meta, el('span', 'client', hit.client ? hit.client : 'no client claimed it'));
    add(meta, containerBadge(hit.container));
    var d = hit.deliveries || {total: 0, failed: 0};
    if (d.total) {
      add(meta, el('span', 'deliv' + (d.failed ? ' bad' : ''),
        d.failed ? plural(d.failed, 'failed delivery') : plural(d.total, 'delivery')));
    }
    add(li, head, meta);
    if (hit.error) add(li, el('div', 'hit-error', hit.error));
    var events = el('ol', 'events');
    (hit.events || []).forEach(function (ev, index) {
      var button = el('button', 'event' + (ev.errors ? ' problem' : ''));
      button.type = 'button';
      add(button, el('span', 'ename', ev.name),
        el('span', 'count', plural(ev.fired, 'tag') + ' fired'),
        ev.errors ? el('span', 'err', plural(ev.errors, 'error')) : null);
      button.addEventListener('click', function () {
        select(hit.id, index, state.tab === 'request' ? 'tags' : null);
      });
      add(events, add(el('li'), button));
    });
    if (hit.event_count > (hit.events || []).length) {
      add(events, el('li', 'more', '… ' + (hit.event_count - hit.events.length) + ' more events'));
    }
    add(li, events);
    return li;
  }

  function addHit(hit) {
    if (state.byId[hit.id]) return;
    if (state.autoConnect && !state.hits.length) {  // opened for lack of hits: make room now
      state.autoConnect = false;
      $('connect').hidden = true;
    }
    state.byId[hit.id] = hit;
    state.hits.push(hit);
    var list = $('hit-list');
    list.insertBefore(renderHit(hit), list.firstChild);  // newest on top
    var limit = state.session && state.session.limits ? state.session.limits.per_session : 500;
    while (state.hits.length > limit) {
      var old = state.hits.shift();
      delete state.byId[old.id];
      var node = list.querySelector('li.hit[data-id="' + CSS.escape(old.id) + '"]');
      if (node) node.remove();
    }
    updateCount();
    markSelection();
  }

  function replaceHit(hit) {
    var node = $('hit-list').querySelector('li.hit[data-id="' + CSS.escape(hit.id) + '"]');
    if (node) node.replaceWith(renderHit(hit));
    markSelection();
  }

  function updateCount() {
    $('hit-count').textContent = plural(state.hits.length, 'hit');
    $('hits-empty').hidden = state.hits.length > 0;
  }

  function markSelection() {
    var nodes = $('hit-list').querySelectorAll('li.hit');
    Array.prototype.forEach.call(nodes, function (node) {
      var on = node.getAttribute('data-id') === state.selected;
      node.classList.toggle('selected', on);
      var events = node.querySelectorAll('button.event');
      Array.prototype.forEach.call(events, function (b, i) {
        b.classList.toggle('selected', on && i === state.eventIndex);
      });
    });
  }

  // -- selection and the detail panel ----------------------------------------------------------

  function select(id, eventIndex, tab) {
    state.selected = id;
    state.eventIndex = eventIndex || 0;
    if (tab) state.tab = tab;
    markSelection();
    showTabs();
    var panel = clear($('panel'));
    add(panel, emptyNote('Loading…'));
    loadDetail();
  }

  function loadDetail() {
    var id = state.selected;
    if (!id) return;
    getJSON(api + '/hits/' + encodeURIComponent(id)).then(function (trace) {
      if (state.selected !== id) return;
      state.detail = trace;
      renderPanel();
    }, function (err) {
      if (state.selected !== id) return;
      add(clear($('panel')), emptyNote(String(err.message || err)));
    });
  }

  function showTabs() {
    Array.prototype.forEach.call($('tabs').querySelectorAll('button'), function (b) {
      var on = b.getAttribute('data-tab') === state.tab;
      b.classList.toggle('active', on);
      b.setAttribute('aria-selected', on ? 'true' : 'false');
    });
  }

  function currentEvent() {
    var events = (state.detail && state.detail.events) || [];
    return events[state.eventIndex] || events[0] || null;
  }

  function renderPanel() {
    var panel = clear($('panel'));
    var trace = state.detail;
    if (!trace) { add(panel, emptyNote('Select a hit or an event on the left.')); return; }
    var events = trace.events || [];
    if (['event', 'tags', 'variables', 'outgoing'].indexOf(state.tab) >= 0) {
      if (!events.length) {
        add(panel, emptyNote(trace.error
          ? 'This hit produced no events: ' + trace.error
          : 'This hit produced no events.'));
        return;
      }
      var ev = currentEvent();
      var heading = el('div', 'panel-head');
      add(heading, el('strong', null, (ev.event && ev.event.event_name) || '(no event_name)'),
        el('span', 'muted', ' event ' + (events.indexOf(ev) + 1) + ' of ' + events.length +
          ' · ' + clock(trace.time)));
      add(panel, heading);
    }
    var render = {request: renderRequest, event: renderEvent, tags: renderTags,
      variables: renderVariables, outgoing: renderOutgoing, console: renderConsole}[state.tab];
    render(panel, trace);
  }

  function renderRequest(panel, trace) {
    var req = trace.request || {};
    add(panel, section('Request', kv([
      ['Method', req.method], ['URL', req.url],
      ['Client', trace.client || 'none — no client claimed this request'],
      ['Status', trace.status], ['Duration', trace.duration_ms + ' ms'],
      ['Visitor IP', req.ip], ['Received', clock(trace.time)],
      ['Container', containerText(trace.container)],
      ['Error', trace.error || undefined]
    ])));
    add(panel, section('Headers', tree(req.headers || {}, 1)));
    add(panel, section('Cookies', Object.keys(req.cookies || {}).length
      ? tree(req.cookies, 1) : emptyNote('No cookies.')));
    var bodyText = req.body || '';
    var bodyNode;
    if (!bodyText) bodyNode = emptyNote('No body.');
    else {
      try { bodyNode = tree(JSON.parse(bodyText), 1); } catch (e) { bodyNode = el('pre', 'wrap', bodyText); }
    }
    add(panel, section('Body', bodyNode));
  }

  function renderEvent(panel) {
    var ev = currentEvent();
    add(panel, renderEventWarnings(ev));
    add(panel, section('Event data (as the tags saw it)', tree(ev.event || {}, 0)));
  }

  function conditionsTable(trigger) {
    var table = el('table', 'conditions');
    add(table, add(el('tr'), el('th', null, 'variable'), el('th', null, 'operator'),
      el('th', null, 'expected'), el('th', null, 'actual value'), el('th', null, '')));
    (trigger.conditions || []).forEach(function (c) {
      add(table, add(el('tr', c.passed ? 'pass' : 'fail'),
        el('td', 'mono', c.variable), el('td', null, String(c.operator).replace(/_/g, ' ')),
        add(el('td'), tree(c.expected, 2)), add(el('td'), tree(c.actual, 2)),
        el('td', 'verdict', c.passed ? '✓ held' : '✗ failed')));
    });
    return table;
  }

  function renderTag(tag) {
    var ok = tag.status === 'fired';
    var card = el('article', 'tag ' + tag.status);
    card.setAttribute('data-tag', tag.tag);
    var head = el('div', 'tag-head');
    add(head, el('span', 'badge ' + (ok ? 'ok' : (tag.status === 'error' || tag.status === 'rejected') ? 'bad' : 'muted'),
      STATUS_TEXT[tag.status] || tag.status), el('strong', 'tag-name', tag.tag), el('span', 'muted', tag.type));
    add(card, head, el('p', 'reason', tag.reason));
    (tag.triggers || []).forEach(function (t) {
      var block = el('div', 'trigger ' + (t.matched ? 'matched' : 'unmatched'));
      add(block, add(el('div', 'trigger-head'),
        el('span', 'mono', (t.matched ? '✓ ' : '✗ ') + 'trigger ' + t.trigger),
        el('span', 'muted', t.event_matched ? ' event name matched' : ' event name ' + JSON.stringify(t.event_name) + ' does not match')));
      if ((t.conditions || []).length) add(block, conditionsTable(t));
      add(card, block);
    });
    var extra = el('div', 'tag-extra');
    // collapsed: the reason and the triggers above are what a tag card is read for
    add(card, renderTransformations(tag));
    add(card, renderMatch(tag));
    if (tag.params) add(extra, section('Parameters (resolved)', tree(tag.params, 2)));
    if (tag.notes && Object.keys(tag.notes).length) add(extra, section('Notes', tree(tag.notes, 1)));
    if ((tag.outgoing || []).length) add(extra, el('p', 'muted', plural(tag.outgoing.length, 'outgoing message') + ' — see Outgoing'));
    if (tag.duration_ms) add(extra, el('p', 'muted', 'ran in ' + tag.duration_ms + ' ms'));
    add(card, extra);
    return card;
  }

  // -- container version and transformations (container history / transformations) ----------

  function containerText(c) {
    if (!c) return undefined;
    return (c.name ? c.name + ' ' : '') + 'version ' + (c.version || '—') + ' (' + c.hash + ')';
  }

  function containerBadge(c) {
    if (!c) return null;
    var badge = el('span', 'cversion', 'v' + (c.version || '—'));
    badge.title = 'handled by container version ' + (c.version || '—') + ', hash ' + c.hash;
    return badge;
  }

  function renderTransformations(tag) {
    var steps = tag.transformations;
    if (!steps || !steps.length) return null;
    var box = el('div', 'transformations');
    add(box, el('h4', null, 'Event data this tag received'));
    steps.forEach(function (step) {
      add(box, el('p', 'step ' + (step.applied ? 'applied' : 'skipped'),
        (step.applied ? '✓ ' : '– ') + step.type + ' “' + step.name + '”: ' +
        (step.applied ? plural(step.changes.length, 'key') + ' changed' : step.reason)));
    });
    var changes = [];
    steps.forEach(function (step) { changes = changes.concat(step.changes || []); });
    if (changes.length) {
      var table = el('table', 'diff');
      add(table, add(el('tr'), el('th', null, 'key'), el('th', null, 'before'),
        el('th', null, 'after'), el('th', null, 'changed by')));
      changes.forEach(function (c) {
        add(table, add(el('tr', 'change ' + c.change), el('td', 'mono', c.key),
          add(el('td', 'before'), c.change === 'added' ? el('span', 'muted', '(absent)') : tree(c.before, 2)),
          add(el('td', 'after'), c.change === 'removed' ? el('span', 'muted', '(removed)') : tree(c.after, 2)),
          el('td', 'mono', c.transformation + ' (' + c.type + ')')));
      });
      add(box, table);
    } else {
      add(box, el('p', 'muted', 'No key changed: the tag received the event as it came.'));
    }
    var received = el('details', 'received');
    add(received, el('summary', null, 'The whole event as received'), tree(tag.received || {}, 1));
    add(box, received);
    return box;
  }

  // -- match quality (identity cookie, geography) and event-id reuse -----------------------

  var MATCH_SOURCES = [['event', 'from the event'], ['identity_cookie', 'from the identity cookie'],
    ['geography', 'from geography']];

  function renderMatch(tag) {
    var m = tag.match;
    if (!m) return null;
    var box = el('div', 'match');
    add(box, el('h4', null, 'Match keys: quality ' + m.quality_before + ' → ' + m.quality_after +
      (m.gain ? ' (+' + m.gain + ')' : '')));
    var table = el('table', 'match-keys');
    MATCH_SOURCES.forEach(function (pair) {
      var keys = (m.keys || {})[pair[0]] || [];
      add(table, add(el('tr', 'source ' + pair[0]), el('th', null, pair[1]),
        el('td', 'mono', keys.length ? keys.join(', ') : '—')));
    });
    add(box, table);
    return box;
  }

  function renderEventWarnings(ev) {
    var warnings = ev.warnings || [];
    if (!warnings.length) return null;
    var box = el('div', 'event-warnings');
    warnings.forEach(function (w) { add(box, el('p', 'warning', '⚠ ' + w)); });
    return box;
  }

  function renderTags(panel) {
    var tags = currentEvent().tags || [];
    if (!tags.length) { add(panel, emptyNote('The container has no tags.')); return; }
    var fired = tags.filter(function (t) { return t.status === 'fired'; });
    var other = tags.filter(function (t) { return t.status !== 'fired'; });
    var a = el('div', 'tag-list fired');
    fired.forEach(function (t) { add(a, renderTag(t)); });
    var b = el('div', 'tag-list not-fired');
    other.forEach(function (t) { add(b, renderTag(t)); });
    add(panel, section('Fired (' + fired.length + ')', fired.length ? a : emptyNote('No tag fired for this event.')));
    add(panel, section('Not fired (' + other.length + ')', other.length ? b : emptyNote('Every tag fired.')));
  }

  function renderVariables(panel) {
    var vars = currentEvent().variables;
    if (!vars) { add(panel, emptyNote('No variables were recorded for this event.')); return; }
    var table = el('table', 'kv vars');
    Object.keys(vars).forEach(function (name) {
      add(table, add(el('tr'), el('th', 'mono', name), add(el('td'), tree(vars[name], 1))));
    });
    add(panel, section('Variables (resolved for this event)', table));
  }

  function deliveryCard(d) {
    var good = d.outcome === 'delivered';
    var card = el('div', 'delivery ' + (good ? 'good' : 'bad'));
    add(card, add(el('div', 'tag-head'),
      el('span', 'badge ' + (good ? 'ok' : d.outcome === 'retry' ? 'warn' : 'bad'), d.outcome || 'result'),
      el('strong', null, d.status ? 'HTTP ' + d.status : 'no HTTP status'),
      el('span', 'muted', d.latency_ms !== undefined && d.latency_ms !== null ? ' ' + d.latency_ms + ' ms' : '')));
    add(card, kv([
      ['Attempt', d.attempt !== undefined ? d.attempt : d.attempts],
      ['Retries', d.retries],
      ['Next retry in', d.retry_after !== undefined && d.retry_after !== null ? d.retry_after + ' s' : undefined],
      ['Error', d.error || undefined], ['Code', d.code || undefined], ['Vendor trace', d.trace || undefined],
      ['Time', d.time ? clock(d.time) : undefined]
    ]));
    if (d.request !== undefined) add(card, section('Request (secrets redacted)', tree(d.request, 1)));
    if (d.response !== undefined) add(card, section('Response', tree(d.response, 1)));
    return card;
  }

  function renderOutgoing(panel, trace) {
    var ev = currentEvent();
    var deliveries = (trace.deliveries || []).slice();
    var messages = [];
    (ev.tags || []).forEach(function (tag) {
      (tag.outgoing || []).forEach(function (m) { messages.push({tag: tag, message: m}); });
    });
    if (!messages.length) {
      add(panel, emptyNote('No tag built an outgoing message for this event.'));
    }
    messages.forEach(function (item) {
      var m = item.message;
      var card = el('article', 'outgoing');
      add(card, add(el('div', 'tag-head'), el('strong', 'tag-name', item.tag.tag),
        el('span', 'muted', item.tag.type), el('span', 'mono', m.destination)));
      add(card, kv([['Dedup id', m.dedup_id]]));
      add(card, section('Payload', tree(m.payload, 1)));
      var mine = deliveries.filter(function (d) {
        return d.dedup_id ? d.dedup_id === m.dedup_id : (d.destination && d.destination === m.destination);
      });
      deliveries = deliveries.filter(function (d) { return mine.indexOf(d) < 0; });
      var results = el('div', 'deliveries');
      if (!mine.length) add(results, emptyNote('No delivery result yet (it shows here when the message is sent).'));
      mine.forEach(function (d) { add(results, deliveryCard(d)); });
      add(card, section('Delivery', results));
      add(panel, card);
    });
    if (deliveries.length) {
      var other = el('div', 'deliveries');
      deliveries.forEach(function (d) { add(other, deliveryCard(d)); });
      add(panel, section('Other delivery results of this hit', other));
    }
  }

  function renderConsole(panel, trace) {
    var lines = (trace.console || []).map(function (c) {
      return {time: c.time, level: c.level || 'info', message: c.message};
    });
    if (trace.error) lines.push({time: trace.time, level: 'error', message: trace.error});
    (trace.events || []).forEach(function (ev) {
      var name = (ev.event && ev.event.event_name) || '?';
      (ev.tags || []).forEach(function (t) {
        if (t.status === 'error' || t.status === 'rejected') {
          lines.push({time: trace.time, level: t.status === 'error' ? 'error' : 'warning',
            message: name + ' › tag ' + t.tag + ': ' + t.reason});
        }
      });
    });
    (trace.deliveries || []).forEach(function (d) {
      lines.push({time: d.time || trace.time, level: d.outcome === 'delivered' ? 'info' : 'warning',
        message: 'delivery ' + (d.outcome || '') + (d.status ? ' (HTTP ' + d.status + ')' : '') +
          (d.destination ? ' to ' + d.destination : '') + (d.error ? ': ' + d.error : '')});
    });
    if (!lines.length) { add(panel, emptyNote('Nothing was logged for this hit.')); return; }
    lines.sort(function (a, b) { return (a.time || 0) - (b.time || 0); });
    var list = el('ol', 'console');
    lines.forEach(function (l) {
      add(list, add(el('li', 'lvl-' + l.level), el('time', null, l.time ? clock(l.time) : ''),
        el('span', 'lvl', l.level), el('span', 'msg', l.message)));
    });
    add(panel, list);
  }

  // -- live updates -------------------------------------------------------------------------------

  function connect() {
    if (state.stream) state.stream.close();
    var es = new EventSource(api + '/stream?after=' + state.cursor);
    state.stream = es;
    var indicator = $('stream-state');
    es.onopen = function () { indicator.textContent = '● live'; indicator.className = 'stream-state on'; };
    es.onerror = function () {
      indicator.textContent = '○ reconnecting'; indicator.className = 'stream-state off';
      if (es.readyState === EventSource.CLOSED) {
        // refused (signed out, session deleted): check why, then try again
        getJSON(api).then(function (s) { showSession(s); setTimeout(connect, 2000); }, problem);
      }
    };
    es.addEventListener('hit', function (e) {
      var entry = JSON.parse(e.data);
      state.cursor = Math.max(state.cursor, entry.seq);
      addHit(entry.hit);
    });
    es.addEventListener('delivery', function (e) {
      var entry = JSON.parse(e.data);
      state.cursor = Math.max(state.cursor, entry.seq);
      var hit = state.byId[entry.trace_id];
      if (!hit) return;
      hit.deliveries = entry.deliveries;
      replaceHit(hit);
      if (state.selected === entry.trace_id) loadDetail();
    });
    es.addEventListener('session', function (e) {
      var s = JSON.parse(e.data);
      state.session.stopped = s.stopped;
      state.expiresAt = Date.now() + Math.max(0, s.expires * 1000 - Date.now());
      getJSON(api).then(showSession, problem);
    });
    es.addEventListener('gone', function () {
      es.close();
      problem('This session was deleted.');
      indicator.textContent = '○ session deleted';
    });
  }

  // -- wiring ---------------------------------------------------------------------------------------

  Array.prototype.forEach.call($('tabs').querySelectorAll('button'), function (b) {
    b.addEventListener('click', function () {
      state.tab = b.getAttribute('data-tab');
      showTabs();
      renderPanel();
    });
  });

  $('renew').addEventListener('click', function () { post('renew').then(showSession, problem); });
  $('stop').addEventListener('click', function () { post('stop').then(showSession, problem); });
  $('toggle-connect').addEventListener('click', function () {
    state.autoConnect = false;
    $('connect').hidden = !$('connect').hidden;
  });
  $('mark').addEventListener('click', function () {
    post(state.session.marked ? 'unmark' : 'mark').then(function (s) { showSession(s); }, problem);
  });
  $('clear').addEventListener('click', function () {
    post('clear').then(function () {
      state.hits = []; state.byId = {}; state.selected = null; state.detail = null;
      clear($('hit-list')); updateCount(); renderPanel();
    }, problem);
  });
  $('site-url').addEventListener('input', updateLink);
  Array.prototype.forEach.call(document.querySelectorAll('[data-copy]'), function (b) {
    b.addEventListener('click', function () { copy(b.getAttribute('data-copy')); });
  });
  setInterval(tick, 1000);
  showTabs();

  getJSON(api).then(function (session) {
    showSession(session);
    return getJSON(api + '/hits');
  }).then(function (data) {
    state.cursor = data.cursor;
    data.hits.forEach(addHit);
    updateCount();
    if (!data.hits.length) { $('connect').hidden = false; state.autoConnect = true; }
    connect();
  }).catch(problem);
})();
