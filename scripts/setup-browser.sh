#!/usr/bin/env bash
# Debian's chromium (and a small CJK font, so screenshots show Chinese) for the web-page tests.
# Playwright drives the system browser; nothing is downloaded outside the package registries.
set -euo pipefail
if command -v chromium >/dev/null && fc-list 2>/dev/null | grep -qi "wenquanyi\|noto sans cjk"; then
  exit 0
fi
if [ "$(id -u)" -ne 0 ] || ! command -v apt-get >/dev/null; then
  echo "setup-browser: install chromium and a CJK font with your package manager" \
       "to run the web-page tests (they are skipped without it outside CI)" >&2
  exit 0
fi
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq
apt-get install -y -qq --no-install-recommends chromium fonts-wqy-microhei >/dev/null
