// The FinOps pages. Figures are built on the server (finops/plots.py) and handed over as JSON in
// <script type="application/json" id="…">; an element [data-plot="<that id>"] is drawn with
// plotly.js in the page's colours (light or dark). A click on a bar of a [data-plot-drill]
// figure follows the address in its customdata[0]. (Figures are never swapped in by htmx: it
// drops <script> elements from what it swaps, by the page's htmx configuration.)
//
// The burn figure (#finops-burn) is re-fetched through its normal view when spans arrive
// (live events "traces.arrived" and "finops.cost" on the team groups), at most once every
// BURN_MIN_INTERVAL_MS, and every minute anyway (the last hour's window moves on).
(function () {
  "use strict";

  var BURN_MIN_INTERVAL_MS = 2000;

  // --- Figures ---------------------------------------------------------------------------------

  function colours() {
    var css = getComputedStyle(document.documentElement);
    function v(name) { return css.getPropertyValue(name).trim(); }
    return { text: v("--text"), muted: v("--muted"), grid: v("--border"), accent: v("--accent"), surface: v("--surface"), font: v("--font") };
  }

  function layoutFor(figure) {
    var c = colours();
    var axis = { color: c.muted, gridcolor: c.grid, zerolinecolor: c.grid, linecolor: c.grid };
    var base = figure.layout || {};
    return Object.assign({}, base, {
      paper_bgcolor: "rgba(0,0,0,0)",
      plot_bgcolor: "rgba(0,0,0,0)",
      font: { family: c.font, color: c.text, size: 12 },
      hoverlabel: { bgcolor: c.surface, bordercolor: c.accent, font: { family: c.font, color: c.text } },
      xaxis: Object.assign({}, base.xaxis, axis),
      yaxis: Object.assign({}, base.yaxis, axis),
    });
  }

  var config = { displayModeBar: false, responsive: true };

  function draw(el) {
    var source = document.getElementById(el.getAttribute("data-plot"));
    if (!source || !window.Plotly) return;
    var figure = JSON.parse(source.textContent);
    el._finopsFigure = figure;
    window.Plotly.newPlot(el, figure.data, layoutFor(figure), config).then(function () {
      el.setAttribute("data-drawn", "true");
    });
    if (el.hasAttribute("data-plot-drill")) {
      el.on("plotly_click", function (event) {
        var point = event && event.points && event.points[0];
        var href = point && point.customdata && point.customdata[0];
        if (href) window.location.assign(href);
      });
    }
  }

  function drawAll(root) {
    root.querySelectorAll("[data-plot]").forEach(function (el) {
      if (!el.hasAttribute("data-drawn")) draw(el);
    });
  }

  function redrawAll() {
    document.querySelectorAll("[data-plot][data-drawn]").forEach(function (el) {
      if (el._finopsFigure) window.Plotly.react(el, el._finopsFigure.data, layoutFor(el._finopsFigure), config);
    });
  }

  // --- Live burn rate, throttled --------------------------------------------------------------

  var lastBurn = 0;
  var burnTimer = null;

  function refreshBurn() {
    var el = document.getElementById("finops-burn");
    if (!el || !window.htmx) return;
    var wait = lastBurn + BURN_MIN_INTERVAL_MS - Date.now();
    if (wait > 0) {
      if (!burnTimer) burnTimer = setTimeout(function () { burnTimer = null; refreshBurn(); }, wait);
      return;
    }
    lastBurn = Date.now();
    window.htmx.trigger(el, "finops:refresh");
  }

  document.addEventListener("cockpit:live", function (event) {
    var type = event.detail && event.detail.type;
    if (type === "traces.arrived" || type === "finops.cost") refreshBurn();
  });

  // --- Filters --------------------------------------------------------------------------------

  function syncCustomRange() {
    var select = document.querySelector("[data-range-select]");
    if (!select) return;
    var custom = select.value === "custom";
    document.querySelectorAll("[data-custom-range]").forEach(function (el) {
      el.classList.toggle("is-collapsed", !custom);
      el.querySelectorAll("input").forEach(function (input) { input.disabled = !custom; });
    });
  }

  document.addEventListener("change", function (event) {
    if (event.target.matches && event.target.matches("[data-range-select]")) syncCustomRange();
  }, true);

  // --- Budget form: show the fields of the chosen scope ----------------------------------------

  function syncScope() {
    var form = document.querySelector("[data-budget-form]");
    var scope = form && form.querySelector("select[name=scope]");
    if (!scope || scope.disabled) return;
    form.querySelectorAll("[data-scope-field]").forEach(function (el) {
      var wanted = el.getAttribute("data-scope-field").split(/\s+/);
      el.classList.toggle("hidden", wanted.indexOf(scope.value) === -1);
    });
  }

  document.addEventListener("change", function (event) {
    if (event.target.matches && event.target.matches("[data-budget-form] select[name=scope]")) syncScope();
  });

  // --- Start ---------------------------------------------------------------------------------

  new MutationObserver(function () { if (window.Plotly) redrawAll(); })
    .observe(document.documentElement, { attributes: true, attributeFilter: ["data-theme"] });

  syncCustomRange();
  syncScope();
  drawAll(document);
})();
