#!/usr/bin/env bash
# Installs Debian's Chromium and ChromeDriver for the report's browser test (tests/report/
# test_browser.py). Best effort: where the packages cannot be installed (no apt, no root and no
# password-less sudo, no registry), it says why and the browser test is skipped with that reason.
set -uo pipefail
if command -v chromium >/dev/null 2>&1 && command -v chromedriver >/dev/null 2>&1; then
    exit 0
fi
if ! command -v apt-get >/dev/null 2>&1; then
    echo "install-browser: no apt-get here; the browser test will be skipped" >&2
    exit 0
fi
if [ "$(id -u)" = "0" ]; then
    run=()
elif command -v sudo >/dev/null 2>&1 && sudo -n true 2>/dev/null; then
    run=(sudo -n)
else
    echo "install-browser: not root and no password-less sudo; the browser test will be skipped" >&2
    exit 0
fi
echo "install-browser: installing Debian's chromium and chromium-driver (once)" >&2
export DEBIAN_FRONTEND=noninteractive
if ! "${run[@]}" apt-get update -qq >/dev/null \
    || ! "${run[@]}" apt-get install -y -qq chromium chromium-driver >/dev/null; then
    echo "install-browser: apt could not install chromium; the browser test will be skipped" >&2
fi
exit 0
