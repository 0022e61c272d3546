/*! tagserver preview: the container in force, and a banner when an edit was refused.
 * Kept apart from preview.js: it only reads /preview/api/container every few seconds.
 * Values are put in the page as text only (textContent), never as HTML.
 */
(function () {
  'use strict';

  var POLL_MS = 5000;
  var banner = document.getElementById('container-banner');
  var label = document.getElementById('container-version');
  if (!banner) return;

  function el(tag, cls, text) {
    var node = document.createElement(tag);
    if (cls) node.className = cls;
    if (text !== undefined && text !== null) node.textContent = String(text);
    return node;
  }

  function show(data) {
    var c = data.container || {};
    if (label) {
      label.textContent = 'container ' + (c.version ? 'v' + c.version : '') + ' · ' + (c.hash || '');
      label.title = 'the container in force, loaded ' + (c.loaded_at || '');
    }
    var refused = c.last_refused;
    while (banner.firstChild) banner.removeChild(banner.firstChild);
    if (!refused || !refused.pending) { banner.hidden = true; return; }
    banner.appendChild(el('strong', null, 'The last edit of the container was refused'));
    banner.appendChild(el('p', null, (data.warnings || [])[0] ||
      'Still running version ' + c.version + ' (' + c.hash + ').'));
    var list = el('ul', 'problems');
    (refused.problems || []).forEach(function (p) { list.appendChild(el('li', 'mono', p)); });
    banner.appendChild(list);
    banner.hidden = false;
  }

  function poll() {
    var root = document.body.getAttribute('data-root') || '';  // TAGSERVER_ROOT_PATH
    fetch(root + '/preview/api/container', {credentials: 'same-origin', headers: {Accept: 'application/json'}})
      .then(function (r) { return r.ok ? r.json() : null; })
      .then(function (data) { if (data) show(data); }, function () {})
      .then(function () { setTimeout(poll, POLL_MS); });
  }

  poll();
})();
