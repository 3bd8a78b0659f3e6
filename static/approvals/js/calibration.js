// The calibration page's reliability plot: the figure is built on the server (approvals/plots.py)
// and handed over as JSON in <script type="application/json" id="…">; plotly.js (served from
// the plotly package, see approvals/plots.py) draws it in the page's colours, light or dark.
(function () {
  "use strict";

  var el = document.querySelector("[data-plot]");
  var source = el && document.getElementById(el.getAttribute("data-plot"));
  if (!el || !source || !window.Plotly) return;
  var figure = JSON.parse(source.textContent);

  function colours() {
    var css = getComputedStyle(document.documentElement);
    function v(name) { return css.getPropertyValue(name).trim(); }
    return { text: v("--text"), muted: v("--muted"), grid: v("--border"), accent: v("--accent"), surface: v("--surface"), font: v("--font") };
  }

  function layout() {
    var c = colours();
    var axis = { color: c.muted, gridcolor: c.grid, zerolinecolor: c.grid, linecolor: c.grid };
    return Object.assign({}, figure.layout, {
      paper_bgcolor: "rgba(0,0,0,0)",
      plot_bgcolor: "rgba(0,0,0,0)",
      font: { family: c.font, color: c.text, size: 13 },
      hoverlabel: { bgcolor: c.surface, bordercolor: c.accent, font: { family: c.font, color: c.text } },
      xaxis: Object.assign({}, figure.layout.xaxis, axis),
      yaxis: Object.assign({}, figure.layout.yaxis, axis),
      yaxis2: Object.assign({}, figure.layout.yaxis2, axis, { showgrid: false }),
    });
  }

  function data() {
    var c = colours();
    return figure.data.map(function (trace) {
      var copy = Object.assign({}, trace);
      if (copy.type === "bar") {
        copy.marker = Object.assign({}, copy.marker, { color: c.muted });
      } else if (copy.mode === "lines") {
        copy.line = Object.assign({}, copy.line, { color: c.muted });
      } else {
        copy.line = Object.assign({}, copy.line, { color: c.accent, width: 2.5 });
        copy.marker = Object.assign({}, copy.marker, { color: c.accent });
      }
      return copy;
    });
  }

  var config = { displayModeBar: false, responsive: true };
  window.Plotly.newPlot(el, data(), layout(), config);

  // Follow the theme toggle.
  new MutationObserver(function () { window.Plotly.react(el, data(), layout(), config); })
    .observe(document.documentElement, { attributes: true, attributeFilter: ["data-theme"] });
})();
