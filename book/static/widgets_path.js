// Tell @jupyter-widgets/html-manager (embed-amd.js) where its font files are: beside it, in
// _static/widgets/ (fetched by scripts/fetch_widget_js.sh). Without this it looks for them
// relative to the page and the browser logs 404 errors.
window.__jupyter_widgets_assets_path__ = new URL("widgets/", document.currentScript.src).href;
