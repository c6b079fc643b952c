# SPDX-License-Identifier: Apache-2.0
"""Run unittest tests in this interpreter (a caller venv); write JUnit XML.

    python tests/callers/run.py --suite NAME --junit FILE TARGET...

A TARGET is a test module, or a package whose ``test*.py`` modules are all
run (unittest discovery), e.g. ``cinder.tests.unit.image``.  This
directory is put first on ``sys.path`` so its own modules (``test_cinder``)
are targets too; the checkout's root is not, so ``accel_daemon`` is the copy
installed in the venv.  Standard library only: the caller venvs have no
pytest, and cinder's and nova's tests are meant for unittest or stestr.

Exit status 0 when every test passed or was skipped, else 1.  The report
feeds the summary line of tools/run-tests.sh.
"""

import argparse
import importlib
import os
import sys
import time
import unittest
from xml.etree import ElementTree as ET

HERE = os.path.dirname(os.path.abspath(__file__))


def load(target):
    try:
        module = importlib.import_module(target)
    except Exception:
        # unittest turns the import error into a failing test.
        return unittest.defaultTestLoader.loadTestsFromName(target)
    if not hasattr(module, '__path__'):
        return unittest.defaultTestLoader.loadTestsFromModule(module)
    # The folder that holds the top-level package of the target.
    top = os.path.dirname(module.__path__[0])
    for _ in range(target.count('.')):
        top = os.path.dirname(top)
    return unittest.defaultTestLoader.discover(
        module.__path__[0], pattern='test*.py', top_level_dir=top)


class Result(unittest.TextTestResult):
    """Keeps each test's outcome and time for the report."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.cases = []

    def startTest(self, test):
        self._started = time.monotonic()
        super().startTest(test)

    def _record(self, test, outcome, text=''):
        self.cases.append((test.id(), outcome, text,
                           time.monotonic() - self._started))

    def addSuccess(self, test):
        super().addSuccess(test)
        self._record(test, 'passed')

    def addFailure(self, test, err):
        super().addFailure(test, err)
        self._record(test, 'failure', self.failures[-1][1])

    def addError(self, test, err):
        super().addError(test, err)
        self._record(test, 'error', self.errors[-1][1])

    def addSubTest(self, test, subtest, err):
        super().addSubTest(test, subtest, err)
        if err is not None:
            if issubclass(err[0], test.failureException):
                self._record(subtest, 'failure', self.failures[-1][1])
            else:
                self._record(subtest, 'error', self.errors[-1][1])

    def addSkip(self, test, reason):
        super().addSkip(test, reason)
        self._record(test, 'skipped', reason)

    def addExpectedFailure(self, test, err):
        super().addExpectedFailure(test, err)
        self._record(test, 'skipped', 'expected failure')

    def addUnexpectedSuccess(self, test):
        super().addUnexpectedSuccess(test)
        self._record(test, 'failure', 'unexpected success: the expected '
                     'failure is gone; drop @expectedFailure')


# outcome -> (JUnit element, counter on <testsuite>)
TAGS = {'failure': ('failure', 'failures'), 'error': ('error', 'errors'),
        'skipped': ('skipped', 'skipped')}


def write_junit(path, suite_name, cases, seconds):
    counts = {'tests': len(cases), 'failures': 0, 'errors': 0, 'skipped': 0}
    suite = ET.Element('testsuite', name=suite_name, time='%.3f' % seconds)
    for test_id, outcome, text, took in cases:
        classname, _, name = test_id.rpartition('.')
        case = ET.SubElement(suite, 'testcase', classname=classname,
                             name=name, time='%.3f' % took)
        if outcome in TAGS:
            tag, counter = TAGS[outcome]
            counts[counter] += 1
            lines = text.splitlines()
            ET.SubElement(case, tag,
                          message=lines[-1] if lines else '').text = text
    for key, value in counts.items():
        suite.set(key, str(value))
    root = ET.Element('testsuites')
    root.append(suite)
    ET.ElementTree(root).write(path, encoding='unicode')


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('--suite', required=True)
    parser.add_argument('--junit', required=True)
    parser.add_argument('targets', nargs='+')
    args = parser.parse_args()
    sys.path.insert(0, HERE)
    tests = unittest.TestSuite(load(t) for t in args.targets)
    runner = unittest.TextTestRunner(stream=sys.stdout, resultclass=Result)
    start = time.monotonic()
    result = runner.run(tests)
    write_junit(args.junit, args.suite, result.cases,
                time.monotonic() - start)
    return 0 if result.wasSuccessful() else 1


if __name__ == '__main__':
    sys.exit(main())
