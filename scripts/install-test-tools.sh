#!/usr/bin/env bash
# Installs the Debian packages two tests use: Chromium and ChromeDriver for the report's browser
# test (tests/report/test_browser.py) and ffmpeg for the MP4 animation test (tests/
# test_animate.py). Best effort: where the packages cannot be installed (no apt, no root and no
# password-less sudo, no registry), it says why and those tests are skipped with that reason.
set -uo pipefail
if command -v chromium >/dev/null 2>&1 && command -v chromedriver >/dev/null 2>&1 \
    && command -v ffmpeg >/dev/null 2>&1; then
    exit 0
fi
if ! command -v apt-get >/dev/null 2>&1; then
    echo "install-test-tools: no apt-get here; the browser and MP4 tests will be skipped" >&2
    exit 0
fi
if [ "$(id -u)" = "0" ]; then
    run=()
elif command -v sudo >/dev/null 2>&1 && sudo -n true 2>/dev/null; then
    run=(sudo -n)
else
    echo "install-test-tools: not root and no password-less sudo; the browser and MP4 tests will be skipped" >&2
    exit 0
fi
echo "install-test-tools: installing Debian's chromium, chromium-driver and ffmpeg (once)" >&2
export DEBIAN_FRONTEND=noninteractive
if ! "${run[@]}" apt-get update -qq >/dev/null \
    || ! "${run[@]}" apt-get install -y -qq chromium chromium-driver ffmpeg >/dev/null; then
    echo "install-test-tools: apt could not install them; the browser and MP4 tests will be skipped" >&2
fi
exit 0
