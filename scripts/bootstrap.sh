#!/usr/bin/env bash
# Set up everything Edgebridge needs on a fresh Debian machine, idempotently:
#   scripts/bootstrap.sh          Python venv with the bridge (for `make demo`)
#   scripts/bootstrap.sh --test   also the test tools: Debian chromium and mosquitto clients
set -euo pipefail
cd "$(dirname "$0")/.."

VENV=${VENV:-.venv}
PYTHON=${PYTHON:-python3}
want_test=false
[[ "${1:-}" == "--test" ]] && want_test=true

say() { printf '\033[1m==> %s\033[0m\n' "$*" >&2; }

apt_install() {
    local missing=()
    for pkg in "$@"; do
        dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" || missing+=("$pkg")
    done
    ((${#missing[@]})) || return 0
    say "installing Debian packages: ${missing[*]}"
    local sudo=""
    [[ $(id -u) -ne 0 ]] && sudo="sudo"
    $sudo apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
}

if $want_test; then
    # chromium: the browser tests (EventSource, the demo page); mosquitto(-clients): real MQTT
    # peers and the benchmark baseline; iproute2: `ss` for the listen-backlog test.
    apt_install chromium mosquitto mosquitto-clients iproute2
fi

if [[ ! -x "$VENV/bin/python" ]]; then
    say "creating the virtual environment in $VENV"
    "$PYTHON" -m venv "$VENV"
fi
stamp="$VENV/.installed-$(cat pyproject.toml | sha1sum | cut -c1-12)$($want_test && echo -test || true)"
if [[ ! -f "$stamp" ]]; then
    say "installing Python packages (pyproject.toml; a minute on a fresh machine)"
    extras=""
    $want_test && extras="[test]"
    # The build backend's notices (editable install, deprecations) are noise for a newcomer:
    # kept in a log, shown only when the install fails.
    log="$VENV/install.log"
    if ! { "$VENV/bin/python" -m pip install -q --upgrade pip &&
           "$VENV/bin/python" -m pip install -q -e ".$extras"; } >"$log" 2>&1; then
        cat "$log" >&2
        say "installing the Python packages failed (the log is above, and in $log)"
        exit 1
    fi
    touch "$stamp"
fi
