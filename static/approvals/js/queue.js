// The approvals queue: keyboard, selection, and the toasts meant for this approver.
//
//   j / k    next / previous request: selects its row and loads its pane
//   a        focus the pane's Approve (or "Looks right") button: Enter decides
//   e        open "Approve with edits" with the arguments focused: Ctrl+Enter decides
//   r        open "Reject" (or "Flag a problem") with the reason focused: Enter decides
//   Esc      close the open form (or the help); ?  the help
//
// Keys do nothing while typing in a field. A key pressed while the selected request's pane is
// still loading waits for that pane: it never acts on the request shown before.
//
// Hooks (also for browser tests): [data-approval-row="id"], #approval-pane[data-approval-id],
// [data-approval-approve], [data-approval-edit] / [data-approval-edit-input],
// [data-approval-reject] / [data-approval-reject-input], [data-keys-help].
(function () {
  "use strict";

  var root = document.querySelector("[data-approvals-queue]");
  if (!root) return;
  var help = document.querySelector("[data-keys-help]");
  var selectedId = null;
  var selectedIndex = -1;
  var pendingKey = null;

  function pane() { return document.getElementById("approval-pane"); }
  function paneId() { var p = pane(); return p ? p.getAttribute("data-approval-id") : null; }
  function rows() { return Array.prototype.slice.call(document.querySelectorAll("[data-approval-row]")); }
  function rowId(row) { return row.getAttribute("data-approval-row"); }

  // The selected row, marked again after every refresh of the list. When it has left the list
  // (decided, escalated away, withdrawn), its index is kept: "j" then opens the row that took
  // its place.
  function mark() {
    rows().forEach(function (row, index) {
      var on = rowId(row) === selectedId;
      row.classList.toggle("is-selected", on);
      if (on) {
        row.setAttribute("aria-current", "true");
        selectedIndex = index;
      } else {
        row.removeAttribute("aria-current");
      }
    });
  }

  function open(row) {
    selectedId = rowId(row);
    mark();
    row.scrollIntoView({ block: "nearest" });
    if (paneId() !== selectedId) row.click(); // hx-get loads the pane
  }

  function move(step) {
    var list = rows();
    if (!list.length) return;
    var current = list.findIndex(function (row) { return rowId(row) === selectedId; });
    var next;
    if (current >= 0) next = current + step;
    else if (selectedIndex >= 0) next = step > 0 ? selectedIndex : selectedIndex - 1;
    else next = step > 0 ? 0 : list.length - 1;
    open(list[Math.max(0, Math.min(list.length - 1, next))]);
  }

  function closeForms(except) {
    var p = pane();
    if (!p) return false;
    var closed = false;
    p.querySelectorAll("details[open]").forEach(function (details) {
      if (details !== except) {
        details.open = false;
        closed = true;
      }
    });
    return closed;
  }

  function openForm(selector, inputSelector) {
    var details = pane().querySelector(selector);
    if (!details) return;
    closeForms(details);
    details.open = true;
    var input = details.querySelector(inputSelector);
    if (input) input.focus();
  }

  function act(key) {
    var id = paneId();
    if (!id) return;
    if (selectedId && id !== selectedId) {
      pendingKey = key; // the pane of the selected request is on its way
      return;
    }
    if (key === "a") {
      var button = pane().querySelector("[data-approval-approve]");
      if (button) {
        closeForms(null);
        button.focus();
      }
    } else if (key === "e") {
      openForm("[data-approval-edit]", "[data-approval-edit-input]");
    } else if (key === "r") {
      openForm("[data-approval-reject]", "[data-approval-reject-input]");
    }
  }

  function isTyping(el) {
    return !!el && (el.isContentEditable || /^(INPUT|TEXTAREA|SELECT)$/.test(el.tagName));
  }

  document.addEventListener("keydown", function (event) {
    var target = event.target;
    if (isTyping(target)) {
      // data-submit-keys="enter": Enter submits (Shift+Enter is a new line); "ctrl": Ctrl+Enter.
      var mode = target.getAttribute("data-submit-keys");
      if (mode && event.key === "Enter" && !event.isComposing) {
        var ctrl = event.ctrlKey || event.metaKey;
        if (ctrl || (mode === "enter" && !event.shiftKey)) {
          event.preventDefault();
          if (target.form) target.form.requestSubmit();
        }
      } else if (event.key === "Escape") {
        var details = target.closest("details[open]");
        if (details) details.open = false;
        target.blur();
        event.preventDefault();
      }
      return;
    }
    if (event.ctrlKey || event.metaKey || event.altKey || (help && help.open)) return;
    switch (event.key) {
      case "j": move(1); break;
      case "k": move(-1); break;
      case "a": case "e": case "r": act(event.key); break;
      case "?": if (help) help.showModal(); break;
      case "Escape":
        if (!closeForms(null) && document.activeElement) document.activeElement.blur();
        break;
      default: return;
    }
    event.preventDefault();
  });

  // On narrow screens the pane sits under the list: a clicked request is scrolled to.
  var narrow = window.matchMedia("(max-width: 900px)");
  var scrollToPane = false;

  document.addEventListener("click", function (event) {
    var row = event.target.closest("[data-approval-row]");
    if (row) {
      selectedId = rowId(row);
      scrollToPane = narrow.matches;
      mark();
    }
    if (event.target.closest("[data-keys-open]") && help) help.showModal();
    if (event.target.closest("[data-keys-close]") && help) help.close();
  });

  document.body.addEventListener("htmx:afterSettle", function () {
    mark();
    if (scrollToPane && paneId() === selectedId) {
      scrollToPane = false;
      pane().scrollIntoView({ block: "start" });
    }
    if (pendingKey && paneId() === selectedId) {
      var key = pendingKey;
      pendingKey = null;
      act(key);
    }
  });

  // The toasts of approval.toast events meant for this user: any of their levels, or (a level
  // with no group) any approver of the team. The server picks no one: every approver's page
  // sees the team's events and picks its own.
  function list(name) { return (root.getAttribute(name) || "").split(",").filter(Boolean); }
  var decidesAll = root.getAttribute("data-decides-all") === "true";
  var teams = list("data-approver-teams");
  var levels = list("data-decider-levels");
  var queueUrl = root.getAttribute("data-queue-url");

  document.addEventListener("cockpit:live", function (event) {
    var live = event.detail;
    if (!queueUrl || !live || live.type !== "approval.toast") return;
    var approver = teams.indexOf("*") >= 0 || teams.indexOf(String(live.team)) >= 0;
    var forMe = decidesAll || (approver && (live.level_id === null || levels.indexOf(String(live.level_id)) >= 0));
    if (forMe && window.cockpitApprovals) {
      window.cockpitApprovals.toast(live.text, queueUrl + "?selected=" + encodeURIComponent(live.approval));
    }
  });

  selectedId = paneId();
  mark();
})();
