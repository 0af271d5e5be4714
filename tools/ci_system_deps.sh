#!/usr/bin/env bash
# What the test suite needs beyond pip: Debian's Chromium for the docs browser tests, and KaTeX for the docs (fetched
# from the npm registry by tools/render_docs.py with `npm pack`, checked against its pinned hash, cached in tools/.cache).
set -euo pipefail
cd "$(dirname "$0")/.."
need=()
command -v chromium >/dev/null 2>&1 || need+=(chromium)
command -v npm >/dev/null 2>&1 || need+=(npm)
if [ ${#need[@]} -gt 0 ]; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need[@]}" >/dev/null
  else
    echo "missing ${need[*]} and cannot apt-get install them: the docs browser tests will be skipped or fail" >&2
  fi
fi
if command -v npm >/dev/null 2>&1; then python tools/render_docs.py --fetch-assets; fi
