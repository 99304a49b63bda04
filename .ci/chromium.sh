#!/usr/bin/env bash
# Install Debian's headless Chromium for the slow browser test of `bench ui`, when it is missing.
# Exits 0 either way: without Chromium that test skips with its reason.
set -u
command -v chromium >/dev/null 2>&1 && exit 0
(apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium) >/dev/null 2>&1 || true
exit 0
