#!/usr/bin/env bash
# Provision a headless browser for the report's browser test: Debian's `chromium` package
# (apt-get, once; skipped when a chromium is already on the machine), driven by playwright-core
# (npm) over CDP, so nothing is downloaded from Playwright's CDN. Prints the binary's path.
# CONSORT_CHROMIUM names another binary (e.g. a Chrome already installed).
set -euo pipefail
if [ -n "${CONSORT_CHROMIUM:-}" ]; then
  [ -x "$CONSORT_CHROMIUM" ] || { echo "chromium.sh: CONSORT_CHROMIUM=$CONSORT_CHROMIUM is not an executable" >&2; exit 1; }
  echo "$CONSORT_CHROMIUM"
  exit 0
fi
find_chromium() {
  for c in chromium chromium-browser; do
    if p=$(command -v "$c" 2>/dev/null); then echo "$p"; return 0; fi
  done
  return 1
}
if ! bin=$(find_chromium); then
  command -v apt-get >/dev/null || { echo "chromium.sh: no chromium found and no apt-get to install Debian's package (set CONSORT_CHROMIUM)" >&2; exit 1; }
  sudo=""
  [ "$(id -u)" -eq 0 ] || sudo="sudo"
  echo "chromium.sh: installing Debian's chromium package" >&2
  $sudo apt-get update -qq >&2
  # Fonts too (recommends are skipped): Liberation is metric-compatible with the Helvetica/Arial
  # the report asks for, so a screenshot lays text out as a reader's browser does.
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends chromium fonts-liberation fonts-dejavu-core >&2
  bin=$(find_chromium) || { echo "chromium.sh: chromium is still not on PATH after apt-get install" >&2; exit 1; }
fi
# Debian's /usr/bin/chromium is a shell launcher that adds desktop flags; the browser itself is
# beside it, and Playwright passes the flags a headless run needs.
for real in /usr/lib/chromium/chromium /usr/lib/chromium-browser/chromium-browser; do
  if [ -x "$real" ]; then bin="$real"; break; fi
done
echo "$bin"
