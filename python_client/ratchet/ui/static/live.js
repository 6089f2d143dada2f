// Live updates: the server pushes a "change" event (server-sent events) when
// its shared poll of the database sees a change; this page then re-reads its
// own HTML once and swaps the main content. The browser never polls.
(function () {
  "use strict";
  var mode = document.body.getAttribute("data-live");
  var status = document.getElementById("live-status");
  if (mode === "off" || !window.EventSource) { if (status) status.textContent = "○ static"; return; }
  var busy = false, again = false;
  var rendered = document.body.getAttribute("data-rendered-version");
  function refresh() {
    if (busy) { again = true; return; }
    busy = true;
    fetch(window.location.href, {headers: {"Accept": "text/html"}, cache: "no-store"})
      .then(function (r) { return r.ok ? r.text() : null; })
      .then(function (html) {
        if (!html) return;
        var doc = new DOMParser().parseFromString(html, "text/html");
        var fresh = doc.getElementById("main"), main = document.getElementById("main");
        var typing = document.activeElement && main && main.contains(document.activeElement) &&
          /^(INPUT|SELECT|TEXTAREA)$/.test(document.activeElement.tagName);
        if (fresh && main && !typing) {
          main.innerHTML = fresh.innerHTML;
          document.body.setAttribute("data-version", String(Number(document.body.getAttribute("data-version") || 0) + 1));
        }
      })
      .catch(function () {})
      .then(function () { busy = false; if (again) { again = false; refresh(); } });
  }
  var source = new EventSource("/events");
  source.addEventListener("open", function () { if (status) { status.textContent = "● live"; status.className = "on"; } });
  source.addEventListener("error", function () { if (status) { status.textContent = "○ reconnecting"; status.className = ""; } });
  source.addEventListener("change", function (e) {
    var version = JSON.parse(e.data).version;
    if (String(version) === rendered) return;  // the state the page was rendered from
    rendered = null;
    refresh();
  });
})();
