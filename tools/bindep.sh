#!/bin/bash
# Install the Debian packages bindep.txt lists, without the bindep tool.
#
#   bash tools/bindep.sh [PROFILE...]     e.g. "compile test", or none
#
# Entries without a profile are always taken; entries with profiles only
# when one is given; entries for other platforms never. `apt-get update`
# runs once, and only when a package is missing. Sourced by setup.sh and
# install.sh for bindep_packages / install_debs.
set -euo pipefail

BINDEP_FILE=${BINDEP_FILE:-$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)/bindep.txt}

_bindep_log() { echo "bindep: $*" >&2; }

_as_root() {
    if [ "$(id -u)" -eq 0 ]; then
        "$@"
    elif command -v sudo >/dev/null; then
        sudo -n "$@"
    else
        _bindep_log "need root (or sudo) to run: $*"
        return 1
    fi
}

# Print the package names selected for the profiles given as arguments.
bindep_packages() {
    local profiles=" $* " line name spec tok platform_ok has_profile wanted
    while IFS= read -r line; do
        line=${line%%#*}
        read -r name spec <<<"$line" || true
        [ -n "$name" ] || continue
        spec=${spec#[}; spec=${spec%]}
        platform_ok=1; has_profile=0; wanted=0
        for tok in $spec; do
            case $tok in
                platform:dpkg|platform:debian) ;;
                platform:*) platform_ok=0 ;;
                !*) [[ $profiles == *" ${tok#!} "* ]] && platform_ok=0 ;;
                *) has_profile=1
                   [[ $profiles == *" $tok "* ]] && wanted=1 ;;
            esac
        done
        if [ $platform_ok = 1 ] && { [ $has_profile = 0 ] || [ $wanted = 1 ]; }
        then
            echo "$name"
        fi
    done <"$BINDEP_FILE"
}

_is_installed() {
    dpkg-query -W -f='${Status}' "$1" 2>/dev/null | grep -q 'install ok installed'
}

# Install the named packages that are missing.
install_debs() {
    local missing=() pkg
    for pkg in "$@"; do
        _is_installed "$pkg" || missing+=("$pkg")
    done
    [ ${#missing[@]} -gt 0 ] || return 0
    _bindep_log "installing Debian packages: ${missing[*]}"
    _as_root apt-get update -qq
    _as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq \
        --no-install-recommends "${missing[@]}" >/dev/null
}

if [ "${BASH_SOURCE[0]}" = "$0" ]; then
    # shellcheck disable=SC2046  # one package name per word
    install_debs $(bindep_packages "$@")
fi
