#!/usr/bin/env bash
# Rebuild plots_offline.html: a DVC plots HTML template with the vega, vega-lite and vega-embed bundles
# inlined, so `dvc plots show` renders without network (DVC's default page loads them from a CDN).
# Needs npm (the npm registry). Versions match what dvc-render's vega specs target.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
tmp="$(mktemp -d)"; trap 'rm -rf "$tmp"' EXIT
cd "$tmp"
npm pack --silent vega@5.33.1 vega-lite@5.23.0 vega-embed@6.29.0 >/dev/null
for f in *.tgz; do mkdir "${f%.tgz}"; tar xzf "$f" -C "${f%.tgz}" --strip-components=1; done
{
  echo '<!DOCTYPE html>'
  echo '<html><head><meta charset="utf-8"><title>selfimprove: DVC plots</title>'
  echo '<!-- vega 5.33.1, vega-lite 5.23.0, vega-embed 6.29.0 (BSD-3-Clause), inlined by infra/dvc/build_offline_template.sh -->'
  for js in vega-5.33.1/build/vega.min.js vega-lite-5.23.0/build/vega-lite.min.js vega-embed-6.29.0/build/vega-embed.min.js; do
    printf '<script type="text/javascript">\n'; cat "$js"; printf '\n</script>\n'
  done
  echo '<style>body{font-family:sans-serif;margin:2em} table{border-spacing:15px}</style>'
  echo '</head><body><h2>selfimprove: accuracy across rounds</h2>'
  echo '{plot_divs}'
  echo '</body></html>'
} > "$here/plots_offline.html"
echo "wrote $here/plots_offline.html ($(wc -c < "$here/plots_offline.html") bytes)"
