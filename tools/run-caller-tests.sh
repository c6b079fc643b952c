#!/bin/bash
# Test against the real callers: build or refresh the cinder and nova venvs
# (tools/caller-venvs.sh), then run, each inside its venv with unittest
# (tests/callers/run.py):
#
#   cinder            tests/callers: accel_daemon.client + cinder's facts, the
#                     cinder accelerator (integrations.cinder), and cinder's
#                     own flows on the real daemon (test_flows_cinder*)
#   nova              tests/callers: accel_daemon.client + nova's facts,
#                     nova's convert_image (integrations.nova), and nova's
#                     own functions on the real daemon (test_flows_nova)
#   cinder-baseline   cinder's own unit tests of cinder.image
#   nova-baseline     nova's own unit tests of nova.virt.images,
#                     nova.privsep.qemu and the libvirt image helpers
#   cinder-installed  cinder-baseline's tests again, with the integration
#                     installed as accel-cinder-volume installs it and an
#                     in-process daemon answering (tests/callers/installed.py;
#                     expected failures listed in installed_cinder.py)
#   nova-installed    nova-baseline's tests again, the same way
#   cinder-switch     the accel-cinder-volume console script around cinder's
#                     real main(), and contrib/'s cinder patches
#   nova-switch       the accel-nova-compute console script around nova's
#                     real main()
#   cinder-27, cinder-28, nova-32, nova-33
#                     the older releases the integrations support
#                     (integrations.*.SUPPORTED), each in its own venv: the
#                     integration's tests, its flows on the real daemon and
#                     the console script (switch-on, and the refusal of
#                     another signature or release)
#
# Each suite writes $ACCEL_TEST_RESULTS/callers-SUITE.xml (JUnit, summed
# into tools/run-tests.sh's summary) and callers-SUITE.log (its stderr:
# the callers' warnings and logs). Exit status 1 if any suite failed.
#
# Usage: bash tools/run-caller-tests.sh [SUITE...]     (default: all)
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
RESULTS=${ACCEL_TEST_RESULTS:-${TMPDIR:-/tmp}/accel-daemon-test-results}
CACHE=${ACCEL_CALLER_VENVS:-/var/cache/accel-daemon/caller-venvs}
export ACCEL_CALLER_VENVS=$CACHE

log() { echo "run-caller-tests: $*" >&2; }

# suite -> "venv target..."
targets() {
    case $1 in
        cinder) echo "cinder test_accel_client test_cinder test_cinder_accel" \
                "test_cinder_convert test_flows_cinder" \
                "test_flows_cinder_down" ;;
        nova) echo "nova test_accel_client test_nova test_nova_convert" \
                "test_flows_nova" ;;
        cinder-baseline)
            echo "cinder cinder.tests.unit.image" \
                "cinder.tests.unit.test_image_utils" ;;
        nova-baseline)
            echo "nova nova.tests.unit.virt.test_images" \
                "nova.tests.unit.privsep.test_qemu" \
                "nova.tests.unit.virt.libvirt.test_utils" ;;
        cinder-installed) echo "cinder installed_cinder" ;;
        nova-installed) echo "nova installed_nova" ;;
        cinder-switch) echo "cinder test_switch_cinder test_cinder_contrib test_cinder_contrib_stream" ;;
        nova-switch) echo "nova test_switch_nova" ;;
        cinder-2[78]) echo "$1 test_cinder test_cinder_convert" \
                "test_flows_cinder test_flows_cinder_down test_switch_cinder" ;;
        nova-3[23]) echo "$1 test_nova test_nova_convert test_flows_nova" \
                "test_switch_nova" ;;
        *) log "unknown suite: $1"; return 2 ;;
    esac
}

run_suite() {
    local suite=$1 venv spec start=$SECONDS rc=0
    spec=$(targets "$suite")
    venv=${spec%% *}
    # shellcheck disable=SC2086  # one test target per word
    "$CACHE/$venv/bin/python" "$ROOT/tests/callers/run.py" \
        --suite "callers-$suite" --junit "$RESULTS/callers-$suite.xml" \
        ${spec#* } 2>"$RESULTS/callers-$suite.log" </dev/null || rc=$?
    if [ $rc -ne 0 ]; then
        log "$suite FAILED (exit $rc, $((SECONDS - start)) s);" \
            "stderr in $RESULTS/callers-$suite.log"
    else
        log "$suite passed ($((SECONDS - start)) s)"
    fi
    return $rc
}

main() {
    [ $# -gt 0 ] || set -- cinder nova cinder-baseline nova-baseline \
        cinder-installed nova-installed cinder-switch nova-switch \
        cinder-27 cinder-28 nova-32 nova-33
    local suite rc=0
    mkdir -p "$RESULTS" "$CACHE"
    # One run at a time on this machine: caller-venvs.sh may reinstall
    # accel-daemon into the shared venvs for this checkout.
    exec 9>"$CACHE/.lock"
    flock -w 1800 9
    export ACCEL_CALLER_VENVS_LOCKED=1
    # The venvs the suites asked for (each suite's first word).
    local venvs=() suite
    for suite in "$@"; do
        venvs+=("$(targets "$suite" | cut -d' ' -f1)")
    done
    mapfile -t venvs < <(printf '%s\n' "${venvs[@]}" | sort -u)
    bash "$ROOT/tools/caller-venvs.sh" "${venvs[@]}" >&2
    # The callers' tests may leave files in the working directory.
    WORKDIR=$(mktemp -d)
    trap 'rm -rf "$WORKDIR"' EXIT
    cd "$WORKDIR"
    for suite in "$@"; do
        rm -f "$RESULTS/callers-$suite.xml"
        run_suite "$suite" || rc=1
    done
    return $rc
}

main "$@"
