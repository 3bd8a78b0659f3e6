// The trace view: a collapsible span tree and a waterfall sharing one virtualised scroll, the
// detail pane of the selected span, and the narrative tab. No inline handlers anywhere: the CSP
// forbids them.
//
// The server embeds the span rows as compact JSON (<script id="trace-data">, see
// traces.selectors.trace_view_data: one array per span, names interned); this script builds the
// tree, folds runs of three or more similar siblings ("× 37 execute_tool lookup") and renders
// only the rows in view, so a trace of 10,000 spans stays fluid. A span's attributes and
// messages are fetched when it is selected (/traces/<pk>/spans/<span_id>/). When spans arrive
// for this trace (live event "trace.spans"), the rows are re-read and redrawn in place: what is
// open stays open, the selection stays selected.
(function () {
  "use strict";

  var root = document.getElementById("trace-explorer");
  var source = document.getElementById("trace-data");
  if (!root || !source) return;

  var ROW = 28;
  var OVERSCAN = 15;
  var GROUP_MIN = 3;
  var traceId = root.getAttribute("data-trace");
  var dataUrl = root.getAttribute("data-data-url");
  var spanUrl = root.getAttribute("data-span-url");
  var scroller = root.querySelector("[data-tv-scroll]");
  var canvas = root.querySelector("[data-tv-canvas]");
  var detail = document.getElementById("span-detail");
  var findInput = root.querySelector("[data-tv-find]");
  var findCount = root.querySelector("[data-tv-find-count]");
  var countLabel = root.querySelector("[data-tv-count]");
  var guide = root.querySelector("[data-tv-guide]");
  var guideLabel = root.querySelector("[data-tv-guide-label]");

  var model = null; // {duration, totalCost, nodes, roots, costSteps}
  var rows = []; // the visible rows: {item, depth}
  var open = {}; // key -> true/false (what the reader opened or closed)
  var selected = null; // key of the selected row
  var detailRequest = null;
  var findMatches = [];
  var findAt = -1;

  // --- Formatting ----------------------------------------------------------------------------

  function fmtMicros(us) {
    if (us === null || us === undefined) return "—";
    if (us < 1000) return us ? Math.round(us) + " µs" : "0 ms";
    var ms = us / 1000;
    if (ms < 1000) return (ms < 10 ? ms.toFixed(1) : Math.round(ms)) + " ms";
    var s = ms / 1000;
    if (s < 60) return s.toFixed(1) + " s";
    var m = Math.floor(s / 60);
    if (m < 60) return m + " min " + Math.floor(s % 60) + " s";
    return Math.floor(m / 60) + " h " + String(m % 60).padStart(2, "0") + " min";
  }

  function fmtUsd(v) {
    if (v === null || v === undefined) return "—";
    if (v === 0) return "$0.00";
    if (v >= 1) return "$" + v.toFixed(2);
    if (v < 0.0001) return "<$0.0001";
    var text = v.toFixed(4).replace(/0+$/, "");
    return "$" + (text.length >= 4 ? text : v.toFixed(2));
  }

  function el(tag, cls, text) {
    var node = document.createElement(tag);
    if (cls) node.className = cls;
    if (text !== undefined && text !== null) node.textContent = text;
    return node;
  }

  // --- The model: nodes, tree, groups -------------------------------------------------------

  function build(data) {
    var strings = data.strings;
    var nodes = data.spans.map(function (r, i) {
      return {
        i: i, id: r[0], parent: r[1], name: strings[r[2]], type: r[3], start: r[4], dur: r[5],
        status: r[6], cost: r[7], tokens: r[8], model: r[9] >= 0 ? strings[r[9]] : "", label: r[10] || "",
        key: r[0] ? "s:" + r[0] : "j:" + r[4] + ":" + strings[r[2]] + ":" + i,
        children: [], entries: null, owner: null, up: null, search: null,
      };
    });
    var roots = [];
    nodes.forEach(function (n) {
      var p = n.parent;
      if (p >= 0 && p < nodes.length && p !== n.i) {
        nodes[p].children.push(n);
        n.up = nodes[p];
      } else {
        n.orphan = p === -2;
        roots.push(n);
      }
    });
    // A malformed trace may hold a cycle of parents: whatever no root reaches becomes a root.
    var seen = new Uint8Array(nodes.length);
    var stack = roots.slice();
    while (stack.length) {
      var n = stack.pop();
      if (seen[n.i]) continue;
      seen[n.i] = 1;
      for (var c = 0; c < n.children.length; c++) stack.push(n.children[c]);
    }
    nodes.forEach(function (n) {
      if (!seen[n.i]) {
        if (n.up) n.up.children.splice(n.up.children.indexOf(n), 1);
        n.up = null;
        roots.push(n);
        stack = [n];
        while (stack.length) {
          var m = stack.pop();
          if (seen[m.i]) continue;
          seen[m.i] = 1;
          m.children.forEach(function (k) { stack.push(k); });
        }
      }
    });
    var byStart = function (a, b) { return a.start - b.start || a.i - b.i; };
    roots.sort(byStart);
    var entriesOf = function (list, parentKey) {
      list.sort(byStart);
      var entries = [];
      for (var k = 0; k < list.length;) {
        var first = list[k];
        var j = k + 1;
        while (j < list.length && list[j].name === first.name && list[j].type === first.type) j++;
        if (j - k >= GROUP_MIN) {
          var members = list.slice(k, j);
          var group = {
            group: true, key: "g:" + parentKey + ":" + first.key, name: first.name, type: first.type,
            members: members, start: first.start, end: 0, errors: 0, cost: null, tokens: 0,
          };
          members.forEach(function (m) {
            m.owner = group;
            group.end = Math.max(group.end, m.start + m.dur);
            if (m.status === 2) group.errors++;
            if (m.cost !== null) group.cost = (group.cost || 0) + m.cost;
            group.tokens += m.tokens;
          });
          group.dur = group.end - group.start;
          entries.push(group);
        } else {
          for (var x = k; x < j; x++) entries.push(list[x]);
        }
        k = j;
      }
      return entries;
    };
    nodes.forEach(function (n) { n.entries = entriesOf(n.children, n.key); });
    var rootEntries = entriesOf(roots, "root");
    var steps = nodes.filter(function (n) { return n.cost !== null && n.cost > 0; })
      .map(function (n) { return { at: n.start + n.dur, cost: n.cost }; })
      .sort(function (a, b) { return a.at - b.at; });
    var total = 0;
    steps.forEach(function (s) { total += s.cost; s.sum = total; });
    var types = {};
    nodes.forEach(function (n) { types[n.type] = true; });
    return {
      duration: Math.max(1, data.duration), nodes: nodes, rootEntries: rootEntries, costSteps: steps,
      totalCost: total, hasCost: steps.length > 0, types: types,
    };
  }

  function isOpen(item) {
    if (item.key in open) return open[item.key];
    return !item.group; // spans start open, folded runs start closed
  }

  function hasChildren(item) {
    return item.group ? item.members.length > 0 : item.entries.length > 0;
  }

  function flatten() {
    rows = [];
    var walk = function (entries, depth) {
      for (var k = 0; k < entries.length; k++) {
        var item = entries[k];
        rows.push({ item: item, depth: depth });
        if (!isOpen(item)) continue;
        if (item.group) {
          for (var m = 0; m < item.members.length; m++) {
            var member = item.members[m];
            rows.push({ item: member, depth: depth + 1 });
            if (member.entries.length && isOpen(member)) walk(member.entries, depth + 2);
          }
        } else if (item.entries.length) {
          walk(item.entries, depth + 1);
        }
      }
    };
    walk(model.rootEntries, 0);
    canvas.style.height = rows.length * ROW + "px";
    scroller.style.height = rows.length * ROW + 2 + "px"; // capped by the stylesheet's max-height
    var groups = model.nodes.filter(function (n) { return n.owner; }).length;
    countLabel.textContent = model.nodes.length.toLocaleString() + " spans · " + rows.length.toLocaleString() +
      " rows" + (groups ? " (repeats folded)" : "");
  }

  function indexOfKey(key) {
    for (var k = 0; k < rows.length; k++) if (rows[k].item.key === key) return k;
    return -1;
  }

  // --- Drawing -------------------------------------------------------------------------------

  var frame = 0;
  function schedule() {
    if (frame) return;
    frame = requestAnimationFrame(function () { frame = 0; draw(); });
  }

  function pct(us) { return (us / model.duration) * 100; }

  function rowElement(row, index) {
    var item = row.item;
    var line = el("div", "tv-row tv-type-row-" + item.type);
    line.setAttribute("role", "treeitem");
    line.setAttribute("aria-level", String(row.depth + 1));
    line.setAttribute("data-row", String(index));
    line.id = "tv-row-" + index;
    line.style.transform = "translateY(" + index * ROW + "px)";
    if (item.key === selected) {
      line.classList.add("is-selected");
      line.setAttribute("aria-selected", "true");
    }
    var isError = !item.group && item.status === 2;
    if (isError) line.classList.add("is-error");
    if (item.group) line.classList.add("is-group");
    if (item.group && item.errors) line.classList.add("has-errors");
    if (!item.group && !item.id) line.classList.add("is-journal");
    if (!item.group && (item.type === "approval" || item.type === "operator")) line.classList.add("is-human");

    var name = el("div", "tv-cell-name");
    name.style.paddingLeft = 6 + row.depth * 14 + "px";
    if (hasChildren(item)) {
      var twisty = el("button", "tv-twisty", isOpen(item) ? "▾" : "▸");
      twisty.type = "button";
      twisty.tabIndex = -1;
      twisty.setAttribute("data-toggle", item.key);
      twisty.setAttribute("aria-label", isOpen(item) ? "Collapse" : "Expand");
      line.setAttribute("aria-expanded", isOpen(item) ? "true" : "false");
      name.appendChild(twisty);
    } else {
      name.appendChild(el("span", "tv-twisty-space"));
    }
    name.appendChild(el("span", "tv-dot tv-type-" + item.type));
    if (item.group) {
      name.appendChild(el("span", "tv-times", "× " + item.members.length));
      name.appendChild(el("span", "tv-name", item.name));
      if (item.errors) name.appendChild(el("span", "tv-err-count", item.errors + " failed"));
    } else {
      if (isError) name.appendChild(el("span", "tv-err-mark", "!"));
      name.appendChild(el("span", "tv-name", item.name));
      var human = item.type === "approval" || item.type === "operator";
      if (item.label && !(human && item.id)) name.appendChild(el("span", "tv-label", item.label));
      else if (item.model && item.name.indexOf(item.model) < 0) name.appendChild(el("span", "tv-label", item.model));
      if (item.orphan) name.appendChild(el("span", "tv-label", "(parent not received)"));
    }
    name.title = item.group ? item.members.length + " × " + item.name : item.name + (item.label ? " — " + item.label : "");
    line.appendChild(name);

    var lane = el("div", "tv-cell-bar");
    var dur = item.dur;
    var bar = el("span", "tv-bar tv-type-" + item.type + (dur === 0 ? " is-instant" : ""));
    bar.style.left = pct(item.start) + "%";
    if (dur > 0) bar.style.width = Math.max(pct(dur), 0.15) + "%";
    lane.appendChild(bar);
    var note = fmtMicros(dur);
    var cost = item.cost;
    if (cost !== null && cost !== undefined && cost > 0) note += " · " + fmtUsd(cost);
    if (!item.group && item.label && (item.type === "approval" || item.type === "operator")) {
      note = item.label + (dur && item.type !== "approval" ? " · " + fmtMicros(dur) : "");
    }
    var text = el("span", "tv-bar-text", note);
    var startPct = pct(item.start);
    var endPct = pct(item.start + dur);
    // The note goes after the bar if it fits there, else before it, else where there is more room.
    var needed = ((note.length * 6.2 + 10) / laneWidth) * 100;
    var after = 100 - endPct;
    if (after < needed && startPct < needed && endPct - startPct >= Math.min(needed, 60)) {
      text.classList.add("is-inside");
      text.style.left = startPct + "%";
      text.style.maxWidth = endPct - startPct + "%";
    } else if (after < needed && (startPct >= needed || startPct > after)) {
      text.classList.add("is-left");
      text.style.right = 100 - startPct + "%";
    } else {
      text.style.left = endPct + "%";
    }
    lane.appendChild(text);
    line.appendChild(lane);
    return line;
  }

  var laneWidth = 600;
  function draw() {
    if (!model) return;
    laneWidth = Math.max(200, scroller.clientWidth * 0.6);
    var top = scroller.scrollTop;
    var height = scroller.clientHeight || 600;
    var first = Math.max(0, Math.floor(top / ROW) - OVERSCAN);
    var last = Math.min(rows.length, Math.ceil((top + height) / ROW) + OVERSCAN);
    var fragment = document.createDocumentFragment();
    for (var k = first; k < last; k++) fragment.appendChild(rowElement(rows[k], k));
    canvas.replaceChildren(fragment);
    var at = indexOfKey(selected);
    if (at >= 0) scroller.setAttribute("aria-activedescendant", "tv-row-" + at);
    else scroller.removeAttribute("aria-activedescendant");
  }

  function drawAxis() {
    var ticks = root.querySelector("[data-tv-ticks]");
    var curve = root.querySelector("[data-tv-cost-curve]");
    var total = root.querySelector("[data-tv-cost-total]");
    var span = model.duration;
    var nice = [1, 2, 5];
    var step = 1;
    outer: for (var p = 1; p < 1e13; p *= 10) {
      for (var q = 0; q < nice.length; q++) {
        if (span / (nice[q] * p) <= 6) { step = nice[q] * p; break outer; }
      }
    }
    var fragment = document.createDocumentFragment();
    for (var t = 0; t <= span; t += step) {
      var tick = el("span", "tv-tick", fmtMicros(t));
      tick.style.left = pct(t) + "%";
      if (pct(t) > 92) tick.classList.add("is-last");
      fragment.appendChild(tick);
    }
    ticks.replaceChildren(fragment);
    // The cost accrued over time: a step line, spans' costs counted when they end.
    var ns = "http://www.w3.org/2000/svg";
    curve.replaceChildren();
    if (model.hasCost) {
      var points = ["0,100"];
      var y = 100;
      model.costSteps.forEach(function (s) {
        var x = (Math.min(s.at, span) / span) * 1000;
        points.push(x.toFixed(1) + "," + y.toFixed(2));
        y = 100 - (s.sum / model.totalCost) * 92;
        points.push(x.toFixed(1) + "," + y.toFixed(2));
      });
      points.push("1000," + y.toFixed(2));
      var area = document.createElementNS(ns, "polygon");
      area.setAttribute("points", points.join(" ") + " 1000,100");
      area.setAttribute("class", "tv-cost-area");
      var line = document.createElementNS(ns, "polyline");
      line.setAttribute("points", points.join(" "));
      line.setAttribute("class", "tv-cost-line");
      line.setAttribute("vector-effect", "non-scaling-stroke");
      curve.appendChild(area);
      curve.appendChild(line);
      total.textContent = "cost " + fmtUsd(model.totalCost);
      total.classList.remove("is-none");
      total.title = "Cost accrues as priced spans end; hover the waterfall to read it at any moment";
    } else {
      total.textContent = "no priced spans";
      total.classList.add("is-none");
      total.title = "No span of this trace carries a cost";
    }
    root.querySelectorAll("[data-tv-legend]").forEach(function (item) {
      item.classList.toggle("hidden", !model.types[item.getAttribute("data-tv-legend")]);
    });
  }

  function costAt(us) {
    var steps = model.costSteps;
    var lo = 0;
    var hi = steps.length - 1;
    var found = -1;
    while (lo <= hi) {
      var mid = (lo + hi) >> 1;
      if (steps[mid].at <= us) { found = mid; lo = mid + 1; } else hi = mid - 1;
    }
    return found < 0 ? 0 : steps[found].sum;
  }

  // --- Selection and detail ------------------------------------------------------------------

  function select(key, opts) {
    opts = opts || {};
    selected = key;
    var index = indexOfKey(key);
    if (index >= 0 && opts.scroll !== false) {
      var y = index * ROW;
      if (y < scroller.scrollTop || y + ROW > scroller.scrollTop + scroller.clientHeight) {
        scroller.scrollTop = Math.max(0, y - scroller.clientHeight / 3);
      }
    }
    draw();
    var item = index >= 0 ? rows[index].item : null;
    if (!item) return;
    if (!item.group && item.id && history.replaceState) {
      history.replaceState(null, "", "#span-" + item.id);
    }
    showDetail(item);
  }

  function showDetail(item) {
    if (detailRequest) detailRequest.abort();
    detailRequest = null;
    if (item.group) return showGroup(item);
    if (!item.id) return showJournal(item);
    var controller = new AbortController();
    detailRequest = controller;
    detail.setAttribute("aria-busy", "true");
    fetch(spanUrl + encodeURIComponent(item.id) + "/", {
      signal: controller.signal, credentials: "same-origin",
    }).then(function (response) {
      if (!response.ok) throw new Error("HTTP " + response.status);
      return response.text();
    }).then(function (html) {
      detail.innerHTML = html;
      if (window.htmx) window.htmx.process(detail);
      detail.scrollTop = 0;
    }).catch(function (error) {
      if (error.name === "AbortError") return;
      detail.replaceChildren(el("p", "muted", "This span could not be loaded (" + error.message + ")."));
    }).finally(function () {
      if (detailRequest === controller) detailRequest = null;
      detail.removeAttribute("aria-busy");
    });
  }

  function facts(pairs) {
    var dl = el("dl", "kv tv-facts");
    pairs.forEach(function (p) {
      if (p[1] === null || p[1] === undefined || p[1] === "") return;
      dl.appendChild(el("dt", null, p[0]));
      dl.appendChild(el("dd", null, p[1]));
    });
    return dl;
  }

  function showGroup(group) {
    var box = el("div", "tv-span");
    var head = el("header", "tv-span-head");
    var kicker = el("div", "tv-span-kicker");
    kicker.appendChild(el("span", "badge kind tv-kind tv-type-" + group.type, group.type));
    kicker.appendChild(el("span", "badge", "× " + group.members.length + " folded"));
    head.appendChild(kicker);
    head.appendChild(el("h2", "tv-span-name", group.name));
    head.appendChild(el("p", "tv-span-summary", group.members.length + " similar spans in a row, folded into one line. " +
      "Open it (→ or the arrow) to see each of them."));
    box.appendChild(head);
    var durations = group.members.map(function (m) { return m.dur; }).sort(function (a, b) { return a - b; });
    box.appendChild(facts([
      ["From – to", "+" + fmtMicros(group.start) + " → +" + fmtMicros(group.end) + " (" + fmtMicros(group.dur) + ")"],
      ["Each took", fmtMicros(durations[0]) + " to " + fmtMicros(durations[durations.length - 1]) +
        " (median " + fmtMicros(durations[Math.floor(durations.length / 2)]) + ")"],
      ["Failed", group.errors ? group.errors + " of " + group.members.length : "none"],
      ["Cost", group.cost !== null ? fmtUsd(group.cost) : ""],
      ["Tokens", group.tokens ? group.tokens.toLocaleString() : ""],
    ]));
    detail.replaceChildren(box);
  }

  function showJournal(item) {
    var box = el("div", "tv-span");
    var head = el("header", "tv-span-head");
    var kicker = el("div", "tv-span-kicker");
    kicker.appendChild(el("span", "badge kind tv-kind tv-type-" + item.type, item.type));
    kicker.appendChild(el("span", "badge badge-info", "run journal"));
    head.appendChild(kicker);
    head.appendChild(el("h2", "tv-span-name", item.name));
    head.appendChild(el("p", "tv-span-summary", item.label));
    box.appendChild(head);
    box.appendChild(facts([["When", "+" + fmtMicros(item.start) + " into the trace"],
      ["How long", item.dur ? fmtMicros(item.dur) : ""]]));
    box.appendChild(el("p", "muted small", "Recorded by the run's journal; no span was received for it (yet)."));
    detail.replaceChildren(box);
  }

  // --- Finding and revealing -----------------------------------------------------------------

  function reveal(node) {
    var changed = false;
    for (var n = node; n; n = n.up) {
      if (n !== node && open[n.key] !== true && !isOpen(n)) { open[n.key] = true; changed = true; }
      if (n.owner && !isOpen(n.owner)) { open[n.owner.key] = true; changed = true; }
    }
    if (changed) flatten();
  }

  function jumpTo(node) {
    reveal(node);
    select(node.key);
  }

  function runFind(direction) {
    var query = findInput.value.trim().toLowerCase();
    if (!query) { findMatches = []; findAt = -1; findCount.textContent = ""; return; }
    if (findInput.getAttribute("data-last") !== query) {
      findInput.setAttribute("data-last", query);
      findMatches = model.nodes.filter(function (n) {
        if (n.search === null) n.search = (n.name + " " + n.model + " " + n.label).toLowerCase();
        return n.search.indexOf(query) >= 0;
      });
      findAt = -1;
    }
    if (!findMatches.length) { findCount.textContent = "no match"; return; }
    if (direction) {
      findAt = (findAt + direction + findMatches.length) % findMatches.length;
      jumpTo(findMatches[findAt]);
    }
    findCount.textContent = (findAt >= 0 ? findAt + 1 + " of " : "") + findMatches.length.toLocaleString() +
      " match" + (findMatches.length === 1 ? "" : "es");
  }

  function nextError() {
    var errors = model.nodes.filter(function (n) { return n.status === 2; });
    if (!errors.length) { findCount.textContent = "no span in error"; return; }
    var current = model.nodes.find(function (n) { return n.key === selected; });
    var after = current ? current.start : -1;
    var next = errors.find(function (n) { return n.start > after || (n.start === after && current && n.i > current.i); });
    jumpTo(next || errors[0]);
    findCount.textContent = errors.length.toLocaleString() + " in error";
  }

  // --- Events --------------------------------------------------------------------------------

  function toggle(key, value) {
    var index = indexOfKey(key);
    if (index < 0) return;
    var item = rows[index].item;
    if (!hasChildren(item)) return;
    open[key] = value === undefined ? !isOpen(item) : value;
    flatten();
    draw();
  }

  canvas.addEventListener("click", function (event) {
    var twisty = event.target.closest("[data-toggle]");
    if (twisty) {
      toggle(twisty.getAttribute("data-toggle"));
      return;
    }
    var line = event.target.closest("[data-row]");
    if (!line) return;
    var row = rows[parseInt(line.getAttribute("data-row"), 10)];
    if (row) select(row.item.key, { scroll: false });
    scroller.focus({ preventScroll: true });
  });

  canvas.addEventListener("dblclick", function (event) {
    var line = event.target.closest("[data-row]");
    if (line && !event.target.closest("[data-toggle]")) {
      var row = rows[parseInt(line.getAttribute("data-row"), 10)];
      if (row) toggle(row.item.key);
    }
  });

  scroller.addEventListener("scroll", schedule, { passive: true });
  window.addEventListener("resize", schedule);

  scroller.addEventListener("keydown", function (event) {
    if (!rows.length) return;
    var index = indexOfKey(selected);
    var item = index >= 0 ? rows[index].item : null;
    var page = Math.max(1, Math.floor(scroller.clientHeight / ROW) - 1);
    var go = function (to) {
      to = Math.max(0, Math.min(rows.length - 1, to));
      select(rows[to].item.key);
    };
    switch (event.key) {
      case "ArrowDown": go(index + 1); break;
      case "ArrowUp": go(index < 0 ? 0 : index - 1); break;
      case "PageDown": go(index + page); break;
      case "PageUp": go(index - page); break;
      case "Home": go(0); break;
      case "End": go(rows.length - 1); break;
      case "ArrowRight":
        if (item && hasChildren(item) && !isOpen(item)) toggle(item.key, true);
        else if (item && hasChildren(item)) go(index + 1);
        break;
      case "ArrowLeft":
        if (item && hasChildren(item) && isOpen(item)) toggle(item.key, false);
        else if (item) {
          for (var k = index - 1; k >= 0; k--) {
            if (rows[k].depth < rows[index].depth) { go(k); break; }
          }
        }
        break;
      case "Enter":
      case " ":
        if (item) toggle(item.key);
        break;
      default:
        return;
    }
    event.preventDefault();
  });

  // The cost so far, under the pointer.
  scroller.addEventListener("mousemove", function (event) {
    var lane = canvas.querySelector(".tv-cell-bar");
    if (!lane || !model) return;
    var box = lane.getBoundingClientRect();
    var x = event.clientX - box.left;
    if (x < 0 || x > box.width) { guide.classList.add("hidden"); return; }
    var us = (x / box.width) * model.duration;
    var scrollBox = scroller.getBoundingClientRect();
    guide.style.left = event.clientX - scrollBox.left + "px";
    guide.style.top = scroller.scrollTop + "px";
    guide.style.height = scroller.clientHeight + "px";
    guide.classList.remove("hidden");
    var text = "+" + fmtMicros(us);
    if (model.hasCost) {
      var spent = costAt(us);
      text += " · " + fmtUsd(spent) + " spent (" + Math.round((spent / model.totalCost) * 100) + " %)";
    }
    guideLabel.textContent = text;
    guideLabel.classList.toggle("is-left", x > box.width * 0.7);
  });
  scroller.addEventListener("mouseleave", function () { guide.classList.add("hidden"); });

  root.addEventListener("click", function (event) {
    var action = event.target.closest("[data-tv-action]");
    if (!action) return;
    var name = action.getAttribute("data-tv-action");
    if (name === "next-error") nextError();
    if (name === "expand-all" || name === "collapse-all") {
      var value = name === "expand-all";
      open = {};
      model.nodes.forEach(function (n) {
        if (n.entries.length) open[n.key] = value || n.up === null;
        if (n.owner) open[n.owner.key] = value;
      });
      model.rootEntries.forEach(function (e) { if (e.group) open[e.key] = value; });
      flatten();
      draw();
    }
  });

  var findTimer = 0;
  findInput.addEventListener("input", function () {
    clearTimeout(findTimer);
    findTimer = setTimeout(function () { runFind(0); }, 150);
  });
  findInput.addEventListener("keydown", function (event) {
    if (event.key === "Enter") {
      event.preventDefault();
      runFind(event.shiftKey ? -1 : 1);
    } else if (event.key === "Escape") {
      findInput.value = "";
      runFind(0);
    }
  });

  // Tabs: the timeline, and the narrative (fetched the first time it is shown, then kept live).
  var narrative = document.getElementById("trace-narrative");
  root.querySelectorAll("[data-tv-tab]").forEach(function (tab) {
    tab.addEventListener("click", function () { showTab(tab.getAttribute("data-tv-tab")); });
    tab.addEventListener("keydown", function (event) {
      if (event.key !== "ArrowLeft" && event.key !== "ArrowRight") return;
      var other = tab.getAttribute("data-tv-tab") === "timeline" ? "narrative" : "timeline";
      showTab(other);
      root.querySelector('[data-tv-tab="' + other + '"]').focus();
    });
  });

  function showTab(name) {
    root.querySelectorAll("[data-tv-tab]").forEach(function (tab) {
      var on = tab.getAttribute("data-tv-tab") === name;
      tab.setAttribute("aria-selected", on ? "true" : "false");
      tab.tabIndex = on ? 0 : -1;
      document.getElementById(tab.getAttribute("aria-controls")).hidden = !on;
    });
    if (name === "narrative" && narrative && !narrative.hasAttribute("data-live-on")) {
      narrative.setAttribute("data-live-on", "trace.spans");
      if (window.htmx) window.htmx.trigger(narrative, "live");
    }
    if (name === "timeline") schedule();
  }

  // A sentence of the narrative that names its span opens it on the timeline.
  if (narrative) {
    narrative.addEventListener("click", function (event) {
      var link = event.target.closest("[data-span-id], a[href^='#span-']");
      if (!link) return;
      var id = link.getAttribute("data-span-id") || link.getAttribute("href").slice(6);
      var node = model.nodes.find(function (n) { return n.id === id; });
      if (!node) return;
      event.preventDefault();
      showTab("timeline");
      jumpTo(node);
    });
  }

  // --- Live ----------------------------------------------------------------------------------

  var reloadTimer = 0;
  var reloading = false;
  function reload() {
    if (reloading) { reloadTimer = setTimeout(reload, 500); return; }
    reloading = true;
    fetch(dataUrl, { credentials: "same-origin" }).then(function (response) {
      if (!response.ok) throw new Error("HTTP " + response.status);
      return response.json();
    }).then(function (data) {
      model = build(data);
      flatten();
      drawAxis();
      draw();
      root.classList.remove("tv-updated");
      void root.offsetWidth;
      root.classList.add("tv-updated");
    }).catch(function () { /* the next event, or a reconnect, tries again */ }).finally(function () {
      reloading = false;
    });
  }

  document.addEventListener("cockpit:live", function (event) {
    var detailEvent = event.detail || {};
    if (detailEvent.type !== "trace.spans" || String(detailEvent.trace) !== String(traceId)) return;
    clearTimeout(reloadTimer);
    reloadTimer = setTimeout(reload, 300);
  });

  // --- Start ---------------------------------------------------------------------------------

  model = build(JSON.parse(source.textContent));
  flatten();
  drawAxis();
  // #span-<id> in the address (from an incident note, the narrative, a shared link) opens that span.
  function spanOfHash() {
    var wanted = /^#span-([0-9a-f]{16})$/.exec(location.hash);
    return wanted && model.nodes.find(function (n) { return n.id === wanted[1]; });
  }
  window.addEventListener("hashchange", function () {
    var node = spanOfHash();
    if (!node) return;
    showTab("timeline");
    jumpTo(node);
  });
  var first = spanOfHash();
  if (first) {
    jumpTo(first);
  } else if (rows.length) {
    select(rows[0].item.key);
  } else {
    draw();
  }
})();
