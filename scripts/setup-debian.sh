#!/usr/bin/env bash
# Install the Debian packages VisNet needs (images for the demo set, an SVG renderer, Chromium for
# the browser tests). Idempotent: installs only what is missing; as non-root it says what to run.
set -euo pipefail

PACKAGES=(openclipart-png tuxpaint-stamps-default mate-backgrounds librsvg2-bin chromium)

missing=()
for pkg in "${PACKAGES[@]}"; do
  dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" || missing+=("$pkg")
done
[ ${#missing[@]} -eq 0 ] && exit 0

if [ "$(id -u)" -eq 0 ] && command -v apt-get >/dev/null; then
  echo "installing Debian packages: ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
else
  echo "VisNet needs these Debian packages: ${missing[*]}" >&2
  echo "install them with: sudo apt-get install -y ${missing[*]}" >&2
  exit 1
fi
