#!/usr/bin/env bash
# Installs what confroom needs on a Debian 12 machine (run as root, or with sudo available):
#   scripts/setup.sh          apt packages for running + a virtualenv with confroom
#   scripts/setup.sh --test   the same plus what the test suite needs (SIPp, sox, baresip, Kamailio,
#                             test extras)
#   scripts/setup.sh --bench  the same plus what `make bench` needs (Janus, SIPp, bench/requirements.txt)
set -euo pipefail
cd "$(dirname "$0")/.."

want_test=0
want_bench=0
if [ "${1:-}" = "--test" ]; then want_test=1; fi
if [ "${1:-}" = "--bench" ]; then want_bench=1; fi

apt_pkgs=(espeak-ng libopus0 redis-server)  # libopus0: the Opus codec (ctypes); redis-server: clusters (--redis tests, --workers)
# kamailio: the cluster's SIP front door (deploy/kamailio/); the tests run their own instance
if [ "$want_test" = 1 ]; then
  apt_pkgs+=(sip-tester sox baresip kamailio build-essential python3-dev  # C: pesq
            chromium chromium-driver)  # the browser e2e test (tests/e2e/test_browser.py)
fi
# the @jambonz/sdk e2e app (tests/e2e/ws_apps) needs Node.js and npm (Node 18+)
if [ "$want_test" = 1 ] && ! command -v npm >/dev/null 2>&1; then apt_pkgs+=(nodejs npm); fi
if [ "$want_bench" = 1 ]; then apt_pkgs+=(sip-tester janus); fi

missing=()
for p in "${apt_pkgs[@]}"; do
  dpkg -s "$p" >/dev/null 2>&1 || missing+=("$p")
done
python3 -m venv --help >/dev/null 2>&1 || missing+=(python3-venv)
python3 -c 'import ensurepip' >/dev/null 2>&1 || missing+=(python3-venv)

if [ "${#missing[@]}" -gt 0 ]; then
  SUDO=""
  [ "$(id -u)" = 0 ] || SUDO="sudo"
  echo "setup: installing apt packages: ${missing[*]}"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${missing[@]}" >/dev/null
  # Debian enables and starts kamailio.service with its sample config on port 5060, where
  # `make run` puts confroom: a Kamailio installed here only for the tests stays off.
  if [[ " ${missing[*]} " == *" kamailio "* ]] && command -v systemctl >/dev/null \
      && [ -d /run/systemd/system ]; then
    $SUDO systemctl disable --now kamailio >/dev/null 2>&1 || true
  fi
fi

VENV="${VENV:-.venv}"
if [ ! -x "$VENV/bin/python" ]; then
  python3 -m venv "$VENV"
fi
extras=""
stamp="$VENV/.confroom-installed"
if [ "$want_test" = 1 ]; then
  extras="[test]"
  stamp="$stamp-test"
fi
if [ "$want_bench" = 1 ]; then
  stamp="$stamp-bench"
fi
# Reinstall only when the project's declared dependencies changed.
if [ ! -f "$stamp" ] || [ pyproject.toml -nt "$stamp" ] || [ bench/requirements.txt -nt "$stamp" ]; then
  "$VENV/bin/pip" install -q --upgrade pip >/dev/null
  "$VENV/bin/pip" install -q -e ".$extras"
  if [ "$want_bench" = 1 ]; then "$VENV/bin/pip" install -q -r bench/requirements.txt; fi
  touch "$stamp"
fi
# the unmodified jambonz npm SDK for the WebSocket-app e2e tests, from the committed lockfile
if [ "$want_test" = 1 ]; then
  ws_apps=tests/e2e/ws_apps
  if [ ! -d "$ws_apps/node_modules/@jambonz/sdk" ] || [ "$ws_apps/package-lock.json" -nt "$ws_apps/node_modules" ]; then
    (cd "$ws_apps" && npm ci --no-audit --no-fund --loglevel=error)
  fi
fi
