#!/usr/bin/env bash
# What the test suite needs beyond services.sh: Debian's chromium and chromium-driver for the
# browser tests (the tests never download a browser), and libfaketime (package faketime) to run
# workers with a clock skewed against the database's, and promtool for the alert rules.
# Idempotent.
set -euo pipefail
SUDO=""; [ "$(id -u)" -eq 0 ] || SUDO="sudo"
missing=()
command -v chromium >/dev/null 2>&1 || missing+=(chromium)
command -v chromedriver >/dev/null 2>&1 || missing+=(chromium-driver)
command -v faketime >/dev/null 2>&1 || missing+=(faketime)
# promtool (Debian ships it in the prometheus package) checks and unit-tests the alert rules of
# deploy/observability. The Prometheus server that comes with it is neither started nor enabled.
command -v promtool >/dev/null 2>&1 || missing+=(prometheus)
if [ ${#missing[@]} -gt 0 ]; then
  echo "[test-deps] installing ${missing[*]}" >&2
  policy=/usr/sbin/policy-rc.d
  made_policy=""
  if [ ! -e "$policy" ]; then  # no service starts during this install
    printf '#!/bin/sh\nexit 101\n' | $SUDO tee "$policy" >/dev/null
    $SUDO chmod 755 "$policy"
    made_policy=1
  fi
  $SUDO env DEBIAN_FRONTEND=noninteractive apt-get -o DPkg::Lock::Timeout=600 update -qq
  $SUDO env DEBIAN_FRONTEND=noninteractive apt-get -o DPkg::Lock::Timeout=600 install -y -qq --no-install-recommends \
    "${missing[@]}" >/dev/null
  [ -z "$made_policy" ] || $SUDO rm -f "$policy"
  if command -v systemctl >/dev/null 2>&1 && [ -d /run/systemd/system ]; then
    $SUDO systemctl disable --now prometheus >/dev/null 2>&1 || true
  fi
fi
