#!/bin/bash
# THE test command: set up (packages, venv), make sure RabbitMQ runs, type
# check accel_daemon/ with mypy (settings: setup.cfg [mypy]), run the unit
# and functional tests, then the tests against the real cinder and nova
# (tools/run-caller-tests.sh: their venvs are cached outside the checkout,
# the first build takes about a minute). Extra arguments go to pytest
# instead of the default test paths and skip the caller tests, e.g.
#   bash tools/run-tests.sh tests/unit -k conf
#
# A mypy failure fails the run, but the tests still run: all are reported
# and the exit status is non-zero if any failed.
#
# The last line printed is a plain "N passed, N failed, N skipped" summary
# read from the junit XML reports (kept in $ACCEL_TEST_RESULTS): pytest's
# and one per caller suite.
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
RESULTS=${ACCEL_TEST_RESULTS:-${TMPDIR:-/tmp}/accel-daemon-test-results}
cd "$ROOT"

bash tools/setup.sh
bash tools/rabbitmq.sh

mkdir -p "$RESULTS"
JUNIT=$RESULTS/junit.xml
rm -f "$JUNIT" "$RESULTS"/callers-*.xml
callers=0
if [ $# -eq 0 ]; then
    set -- tests/unit tests/functional
    callers=1
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

callers_rc=0
if [ $callers -eq 1 ]; then
    ACCEL_TEST_RESULTS=$RESULTS bash tools/run-caller-tests.sh ||
        callers_rc=$?
fi

# Before the summary, which stays the last line.
if [ $mypy_rc -ne 0 ]; then
    echo "run-tests: mypy failed (exit $mypy_rc), see its errors above" >&2
else
    echo "run-tests: mypy passed" >&2
fi
if [ $callers_rc -ne 0 ]; then
    echo "run-tests: caller tests failed (exit $callers_rc), see above" >&2
fi

if [ -f "$JUNIT" ]; then
    .venv/bin/python - "$JUNIT" "$RESULTS" <<'EOF'
import glob
import os
import sys
import xml.etree.ElementTree as ET

paths = [sys.argv[1]] + sorted(
    glob.glob(os.path.join(sys.argv[2], 'callers-*.xml')))
suites = []
for path in paths:
    root = ET.parse(path).getroot()
    suites += [root] if root.tag == 'testsuite' else list(root)
count = {k: sum(int(s.get(k, 0)) for s in suites)
         for k in ('tests', 'failures', 'errors', 'skipped')}
failed = count['failures'] + count['errors']
passed = count['tests'] - failed - count['skipped']
print('junit reports: %s' % ' '.join(paths))
print('summary: %d passed, %d failed, %d skipped'
      % (passed, failed, count['skipped']))
EOF
fi
if [ $mypy_rc -ne 0 ] && [ $rc -eq 0 ]; then
    rc=$mypy_rc
fi
if [ $callers_rc -ne 0 ] && [ $rc -eq 0 ]; then
    rc=$callers_rc
fi
exit $rc
