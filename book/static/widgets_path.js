// Serve @jupyter-widgets/html-manager entirely from the book (no CDN, no 404s), loaded before
// require.js and embed-amd.js (see nb_ipywidgets_js in _config.yml).
//
// Each AMD module of embed-amd.js derives the folder of its font/icon files from the URL that
// RequireJS gives the module; without a mapping that URL is relative to the page
// (.../book/generated/@jupyter-widgets/...), where nothing is served. A global `require` object
// defined before require.js loads is RequireJS's configuration: map the module ids into
// _static/widgets/, where scripts/fetch_widget_js.sh puts embed-amd.js and its fonts.
(function () {
  var base = new URL("widgets/", document.currentScript.src).href;
  window.__jupyter_widgets_assets_path__ = base;
  window.require = {
    paths: {
      "@jupyter-widgets/html-manager/dist": base.replace(/\/$/, ""),
      "@jupyter-widgets/html-manager": base + "html-manager",
      "@jupyter-widgets/base": base + "base",
      "@jupyter-widgets/controls": base + "controls",
      "@jupyter-widgets/output": base + "output"
    }
  };
})();
