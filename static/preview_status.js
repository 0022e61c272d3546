/*! tagserver status page: reloads its figures every few seconds. No dependencies.
 * The figures come as HTML the server rendered with every value escaped; they replace the
 * #live section as parsed nodes. A 401 means the sign-in ended: say so and stop.
 */
(function () {
  'use strict';
  var body = document.body;
  if (!body || !body.classList.contains('page-status')) return;
  var root = body.getAttribute('data-root') || '';  // a root path, e.g. /tag
  var live = document.getElementById('live');
  var dot = document.getElementById('live-state');
  var EVERY = 5000;
  var busy = false;

  function refresh() {
    if (busy || document.hidden) return;
    busy = true;
    fetch(root + '/preview/status/live' + window.location.search, { credentials: 'same-origin', cache: 'no-store' })
      .then(function (response) {
        if (response.status === 401) {
          dot.textContent = 'signed out';
          dot.className = 'stream-state';
          window.clearInterval(timer);
          return null;
        }
        if (!response.ok) throw new Error('HTTP ' + response.status);
        return response.text();
      })
      .then(function (html) {
        if (html === null) return;
        var doc = new DOMParser().parseFromString('<div>' + html + '</div>', 'text/html');
        live.replaceChildren.apply(live, Array.prototype.slice.call(doc.body.firstChild.childNodes));
        dot.textContent = '●';
        dot.className = 'stream-state on';
        dot.title = 'updated ' + new Date().toLocaleTimeString();
      })
      .catch(function () {
        dot.textContent = '○';
        dot.className = 'stream-state';
      })
      .then(function () { busy = false; });
  }

  var timer = window.setInterval(refresh, EVERY);
  refresh();
})();
