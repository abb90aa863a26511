#!/usr/bin/env bash
# Make sure the system Chromium the browser test drives is installed (idempotent).
# Playwright is pointed at it with executable_path; no browser is ever downloaded.
# Never fails: where Chromium cannot be installed it says why and exits 0, and the browser
# test skips with that reason.
set -uo pipefail
browser="${KPI_TEST_CHROMIUM:-/usr/bin/chromium}"

if [ -x "$browser" ]; then
  echo "chromium: present at $browser"
  exit 0
fi
if ! command -v apt-get >/dev/null 2>&1; then
  echo "chromium: not installed at $browser and apt-get is unavailable; the browser test will be skipped"
  exit 0
fi
if [ "$(id -u)" != "0" ]; then
  echo "chromium: not installed at $browser and installing needs root (apt-get install chromium chromium-driver); the browser test will be skipped"
  exit 0
fi

echo "chromium: installing Debian packages chromium and chromium-driver"
if apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium chromium-driver >/dev/null; then
  if [ -x "$browser" ]; then
    echo "chromium: installed at $browser"
  else
    echo "chromium: packages installed but $browser is missing; the browser test will be skipped"
  fi
else
  echo "chromium: apt-get install failed; the browser test will be skipped"
fi
exit 0
