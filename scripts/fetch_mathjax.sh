#!/usr/bin/env bash
# Fetch MathJax 3 so the book's equations render offline.
#
# Sphinx loads MathJax from a public CDN by default; offline (or behind a strict proxy) the pages then
# show raw TeX. Instead we take the npm package `mathjax` once, at build time, into book/static/mathjax/
# (gitignored, never committed); _config.yml sets `mathjax_path: mathjax/tex-mml-chtml.js`, served
# from _static/ like the widget JavaScript (scripts/fetch_widget_js.sh).
#
# Kept from the package's es5/ folder: the tex-mml-chtml.js component (the one Sphinx loads by default),
# the CommonHTML output with its woff-v2 fonts, the TeX input extensions it loads on demand, and the
# accessibility/menu/speech components the right-click menu can load (about 10 MB on disk; a page with
# equations loads about 1.2 MB of it plus the fonts it uses).
# Usage: scripts/fetch_mathjax.sh [--force]      (skips the download when the component exists)
set -euo pipefail
cd "$(dirname "$0")/.."

MATHJAX="mathjax@3.2.2"
DEST="book/static/mathjax"

if [[ "${1:-}" != "--force" && -s "$DEST/tex-mml-chtml.js" && -d "$DEST/output/chtml/fonts/woff-v2" ]]; then
  echo "MathJax: already in $DEST"
  exit 0
fi
if ! command -v npm >/dev/null 2>&1; then
  echo "error: npm not found; it is needed once to fetch $MATHJAX into $DEST" >&2
  echo "       (install Node.js/npm, e.g. 'apt-get install npm', or unpack the package's es5/ folder there by hand)" >&2
  exit 1
fi

tmp="$(mktemp -d)"
trap 'rm -rf "$tmp"' EXIT
(cd "$tmp" && npm pack --silent "$MATHJAX" >/dev/null) || {
  echo "error: 'npm pack $MATHJAX' failed (is the npm registry reachable?)" >&2
  exit 1
}
tar -xzf "$tmp"/mathjax-*.tgz -C "$tmp"
src="$tmp/package/es5"
[[ -s "$src/tex-mml-chtml.js" ]] || { echo "error: $src/tex-mml-chtml.js missing from the npm package" >&2; exit 1; }
# staged beside DEST and swapped in with renames, so an interrupted run never leaves half a copy
stage="$(dirname "$DEST")/.mathjax.part"
rm -rf "$stage" && mkdir -p "$stage"
cp "$src/tex-mml-chtml.js" "$stage/"
for d in input output a11y ui sre; do
  [[ -d "$src/$d" ]] && cp -r "$src/$d" "$stage/$d"
done
rm -rf "$DEST.old"
[[ -d "$DEST" ]] && mv "$DEST" "$DEST.old"
mv "$stage" "$DEST"
rm -rf "$DEST.old"
echo "MathJax: $MATHJAX -> $DEST ($(du -sh "$DEST" | cut -f1))"
