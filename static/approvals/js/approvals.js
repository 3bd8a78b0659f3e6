// Approvals pages: SLA countdowns, refused forms swapped in, notes after an action.
// No inline handlers anywhere: the CSP forbids them.
//
//  * <time data-countdown datetime="ISO deadline" data-now="ISO server time" data-sla="seconds">
//    counts down every second. The server's clock is the reference (the offset to this
//    browser's clock is measured when the element appears). Amber when less than 25 % of the
//    level's SLA (or 60 s) is left, red once overdue ("overdue 0:05", or "−0:05" with
//    data-countdown-short, in the queue's narrow rows).
//  * A refused form comes back as 422 (or a pane as 403 / 409, saying why): swap it in like a 200.
//  * "approvals:done" / "approvals:decided" (HX-Trigger) carry a message: shown as a toast.
(function () {
  "use strict";

  var body = document.body;
  var SWAPPED_ERRORS = { 403: true, 409: true, 422: true };

  function pad(n) { return n < 10 ? "0" + n : String(n); }

  function clock(seconds) {
    var s = Math.abs(Math.trunc(seconds));
    var h = Math.floor(s / 3600), m = Math.floor((s % 3600) / 60), r = s % 60;
    return h ? h + ":" + pad(m) + ":" + pad(r) : m + ":" + pad(r);
  }

  function tick() {
    var now = Date.now();
    document.querySelectorAll("[data-countdown]").forEach(function (el) {
      if (el._offset === undefined) {
        var server = Date.parse(el.getAttribute("data-now") || "");
        el._offset = isNaN(server) ? 0 : server - now;
      }
      var deadline = Date.parse(el.getAttribute("datetime"));
      if (isNaN(deadline)) return;
      var left = (deadline - (now + el._offset)) / 1000;
      var sla = parseFloat(el.getAttribute("data-sla")) || 0;
      var red = left <= 0;
      var amber = !red && (left < 60 || (sla > 0 && left < sla * 0.25));
      // Rows are narrow: "−0:05" there; "overdue 0:05" where there is room.
      var late = el.hasAttribute("data-countdown-short") ? "\u2212" : "overdue ";
      el.textContent = red ? late + clock(left) : clock(left);
      el.classList.toggle("is-red", red);
      el.classList.toggle("is-amber", amber);
      el.setAttribute("aria-label", red ? "overdue by " + clock(left) : clock(left) + " left");
    });
  }

  tick();
  setInterval(tick, 1000);
  body.addEventListener("htmx:afterSettle", tick);

  body.addEventListener("htmx:beforeSwap", function (event) {
    var status = event.detail.xhr.status;
    var target = event.detail.target;
    var intoPane = target && target.id === "approval-pane";
    if (status === 422 || (intoPane && SWAPPED_ERRORS[status])) {
      event.detail.shouldSwap = true;
      event.detail.isError = false;
    }
  });

  function toast(message, href) {
    var box = document.getElementById("toasts");
    if (!box || !message) return;
    var note = document.createElement(href ? "a" : "div");
    note.className = "toast";
    note.setAttribute("role", "status");
    if (href) note.href = href;
    note.textContent = message;
    box.appendChild(note);
    while (box.children.length > 4) box.firstElementChild.remove();
    setTimeout(function () { note.remove(); }, 8000);
  }

  ["approvals:done", "approvals:decided"].forEach(function (name) {
    body.addEventListener(name, function (event) {
      if (event.detail && event.detail.message) toast(event.detail.message);
    });
  });

  window.cockpitApprovals = { toast: toast, tick: tick };
})();
