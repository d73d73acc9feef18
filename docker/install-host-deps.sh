#!/bin/sh
# Debian packages rxpath uses on the host: tshark (reads the wire captures in the tests),
# iproute2 (`ip netns`, `ss`: the namespace and TUN device of [[linux_senders]] runs),
# netcat-openbsd (`nc`: the command sender of configs/linux-sender-file.toml),
# chromium (renders `rxpath report`'s page headless in tests/test_report_pictures.py).
# Idempotent: installs only what is missing. Needs root (or sudo) when something is missing.
set -eu

missing=""
command -v tshark >/dev/null 2>&1 || missing="$missing tshark"
{ command -v ip && command -v ss; } >/dev/null 2>&1 || missing="$missing iproute2"
command -v nc >/dev/null 2>&1 || missing="$missing netcat-openbsd"
command -v chromium >/dev/null 2>&1 || missing="$missing chromium"

[ -z "$missing" ] && exit 0

SUDO=""
if [ "$(id -u)" != 0 ]; then
    if command -v sudo >/dev/null 2>&1; then SUDO="sudo"; else
        echo "install-host-deps: need root to install:$missing" >&2
        exit 1
    fi
fi
export DEBIAN_FRONTEND=noninteractive
# tshark's package asks whether non-root users may capture; we only read files.
echo "wireshark-common wireshark-common/install-setuid boolean false" | $SUDO debconf-set-selections
$SUDO apt-get update -qq
# shellcheck disable=SC2086
$SUDO apt-get install -y -qq --no-install-recommends $missing >/dev/null
echo "install-host-deps: installed$missing"
