#!/bin/sh
# The report's browser test opens the HTML report in headless Chromium (Debian's `chromium`).
# Installs it when missing and we are root (CI containers); otherwise says how, and the test skips.
set -eu
if command -v chromium >/dev/null 2>&1; then
    exit 0
fi
if [ "$(id -u)" = "0" ] && command -v apt-get >/dev/null 2>&1; then
    echo "ensure-chromium: installing Debian's chromium for the report's browser test" >&2
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq --no-install-recommends chromium >/dev/null
    command -v chromium >/dev/null 2>&1 && exit 0
    echo "ensure-chromium: apt-get finished but chromium is not on PATH" >&2
    exit 1
fi
echo "ensure-chromium: chromium not found; install it (Debian/Ubuntu: sudo apt-get install chromium)" \
     "to run the report's browser test; without it that test is skipped" >&2
exit 0
