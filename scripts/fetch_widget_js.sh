#!/usr/bin/env bash
# Fetch the JavaScript that renders ipywidgets in the static book, so the book works offline.
#
# myst-nb's default loads require.js and @jupyter-widgets/html-manager's embed-amd.js from public
# CDNs; offline (or behind a strict proxy) the widgets then render blank. Instead we take both
# files from the npm registry once, at build time, into book/static/widgets/ (gitignored, never
# committed); _config.yml serves that folder (html_static_path) and lists the two files under
# nb_ipywidgets_js.
#
# html-manager 1.0.x is the line that matches ipywidgets 8.1 (it is also myst-nb 1.4's default).
# Usage: scripts/fetch_widget_js.sh [--force]      (skips the download when both files exist)
set -euo pipefail
cd "$(dirname "$0")/.."

HTML_MANAGER="@jupyter-widgets/html-manager@1.0.6"
REQUIREJS="requirejs@2.3.7"
DEST="book/static/widgets"

if [[ "${1:-}" != "--force" && -s "$DEST/embed-amd.js" && -s "$DEST/require.js" ]]; then
  echo "widgets JS: already in $DEST"
  exit 0
fi
if ! command -v npm >/dev/null 2>&1; then
  echo "error: npm not found; it is needed once to fetch $HTML_MANAGER and $REQUIREJS into $DEST" >&2
  echo "       (install Node.js/npm, e.g. 'apt-get install npm', or copy dist/embed-amd.js and require.js there by hand)" >&2
  exit 1
fi

tmp="$(mktemp -d)"
trap 'rm -rf "$tmp"' EXIT
(cd "$tmp" && npm pack --silent "$HTML_MANAGER" "$REQUIREJS" >/dev/null) || {
  echo "error: 'npm pack $HTML_MANAGER $REQUIREJS' failed (is the npm registry reachable?)" >&2
  exit 1
}
mkdir -p "$tmp/hm" "$tmp/rq"
tar -xzf "$tmp"/jupyter-widgets-html-manager-*.tgz -C "$tmp/hm"
tar -xzf "$tmp"/requirejs-*.tgz -C "$tmp/rq"
for f in "$tmp/hm/package/dist/embed-amd.js" "$tmp/rq/package/require.js"; do
  [[ -s "$f" ]] || { echo "error: $f missing from the npm package" >&2; exit 1; }
done
# embed-amd.js, its lazily loaded chunks and its icon fonts (book/static/widgets_path.js points
# html-manager at this folder for them), plus require.js. Staged in a temporary folder beside
# DEST and swapped in with renames, so an interrupted run never leaves half a set behind.
stage="$(dirname "$DEST")/.widgets.part"
rm -rf "$stage" && mkdir -p "$stage"
find "$tmp/hm/package/dist" -maxdepth 1 -type f ! -name '*.map' ! -name 'embed.js' \
  ! -name 'libembed-amd.js' -exec cp {} "$stage/" \;
cp "$tmp/rq/package/require.js" "$stage/require.js"
rm -rf "$DEST.old"
[[ -d "$DEST" ]] && mv "$DEST" "$DEST.old"
mv "$stage" "$DEST"
rm -rf "$DEST.old"
echo "widgets JS: $HTML_MANAGER and $REQUIREJS -> $DEST"
