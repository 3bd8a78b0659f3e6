// Fleet pages: confirmation dialogs, refused forms, and the note after an operator's action.
// No inline handlers anywhere: the CSP forbids them.
//
//  * Links with hx-target="#fleet-dialog" fetch a confirmation form (fleet/confirm.html#form)
//    into the page's <dialog data-fleet-dialog>; it opens as a modal once the form is in. The
//    same links work without JavaScript: they open the confirmation as a page of its own.
//  * A refused form comes back as 422 with the form and its errors: swap it in like a 200.
//  * A successful action answers with the "fleet:done" event (HX-Trigger): close the dialog and
//    say what happened. The live bus refreshes what the action changed.
(function () {
  "use strict";

  var body = document.body;

  function dialogOf(el) {
    return el && el.closest ? el.closest("[data-fleet-dialog]") : null;
  }

  body.addEventListener("htmx:beforeSwap", function (event) {
    if (event.detail.xhr.status === 422) {
      event.detail.shouldSwap = true;
      event.detail.isError = false;
    }
  });

  body.addEventListener("htmx:afterSwap", function (event) {
    var dialog = event.detail.target;
    if (!dialog || !dialog.hasAttribute || !dialog.hasAttribute("data-fleet-dialog")) return;
    if (!dialog.open) dialog.showModal();
    var focus = dialog.querySelector("[data-autofocus]");
    if (focus) focus.focus();
  });

  document.addEventListener("click", function (event) {
    var close = event.target.closest("[data-dialog-close]");
    if (close) dialogOf(close).close();
  });

  // Emptied on close, so a stale form never flashes up the next time.
  document.querySelectorAll("[data-fleet-dialog]").forEach(function (dialog) {
    dialog.addEventListener("close", function () { dialog.replaceChildren(); });
  });

  body.addEventListener("fleet:done", function (event) {
    document.querySelectorAll("[data-fleet-dialog]").forEach(function (dialog) {
      if (dialog.open) dialog.close();
    });
    if (event.detail && event.detail.message) toast(event.detail.message);
  });

  function toast(message) {
    var box = document.getElementById("toasts");
    if (!box) return;
    var note = document.createElement("div");
    note.className = "toast";
    note.setAttribute("role", "status");
    note.textContent = message;
    box.appendChild(note);
    setTimeout(function () { note.remove(); }, 6000);
  }
})();
