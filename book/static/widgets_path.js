// Loaded before require.js and embed-amd.js on every page with widgets (nb_ipywidgets_js in
// _config.yml). Two jobs:
//
// 1. Serve @jupyter-widgets/html-manager entirely from the book (no CDN, no 404s). Each AMD module
//    of embed-amd.js derives the folder of its font/icon files from the URL RequireJS gives the
//    module; unmapped, that URL is relative to the page (.../book/generated/@jupyter-widgets/...),
//    where nothing is served. A global `require` object defined before require.js loads is
//    RequireJS's configuration: map the module ids into _static/widgets/, where
//    scripts/fetch_widget_js.sh puts embed-amd.js and its fonts.
// 2. Keep the theme's Font Awesome from breaking widgets. The theme's fontawesome.js (deferred, so it
//    runs after this file) replaces every <i class="fa ..."> with an <svg>; the Play widget then
//    finds no <i> to update and throws on every tick. "nest" puts the svg inside the <i> instead.
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
  window.FontAwesomeConfig = Object.assign(window.FontAwesomeConfig || {}, { autoReplaceSvg: "nest" });
})();
