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
  var root = body.getAttribute('data-root') || '';  // TAGSERVER_ROOT_PATH, e.g. /tag
  var api = root + '/preview/api/s/' + encodeURIComponent(sid);
  var TABS = ['request', 'event', 'tags', 'variables', 'outgoing', 'console'];
  var STATUS_TEXT = {
    fired: 'fired', dry_run: 'dry run', not_fired: 'not fired', blocked: 'blocked',
    paused: 'paused', no_consent: 'no consent', rejected: 'rejected', error: 'error'
  };
  // where a message's delivery stands, from its latest result (none yet: pending)
  var DELIVERY_TEXT = {
    pending: 'pending', delivered: 'delivered', retry: 'retrying', dead_letter: 'dead-lettered'
  };
  // bidirectional controls reorder the text around them: shown as ⟨U+202E⟩ instead
  var BIDI = /[\u061C\u200E\u200F\u202A-\u202E\u2066-\u2069]/g;

  var state = {
    session: null, expiresAt: 0, hits: [], byId: {}, cursor: 0,
    selected: null, eventIndex: 0, tab: 'request', detail: null, stream: null
  };

  // -- small DOM helpers (text only) --------------------------------------------------------

  function visible(text) {
    return String(text).replace(BIDI, function (c) {
      return '\u27E8U+' + pad(c.charCodeAt(0).toString(16).toUpperCase(), 4) + '\u27E9';
    });
  }

  function el(tag, cls, text) {
    var node = document.createElement(tag);
    if (cls) node.className = cls;
    if (text !== undefined && text !== null) node.textContent = visible(text);
    return node;
  }

  function add(parent) {
    for (var i = 1; i < arguments.length; i++) {
      var child = arguments[i];
      if (child === null || child === undefined || child === false) continue;
      parent.appendChild(typeof child === 'string' ? document.createTextNode(visible(child)) : child);
    }
    return parent;
  }

  function $(id) { return document.getElementById(id); }

  function appPath() {  // this page's path without the root path
    var path = location.pathname;
    return root && path.indexOf(root + '/') === 0 ? path.slice(root.length) : path;
  }

  function clear(node) { while (node.firstChild) node.removeChild(node.firstChild); return node; }

  function pad(n, w) { n = String(n); while (n.length < (w || 2)) n = '0' + n; return n; }

  function clock(seconds) {
    var d = new Date(seconds * 1000);
    return pad(d.getHours()) + ':' + pad(d.getMinutes()) + ':' + pad(d.getSeconds()) + '.' +
      pad(d.getMilliseconds(), 3);
  }

  function plural(n, word, many) { return n + ' ' + (n === 1 ? word : many || word + 's'); }

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
    var shown = keys.slice(0, 4).map(visible).join(', ');
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
      else cell.textContent = value === null ? '—' : visible(value);
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
        if (r.status === 401) { location.href = root + '/preview/login?next=' + encodeURIComponent(appPath()); throw new Error('signed out'); }
        return r.json().then(function (data) {
          if (!r.ok) throw new Error(data && data.error ? data.error : 'HTTP ' + r.status);
          return data;
        });
      });
  }

  function post(action) {
    return fetch(root + '/preview/s/' + encodeURIComponent(sid) + '/' + action, {
      method: 'POST', credentials: 'same-origin', headers: {Accept: 'application/json'}
    }).then(function (r) {
      if (r.status === 401) { location.href = root + '/preview/login'; throw new Error('signed out'); }
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
      hit.rejected > 0 || (hit.deliveries && hit.deliveries.failed > 0) || !hit.client;
  }

  function deliverySummary(d) {
    // each message once, by where it stands now: "2 deliveries: 1 delivered, 1 dead-lettered"
    if (!d.total) return [];
    var mixed = [d.delivered, d.retrying, d.failed].filter(Boolean).length > 1;
    var parts = mixed ? [el('span', 'deliv', plural(d.total, 'delivery', 'deliveries') + ':')] : [];
    if (d.delivered) parts.push(el('span', 'deliv ok', d.delivered + ' delivered'));
    if (d.retrying) parts.push(el('span', 'deliv warn', d.retrying + ' retrying'));
    if (d.failed) parts.push(el('span', 'deliv bad', d.failed + ' dead-lettered'));
    return parts;
  }

  function renderHit(hit) {
    var li = el('li', 'hit' + (hitHasProblem(hit) ? ' problem' : ''));
    li.setAttribute('data-id', hit.id);
    var head = el('button', 'hit-head');
    head.type = 'button';
    var status = el('span', 'status s' + String(hit.status || 0).charAt(0), hit.status || '—');
    // the page the hit came from says more than "POST /collect"; the request line stays below
    var where = hit.page ? el('span', 'path page', hit.page.replace(/^https?:\/\//, ''))
      : el('span', 'path', hit.method + ' ' + hit.path);
    if (hit.page) where.title = hit.page;
    add(head, el('time', null, clock(hit.time)), where, status);
    head.addEventListener('click', function () { select(hit.id, 0); });
    var meta = el('div', 'hit-meta');
    if (hit.page) add(meta, el('span', 'reqline', hit.method + ' ' + hit.path));
    add(meta, el('span', 'client', hit.client ? hit.client : 'no client claimed it'));
    add(meta, containerBadge(hit.container));
    if (hit.rejected) add(meta, el('span', 'rejected', plural(hit.rejected, 'rejected event')));
    deliverySummary(hit.deliveries || {}).forEach(function (part) { add(meta, part); });
    add(li, head, meta);
    if (hit.error) add(li, el('div', 'hit-error', hit.error));
    var events = el('ol', 'events');
    (hit.events || []).forEach(function (ev, index) {
      var button = el('button', 'event' + (ev.errors ? ' problem' : ''));
      button.type = 'button';
      add(button, el('span', 'ename', ev.name),
        el('span', 'count', plural(ev.fired, 'tag') + ' fired'),
        ev.dry_run ? el('span', 'dry', plural(ev.dry_run, 'dry run')) : null,
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
        if ((trace.rejected || []).length) add(panel, rejectedList(trace.rejected));
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
    if ((trace.rejected || []).length) add(panel, rejectedList(trace.rejected));
    add(panel, renderResponse(trace.response));
  }

  function rejectedList(rejected) {
    var list = el('ol', 'rejected-list');
    rejected.forEach(function (r) {
      add(list, add(el('li'), el('strong', null, 'event ' + r.index), ': ' + r.reason));
    });
    return section('Rejected events (' + rejected.length + ')', list);
  }

  function renderResponse(response) {
    // what the hit was answered: status, headers, and the cookies set (names, never values)
    if (!response) return section('Response', emptyNote('No response was recorded.'));
    var box = el('div', 'response');
    add(box, kv([['Status', response.status]]));
    add(box, tree(response.headers || {}, 1));
    var cookies = response.cookies || [];
    if (cookies.length) {
      var table = el('table', 'kv cookies-set');
      cookies.forEach(function (c) {
        add(table, add(el('tr'), el('th', 'mono', c.name), el('td', 'muted', c.attributes || '')));
      });
      add(box, section('Cookies set (values not shown)', table));
    } else {
      add(box, section('Cookies set', emptyNote('No cookie was set.')));
    }
    return section('Response', box);
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

  function tagName(d) {
    // a destination named by the tag that sent to it (its key is a hash, meaningless to people)
    return d.tag ? d.tag + ' (' + (d.tag_type || 'tag') + ')' : (d.tag_type || d.destination || 'a destination');
  }

  function latestDelivery(deliveries, tag, message) {
    var found = null;
    deliveries.forEach(function (d) {
      if (d.dedup_id === message.dedup_id && (!d.tag || d.tag === tag.tag)) found = d;
    });
    return found;
  }

  function deliveryState(d) {
    if (!d) return {state: 'pending', text: 'pending', detail: 'stored, not sent yet'};
    var state = d.outcome === 'permanent' ? 'dead_letter' : d.outcome;
    var detail = '';
    if (state === 'delivered') detail = d.status ? 'HTTP ' + d.status : '';
    else if (state === 'retry') {
      detail = 'attempt ' + d.attempt + (d.error ? ' failed: ' + d.error : ' failed') +
        (d.next_attempt_in ? ' · next try in ' + d.next_attempt_in + ' s' : '');
    } else if (state === 'dead_letter') {
      detail = (d.reason || 'not delivered') + (d.error ? ': ' + d.error : '') +
        (d.status && (d.error || '').indexOf('HTTP ' + d.status) < 0 ? ' (HTTP ' + d.status + ')' : '');
    }
    return {state: state, text: DELIVERY_TEXT[state] || state, detail: detail};
  }

  function deliveryLine(tag, message) {
    var d = deliveryState(latestDelivery((state.detail && state.detail.deliveries) || [], tag, message));
    var line = el('p', 'delivery-state ds-' + d.state);
    add(line, el('span', 'badge ' + ({delivered: 'ok', pending: 'muted', retry: 'warn'}[d.state] || 'bad'),
      d.text), d.detail ? ' ' + d.detail : null);
    return {node: line, state: d.state};
  }

  function renderTag(tag) {
    var ok = tag.status === 'fired';
    var card = el('article', 'tag ' + tag.status);
    card.setAttribute('data-tag', tag.tag);
    var head = el('div', 'tag-head');
    var badge = ok ? 'ok' : tag.status === 'dry_run' ? 'warn' :
      (tag.status === 'error' || tag.status === 'rejected') ? 'bad' : 'muted';
    add(head, el('span', 'badge ' + badge, STATUS_TEXT[tag.status] || tag.status),
      el('strong', 'tag-name', tag.tag), el('span', 'muted', tag.type));
    add(card, head, el('p', 'reason', tag.reason));
    var worst = null;
    (tag.outgoing || []).forEach(function (m) {
      var line = deliveryLine(tag, m);
      if (line.state !== 'delivered') worst = worst === 'dead_letter' ? worst : line.state;
      add(card, line.node);
    });
    if (worst) card.classList.add('delivery-' + worst);
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
    if ((tag.dry_run || []).length) add(extra, el('p', 'muted', 'dry run: the payload it would send is in Outgoing'));
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
    var groups = {fired: [], dry_run: [], other: []};
    tags.forEach(function (t) { (groups[t.status] || groups.other).push(t); });
    var list = function (cls, items) {
      var node = el('div', 'tag-list ' + cls);
      items.forEach(function (t) { add(node, renderTag(t)); });
      return node;
    };
    add(panel, section('Fired (' + groups.fired.length + ')', groups.fired.length
      ? list('fired', groups.fired) : emptyNote('No tag fired for this event.')));
    if (groups.dry_run.length) {
      add(panel, section('Dry run (' + groups.dry_run.length + ') — built, not sent',
        list('dry-run', groups.dry_run)));
    }
    add(panel, section('Not fired (' + groups.other.length + ')', groups.other.length
      ? list('not-fired', groups.other) : emptyNote('Every tag fired.')));
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
      el('span', 'badge ' + (good ? 'ok' : d.outcome === 'retry' ? 'warn' : 'bad'),
        DELIVERY_TEXT[d.outcome] || d.outcome || 'result'),
      el('strong', null, d.status ? 'HTTP ' + d.status : 'no HTTP status'),
      el('span', 'muted', d.latency_ms !== undefined && d.latency_ms !== null ? ' ' + d.latency_ms + ' ms' : '')));
    add(card, kv([
      ['Attempt', d.attempt !== undefined ? d.attempt : d.attempts],
      ['Retries', d.retries],
      ['Next retry in', d.next_attempt_in !== undefined && d.next_attempt_in !== null ? d.next_attempt_in + ' s' : undefined],
      ['Reason', d.reason || undefined],
      ['Error', d.error || undefined], ['Code', d.code || undefined], ['Vendor trace', d.trace || undefined],
      ['Time', d.time ? clock(d.time) : undefined]
    ]));
    if (d.request !== undefined) add(card, section('Request (secrets redacted)', tree(d.request, 1)));
    if (d.response !== undefined) add(card, section('Response', tree(d.response, 1)));
    return card;
  }

  function dryRunCard(tag, dry) {
    var card = el('article', 'outgoing dry-run');
    add(card, add(el('div', 'tag-head'), el('span', 'badge warn dry-badge', 'DRY RUN'),
      el('strong', 'tag-name', tag.tag), el('span', 'muted', tag.type)));
    add(card, el('p', 'reason', 'Not sent: ' + dry.reason + '. This is the payload it would send.'));
    add(card, section('Payload (dry run)', tree(dry.payload, 1)));
    return card;
  }

  function renderOutgoing(panel, trace) {
    var ev = currentEvent();
    var deliveries = (trace.deliveries || []).slice();
    var messages = [], dry = [];
    (ev.tags || []).forEach(function (tag) {
      (tag.outgoing || []).forEach(function (m) { messages.push({tag: tag, message: m}); });
      (tag.dry_run || []).forEach(function (d) { dry.push({tag: tag, dry: d}); });
    });
    if (!messages.length && !dry.length) {
      add(panel, emptyNote('No tag built an outgoing message for this event.'));
    }
    dry.forEach(function (item) { add(panel, dryRunCard(item.tag, item.dry)); });
    messages.forEach(function (item) {
      var m = item.message;
      var card = el('article', 'outgoing');
      card.setAttribute('data-tag', item.tag.tag);
      add(card, add(el('div', 'tag-head'), el('strong', 'tag-name', item.tag.tag),
        el('span', 'muted', item.tag.type)));
      add(card, deliveryLine(item.tag, m).node);
      add(card, kv([['Dedup id', m.dedup_id], ['Destination key', el('span', 'mono muted', m.destination)]]));
      add(card, section('Payload', tree(m.payload, 1)));
      var mine = deliveries.filter(function (d) {
        return d.dedup_id ? d.dedup_id === m.dedup_id && (!d.tag || d.tag === item.tag.tag)
          : (d.destination && d.destination === m.destination);
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
        if (t.status === 'dry_run') {
          lines.push({time: trace.time, level: 'info', message: name + ' › tag ' + t.tag + ': ' + t.reason});
        }
        if (t.status === 'error' || t.status === 'rejected') {
          lines.push({time: trace.time, level: t.status === 'error' ? 'error' : 'warning',
            message: name + ' › tag ' + t.tag + ': ' + t.reason});
        }
      });
    });
    (trace.deliveries || []).forEach(function (d) {
      var level = d.outcome === 'delivered' ? 'info' : d.outcome === 'retry' ? 'warning' : 'error';
      lines.push({time: d.time || trace.time, level: level,
        message: 'delivery ' + (d.outcome || '') + (d.status ? ' (HTTP ' + d.status + ')' : '') +
          ' to ' + tagName(d) + (d.reason ? ': ' + d.reason : '') + (d.error ? ': ' + d.error : '')});
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
