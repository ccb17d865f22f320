// Keeps a page live from gateway/web/live.py's events (pages work without it). Event data is only set
// as text; a refresh is HTML of our own autoescaped fragments, parsed inertly.
(function () {
  "use strict";
  var root = document.querySelector("[data-live]");
  if (!root || !window.EventSource) return;
  var loading = {}, tries = 0;

  function setText(el, name, text) {
    el.querySelectorAll('[data-field="' + name + '"]').forEach(function (f) { f.textContent = text; });
  }
  function scoreText(s) {
    if (typeof s.score === "number") return s.score.toFixed(3);
    var running = s.state === "running" && typeof s.partial_score === "number";
    return running ? s.partial_score.toFixed(3) + " (running)" : "\u2014";
  }

  function show(s) {
    var p = s.progress || {}, done = p.studies_done || 0, total = p.studies_total || 0;
    // The id is compared, never put in a selector.
    document.querySelectorAll("[data-sub]").forEach(function (el) {
      if (el.getAttribute("data-sub") !== s.id) return;
      el.setAttribute("data-state", s.state);
      setText(el, "state", s.state);
      setText(el, "score", scoreText(s));
      setText(el, "progress-text", done + " / " + total + " studies");
      setText(el, "failure", s.failure ? s.failure.cause + ": " + s.failure.message : "");
      el.querySelectorAll('progress[data-field="progress"]').forEach(function (bar) {
        bar.max = total || 1;
        bar.value = done;
      });
    });
  }

  function refresh(region) {
    document.querySelectorAll("[data-refresh][data-region]").forEach(function (el) {
      if (el.getAttribute("data-region") === region) load(el, region);
    });
  }

  function load(el, region) {
    if (loading[region]) { loading[region] = 2; return; } // one fetch at a time, one more after it
    var url = new URL(el.getAttribute("data-refresh"), location.href);
    if (url.origin !== location.origin) return;
    loading[region] = 1;
    fetch(url.href, { credentials: "same-origin", headers: { Accept: "text/html" } })
      .then(function (r) {
        var html = r.ok && !r.redirected && /^text\/html/.test(r.headers.get("Content-Type"));
        return html ? r.text() : null;
      })
      .then(function (html) { if (html !== null) swap(el, html); })
      .catch(function () {})
      .then(function () {
        var again = loading[region] === 2;
        loading[region] = 0;
        if (again) load(el, region);
      });
  }

  function swap(el, html) {
    // A DOMParser document runs no script.
    var doc = new DOMParser().parseFromString(html, "text/html");
    var active = document.activeElement;
    var href = active && el.contains(active) ? active.getAttribute("href") : null;
    el.replaceChildren.apply(el, [].slice.call(doc.body.childNodes));
    // A replaced link that had the focus hands it to its successor.
    var links = href ? el.querySelectorAll("a[href]") : [];
    for (var i = 0; i < links.length; i++) {
      if (links[i].getAttribute("href") === href) { links[i].focus({ preventScroll: true }); break; }
    }
  }

  function parse(e) {
    try { return JSON.parse(e.data); } catch (err) { return null; }
  }

  // An answer that is not a stream (a busy gateway, a proxy's error page) closes an EventSource for
  // good: reopen it, slower each time.
  function open() {
    var source = new EventSource(root.getAttribute("data-live"));
    source.addEventListener("open", function () { tries = 0; });
    source.addEventListener("submission", function (e) {
      var s = parse(e);
      if (s && typeof s.id === "string") show(s);
    });
    source.addEventListener("refresh", function (e) {
      var d = parse(e);
      if (d && typeof d.region === "string") refresh(d.region);
    });
    source.addEventListener("error", function () {
      if (source.readyState !== EventSource.CLOSED || tries >= 8) return;
      var wait = Math.min(300, 5 * Math.pow(2, tries++)) * (0.75 + Math.random() / 2);
      setTimeout(open, wait * 1000);
    });
  }
  open();
})();
