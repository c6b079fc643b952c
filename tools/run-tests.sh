#!/bin/bash
# THE test command: set up (packages, venv), make sure RabbitMQ runs, type
# check accel_daemon/ with mypy (settings: setup.cfg [mypy]), then run the
# unit and functional tests. Extra arguments go to pytest instead of the
# default test paths, e.g.  bash tools/run-tests.sh tests/unit -k conf
#
# A mypy failure fails the run, but the tests still run: both are reported
# and the exit status is non-zero if either failed.
#
# The last line printed is a plain "N passed, N failed, N skipped" summary
# read from pytest's junit XML report (kept in $ACCEL_TEST_RESULTS).
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
RESULTS=${ACCEL_TEST_RESULTS:-${TMPDIR:-/tmp}/accel-daemon-test-results}
cd "$ROOT"

bash tools/setup.sh
bash tools/rabbitmq.sh

mkdir -p "$RESULTS"
JUNIT=$RESULTS/junit.xml
rm -f "$JUNIT"
if [ $# -eq 0 ]; then
    set -- tests/unit tests/functional
fi

mypy_rc=0
.venv/bin/python -m mypy </dev/null || mypy_rc=$?
if [ $mypy_rc -ne 0 ]; then
    echo "run-tests: mypy failed (exit $mypy_rc); running the tests anyway" >&2
fi

rc=0
.venv/bin/python -m pytest -p no:cacheprovider -rfEs --timeout=900 \
    --junitxml="$JUNIT" "$@" </dev/null || rc=$?

if [ $rc -eq 5 ]; then
    # pytest's "no tests collected": a test command that tests nothing
    # must not pass.
    echo "run-tests: pytest collected no test" >&2
    rc=1
fi

# Before the summary, which stays the last line.
if [ $mypy_rc -ne 0 ]; then
    echo "run-tests: mypy failed (exit $mypy_rc), see its errors above" >&2
else
    echo "run-tests: mypy passed" >&2
fi

if [ -f "$JUNIT" ]; then
    .venv/bin/python - "$JUNIT" <<'EOF'
import sys
import xml.etree.ElementTree as ET

root = ET.parse(sys.argv[1]).getroot()
suites = [root] if root.tag == 'testsuite' else list(root)
count = {k: sum(int(s.get(k, 0)) for s in suites)
         for k in ('tests', 'failures', 'errors', 'skipped')}
failed = count['failures'] + count['errors']
passed = count['tests'] - failed - count['skipped']
print('junit report: %s' % sys.argv[1])
print('summary: %d passed, %d failed, %d skipped'
      % (passed, failed, count['skipped']))
EOF
fi
if [ $mypy_rc -ne 0 ] && [ $rc -eq 0 ]; then
    rc=$mypy_rc
fi
exit $rc
