#!/usr/bin/env bash
# System packages the test suite drives for real: Debian's Chromium (the MLflow UI test) and
# PostgreSQL (the team tracking-server test). Installs what is missing when run as root with
# apt-get; otherwise says what is missing (those tests then skip, naming it, or fail under
# IMGCLF_REQUIRE_SYSTEM_DEPS=1, as in CI).
set -euo pipefail
need=()
command -v chromium >/dev/null 2>&1 || need+=(chromium)
compgen -G "/usr/lib/postgresql/*/bin/initdb" >/dev/null || need+=(postgresql)
[ ${#need[@]} -eq 0 ] && exit 0
if [ "$(id -u)" != 0 ] || ! command -v apt-get >/dev/null 2>&1; then
  echo "warning: missing system packages: ${need[*]} (install them as root: apt-get install -y ${need[*]})" >&2
  exit 0
fi
echo "installing ${need[*]} ..."
apt-get update -qq
DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
