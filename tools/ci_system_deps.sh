#!/usr/bin/env bash
# System packages the test suite needs beyond pip: Debian's Chromium for the docs browser test.
set -euo pipefail
if ! command -v chromium >/dev/null 2>&1; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null
  else
    echo "chromium not found and cannot apt-get install it: the docs browser test will be skipped" >&2
  fi
fi
