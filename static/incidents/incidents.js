// Incident page: after a note is added (the server answers with the "incident:noted" event and
// the refreshed notes list), empty the note form for the next one. Refused notes come back as
// 422 with the form and its errors, which fleet.js swaps in. No inline handlers: the CSP forbids them.
(function () {
  "use strict";

  document.body.addEventListener("incident:noted", function () {
    var form = document.querySelector("[data-incident-note-form]");
    if (!form) return;
    form.reset();
    form.querySelectorAll(".errorlist").forEach(function (list) { list.remove(); });
    form.querySelectorAll(".has-error").forEach(function (field) { field.classList.remove("has-error"); });
  });
})();
