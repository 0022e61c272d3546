/*! tagserver collector.js: sends events to your own tagging server (first-party). */
// Snippet (before this script loads, calls are queued by the stub, which makes each event's id
// itself so that `tagserver('event', ...)` returns it even then; queued calls keep that id):
//   window.tagserver = window.tagserver || function (c, n, p, o) {
//     if (c == 'event') { o = Object.assign({}, o);
//       o.event_id = o.event_id || crypto.getRandomValues(new Uint32Array(4)).join('-'); }
//     (tagserver.q = tagserver.q || []).push([c, n, p, o]); return o && o.event_id; };
//   tagserver('config', {send_page_view: true, spa: false});
// API:
//   tagserver('config', {endpoint, send_page_view, spa})
//   tagserver('consent', {ad_storage: 'granted'|'denied', analytics_storage, ...})
//   tagserver('user', {email, phone, first_name, last_name, street, city, region,
//                      postal_code, country, external_id})   null: logout (forget the user)
//   var id = tagserver('event', name, params, {event_id, callback(id, result)})
// Full-line comments and indentation are stripped by the server when it serves this file.
(function (w, d) {
  'use strict';
  var old = w.tagserver;
  if (old && old.loaded) return;
  var script = d.currentScript;
  var base = script && script.src ? script.src : location.href;
  // the server writes its TAGSERVER_ROOT_PATH here (e.g. '/tag') when it serves this file
  var root = '';
  var cfg = {endpoint: new URL(root + '/collect', base).href, send_page_view: true, spa: false};
  var consent = null;
  var user = null;
  var pending = [];
  var timer = 0;
  var configured = false;
  var pid = uuid();
  var ts = Date.now();
  var lastUrl = location.href;
  var referrer = d.referrer;
  var preview = fromUrl('tagserver_preview');
  try {
    if (preview) sessionStorage.setItem('tagserver_preview', preview);
    else preview = sessionStorage.getItem('tagserver_preview');
  } catch (e) {}

  function fromUrl(name) {
    try {
      return new URL(location.href).searchParams.get(name);
    } catch (e) {
      return null;
    }
  }

  // RFC 4122 version 4 from getRandomValues (randomUUID needs a secure context)
  function uuid() {
    var b = new Uint8Array(16), h = '', i;
    w.crypto.getRandomValues(b);
    b[6] = (b[6] & 15) | 64;
    b[8] = (b[8] & 63) | 128;
    for (i = 0; i < 16; i++) {
      h += (b[i] + 256).toString(16).slice(1) + (i == 3 || i == 5 || i == 7 || i == 9 ? '-' : '');
    }
    return h;
  }

  function page() {
    return {
      page_location: location.href,
      page_referrer: referrer || '',
      page_title: d.title,
      language: navigator.language || '',
      screen_resolution: screen.width + 'x' + screen.height
    };
  }

  function event(name, params, opts) {
    opts = opts || {};
    var id = opts.event_id || uuid();
    pending.push({e: {name: name, id: id, params: params || {}, page: page()}, cb: opts.callback});
    if (!timer) timer = setTimeout(flush, 0);
    return id;
  }

  // one request per tick; consent/user changes flush first so earlier events keep their state;
  // a logout is sent at once, with or without events (the server removes its identity cookie)
  function flush(logout) {
    clearTimeout(timer);
    timer = 0;
    logout = logout === true || undefined;
    if (!pending.length && !logout) return;
    var batch = pending;
    pending = [];
    var body = JSON.stringify({
      pid: pid, ts: ts, consent: consent, user: user, logout: logout,
      events: batch.map(function (p) { return p.e; })
    });
    var url = cfg.endpoint;
    if (preview) url += (url.indexOf('?') < 0 ? '?' : '&') + 'tagserver_preview=' + encodeURIComponent(preview);
    var done = function (result) {
      batch.forEach(function (p, i) {
        var row = result && result.events ? result.events[i] : result;
        if (p.cb) try { p.cb(p.e.id, row || {error: 'no answer'}); } catch (e) {}
      });
    };
    try {
      fetch(url, {method: 'POST', body: body, credentials: 'include', keepalive: body.length < 60000})
        .then(function (r) { return r.json(); })
        .then(done, function (err) { done({error: String(err)}); });
    } catch (e) {
      var ok = navigator.sendBeacon && navigator.sendBeacon(url, body);
      done(ok ? {queued: true} : {error: 'not sent'});
    }
  }

  function pageView() {
    if (location.href == lastUrl) return;
    referrer = lastUrl;
    lastUrl = location.href;
    event('page_view');
  }

  function watchHistory() {
    ['pushState', 'replaceState'].forEach(function (m) {
      var orig = history[m];
      history[m] = function () {
        var r = orig.apply(this, arguments);
        setTimeout(pageView, 0);
        return r;
      };
    });
    w.addEventListener('popstate', pageView);
  }

  function api(cmd, a, b, c) {
    if (cmd == 'event') return event(a, b, c);
    if (cmd == 'config') {
      for (var k in a || {}) cfg[k] = a[k];
      if (!configured) {
        configured = true;
        if (cfg.spa) watchHistory();
        if (cfg.send_page_view) event('page_view');
      }
    } else if (cmd == 'consent' || cmd == 'user') {
      // gtag style ('consent', 'default'|'update', {...}) is accepted too
      if (typeof a == 'string') a = b;
      flush();
      if (cmd != 'user') consent = Object.assign({}, consent, a);
      else if ((user = a || null) === null) flush(true);
    }
  }

  api.loaded = true;
  w.tagserver = api;
  var queue = (old && old.q) || [];
  for (var i = 0; i < queue.length; i++) {
    try { api.apply(null, queue[i]); } catch (e) {}
  }
  if (!configured) api('config', {});
  w.addEventListener('pagehide', flush);
})(window, document);
