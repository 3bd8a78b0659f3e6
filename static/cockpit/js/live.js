// Cockpit's live bus, browser side.
//
// The page lists the topics it needs (<body data-live-topics="team.1,team.2"> plus any
// [data-live-topics] element); the server checks each before subscribing. Events are small
// ({"type": "run.changed", "run": 42}); an element that shows affected data declares
//
//   <section id="counters" hx-get="/" hx-trigger="live" hx-swap="outerHTML"
//            data-live-on="apikey.changed audit.created" data-live-match='{"run": "42"}'>
//
// and is re-fetched through its normal view when a matching event arrives. Bursts are
// coalesced: at most one request per element in flight, and events arriving meanwhile cause
// one more re-fetch after it. After a reconnect every live element is re-fetched, since events
// may have been missed. Other scripts can listen to the "cockpit:live" DOM event.
(function () {
  "use strict";

  var body = document.body;
  var path = body.getAttribute("data-live-url");
  if (!path || !window.WebSocket) return;

  var coalesceMs = parseInt(body.getAttribute("data-live-coalesce") || "200", 10);
  var indicator = document.querySelector("[data-live-indicator]");
  var socket = null;
  var attempt = 0;
  var connectedOnce = false;
  var pingTimer = null;
  var state = {}; // element id -> {timer, inflight, again}

  function topics() {
    var all = (body.getAttribute("data-live-topics") || "").split(",");
    document.querySelectorAll("[data-live-topics]").forEach(function (el) {
      if (el !== body) all = all.concat(el.getAttribute("data-live-topics").split(","));
    });
    return all.map(function (t) { return t.trim(); }).filter(function (t, i, a) { return t && a.indexOf(t) === i; });
  }

  function setState(name, label) {
    if (!indicator) return;
    indicator.setAttribute("data-state", name);
    indicator.querySelector("[data-live-label]").textContent = label;
    indicator.title = name === "live" ? "Updates arrive as they happen" : "Updates are paused until the connection is back";
  }

  function connect() {
    var scheme = location.protocol === "https:" ? "wss:" : "ws:";
    var url = scheme + "//" + location.host + path + "?topics=" + encodeURIComponent(topics().join(","));
    socket = new WebSocket(url);
    socket.onopen = function () {
      attempt = 0;
      setState("live", "Live");
      if (connectedOnce) refreshAll();
      connectedOnce = true;
      clearInterval(pingTimer);
      pingTimer = setInterval(function () {
        if (socket.readyState === WebSocket.OPEN) socket.send(JSON.stringify({ action: "ping" }));
      }, 25000);
    };
    socket.onmessage = function (message) {
      var event;
      try { event = JSON.parse(message.data); } catch (e) { return; }
      if (event.type === "error") { console.warn("live:", event.detail, event.errors); return; }
      if (event.type === "subscribed" || event.type === "pong") return;
      dispatch(event);
    };
    socket.onclose = function (close) {
      clearInterval(pingTimer);
      if (close.code === 4401) { setState("offline", "Signed out"); return; }
      setState("reconnecting", "Reconnecting…");
      var delay = Math.min(15000, 500 * Math.pow(2, attempt)) * (0.5 + Math.random() / 2);
      attempt += 1;
      setTimeout(connect, delay);
    };
  }

  function matches(el, event) {
    var types = el.getAttribute("data-live-on").split(/\s+/);
    var typeOk = types.some(function (t) {
      return t === event.type || (t.slice(-2) === ".*" && event.type.indexOf(t.slice(0, -1)) === 0);
    });
    if (!typeOk) return false;
    var filter = el.getAttribute("data-live-match");
    if (!filter) return true;
    var wanted;
    try { wanted = JSON.parse(filter); } catch (e) { return true; }
    return Object.keys(wanted).every(function (key) { return String(event[key]) === String(wanted[key]); });
  }

  function dispatch(event) {
    document.dispatchEvent(new CustomEvent("cockpit:live", { detail: event }));
    document.querySelectorAll("[data-live-on]").forEach(function (el) {
      if (matches(el, event)) queueRefresh(el.id);
    });
  }

  function queueRefresh(id) {
    if (!id) return;
    var s = state[id] || (state[id] = { timer: null, inflight: false, again: false });
    if (s.inflight) { s.again = true; return; }
    if (s.timer) return;
    s.timer = setTimeout(function () {
      s.timer = null;
      var el = document.getElementById(id);
      if (!el || !window.htmx) return;
      if (isEditing(el)) {
        // Never re-render a form under someone's fingers: refresh once they leave it.
        el.addEventListener("focusout", function () { queueRefresh(id); }, { once: true });
        return;
      }
      s.inflight = true;
      var finished = false;
      // Listen on the element itself: after an outerHTML swap it is detached, and its events
      // no longer bubble to the document.
      function done() {
        if (finished) return;
        finished = true;
        s.inflight = false;
        if (s.again) { s.again = false; queueRefresh(id); }
      }
      el.addEventListener("htmx:afterRequest", done, { once: true });
      el.addEventListener("htmx:sendError", done, { once: true });
      setTimeout(done, 10000);
      window.htmx.trigger(el, "live");
    }, coalesceMs);
  }

  function isEditing(el) {
    var active = document.activeElement;
    return !!active && el.contains(active) && /^(INPUT|TEXTAREA|SELECT)$/.test(active.tagName);
  }

  function refreshAll() {
    document.querySelectorAll("[data-live-on]").forEach(function (el) { queueRefresh(el.id); });
  }

  // Values marked data-flash-key="name" briefly highlight when a refresh changes them.
  var before = {};
  body.addEventListener("htmx:beforeSwap", function (e) {
    before = {};
    var target = e.detail.target;
    if (!target || !target.querySelectorAll) return;
    target.querySelectorAll("[data-flash-key]").forEach(function (el) {
      before[el.getAttribute("data-flash-key")] = el.textContent.trim();
    });
  });
  body.addEventListener("htmx:afterSettle", function () {
    document.querySelectorAll("[data-flash-key]").forEach(function (el) {
      var key = el.getAttribute("data-flash-key");
      if (key in before && before[key] !== el.textContent.trim()) {
        var box = el.closest("[data-flash-box]") || el;
        box.classList.remove("flash");
        void box.offsetWidth; // restart the animation
        box.classList.add("flash");
      }
    });
  });

  window.cockpitLive = { refresh: queueRefresh };
  connect();
})();
