// Applies the saved (or the system's) colour theme before the page paints. Loaded in <head>.
(function () {
  var theme = null;
  try { theme = localStorage.getItem("cockpit-theme"); } catch (e) { /* storage disabled */ }
  if (theme !== "light" && theme !== "dark") {
    theme = window.matchMedia && window.matchMedia("(prefers-color-scheme: dark)").matches ? "dark" : "light";
  }
  document.documentElement.setAttribute("data-theme", theme);
})();
