# SPDX-License-Identifier: Apache-2.0
"""A caller's own unit tests, run with accel-daemon's integration installed
and a daemon answering (suites ``cinder-installed`` and
``nova-installed``; the targets ``installed_cinder`` and
``installed_nova``).

``suite()`` builds, in this order:

1. the caller's test package is imported first (its ``__init__`` chooses
   the concurrency model, as the service's command module does);
2. an in-process daemon (``inprocess.Daemon``: the real endpoint, task
   manager, backend and engine) is started, and the integration's shared
   client -- the one every ``convert_image`` call and every ``DaemonAccel``
   cinder builds without arguments uses -- is a client of it.  The
   integration is live: it asks the daemon for its capabilities and falls
   back to the caller's own code only for the reasons it would in
   production (paths outside the daemon's directory, URIs, encryption...),
   never because nothing answers;
3. the integration is installed by the same ``install()`` the console
   script runs (``accel_daemon.cmd.cinder_volume`` / ``.nova_compute``);
4. the caller's tests, between the target module's checks: first that
   the integration is installed and the daemon answers, last the same
   and that the caller's tests did go through the integration, which
   never fell back for want of an answer.

Tests that cannot pass with the integration installed are listed in the
target module's ``EXPECTED_FAILURES``: test id -> (reason, a text its
error must contain).  They still run: one that fails with that text is
reported as skipped with "expected failure: REASON" and the last line of
its error in the JUnit report; one that fails otherwise is a failure; one
that passes fails the suite as an unexpected success (the entry must go);
an entry that names no test fails too.
"""

from __future__ import annotations

import atexit
import dataclasses
import importlib
import shutil
import sys
import tempfile
import unittest
from typing import Any, Callable, Optional

import inprocess
import run

_daemons: list[inprocess.Daemon] = []


def start_daemon(prefix: str) -> inprocess.Daemon:
    """The daemon shares the process with the caller's tests, whose
    fixtures may forbid what a separate daemon does freely: nova's
    SysFsPoisonFixture fails any os.listdir/open of a /sys path, which
    the daemon's QAT probe (its capabilities) reads.  Its sysfs is an
    empty directory of its own (no accelerator, as on this host)."""
    sysfs = tempfile.mkdtemp(prefix=prefix + '-sysfs-')
    atexit.register(shutil.rmtree, sysfs, ignore_errors=True)
    daemon = inprocess.Daemon(prefix, sysfs_root=sysfs).start()
    _daemons.append(daemon)
    atexit.register(daemon.stop)
    return daemon


class ExpectedFailure(unittest.TestCase):
    """Runs ``test`` into a result of its own and reports its failure as
    a skip with ``reason``; a pass is an unexpected success."""

    def __init__(self, test: unittest.TestCase, reason: str,
                 text: str) -> None:
        super().__init__('runTest')
        self.test = test
        self.reason = reason
        self.text = text

    def id(self) -> str:
        return self.test.id()

    def __str__(self) -> str:
        return str(self.test)

    def runTest(self) -> None:
        raise AssertionError('run() reports this case')

    def run(self, result: Any = None) -> Any:
        private = unittest.TestResult()
        self.test.run(private)
        problems = private.failures + private.errors
        result.startTest(self)
        try:
            if problems and all(self.text in p[1] for p in problems):
                last = problems[-1][1].strip().splitlines()[-1]
                result.addSkip(self, 'expected failure: %s (%s)'
                               % (self.reason, last))
            elif problems:
                result.addFailure(self, (AssertionError, AssertionError(
                    'expected to fail with %r (%s), failed otherwise:\n%s'
                    % (self.text, self.reason, problems[-1][1])), None))
            elif private.skipped:
                result.addSkip(self, private.skipped[-1][1])
            else:
                result.addUnexpectedSuccess(self)
        finally:
            result.stopTest(self)
        return result


def _flatten(suite: unittest.TestSuite) -> list[unittest.TestCase]:
    tests: list[unittest.TestCase] = []
    for item in suite:
        if isinstance(item, unittest.TestSuite):
            tests.extend(_flatten(item))
        else:
            tests.append(item)
    return tests


class _Missing(unittest.TestCase):
    """An EXPECTED_FAILURES entry that names no test."""

    def __init__(self, name: str) -> None:
        super().__init__('runTest')
        self.name = name

    def id(self) -> str:
        return 'installed.expected_failures.%s' % self.name

    def runTest(self) -> None:
        self.fail('EXPECTED_FAILURES names %s, which is not a test of the '
                  'suite: remove the entry' % self.name)


def suite(test_package: str, targets: tuple[str, ...],
          expected: dict[str, tuple[str, str]],
          first: type[unittest.TestCase], last: type[unittest.TestCase],
          setup: Callable[[], None]) -> unittest.TestSuite:
    importlib.import_module(test_package)
    setup()
    tests = []
    for target in targets:
        tests.extend(_flatten(run.load(target)))
    found = set()
    wrapped: list[unittest.TestCase] = []
    for test in tests:
        entry = expected.get(test.id())
        if entry is None:
            wrapped.append(test)
        else:
            found.add(test.id())
            wrapped.append(ExpectedFailure(test, *entry))
    loader = unittest.defaultTestLoader
    missing = [_Missing(name) for name in sorted(set(expected) - found)]
    return unittest.TestSuite([loader.loadTestsFromTestCase(first)] +
                              wrapped + missing +
                              [loader.loadTestsFromTestCase(last)])


NO_ANSWER = 'a daemon that does not answer'


def assert_used(case: unittest.TestCase, fallbacks: set[str]) -> None:
    """The caller's tests called the integration's convert_image (each
    fallback reason is logged once, in ``fallbacks``), and none of those
    calls fell back because the daemon did not answer."""
    case.assertTrue(fallbacks, 'convert_image was never called')
    case.assertNotIn(NO_ANSWER, fallbacks)
    sys.stderr.write('\nconvert_image fell back for: %s\n'
                     % '; '.join(sorted(fallbacks)))


def _no_check(case: unittest.TestCase, integration: Any) -> None:
    pass


@dataclasses.dataclass
class Service:
    """What differs between the ``installed_*`` targets: the caller's test
    package, the integration, the command module whose ``install()`` the
    console script runs, the caller's function the integration replaces
    (``module``, ``attribute``), and a check of its own that the
    integration is live."""

    prefix: str
    test_package: str
    integration: str
    command: str
    replaced: tuple[str, str]
    check: Callable[[unittest.TestCase, Any], None] = _no_check
    daemon: Optional[inprocess.Daemon] = None

    def setup(self) -> None:
        integration = importlib.import_module(self.integration)
        self.daemon = start_daemon(self.prefix)
        # The daemon is on oslo.messaging's fake transport: only a client
        # built on it reaches it.
        integration._shared.client = self.daemon.client()
        importlib.import_module(self.command).install()

    def live_cases(self) -> tuple[type[unittest.TestCase],
                                  type[unittest.TestCase]]:
        """The first and last checks around the caller's tests."""
        service = self

        class IntegrationIsLive(unittest.TestCase):
            """The integration is in place and its daemon answers."""

            def test_installed_and_answering(self) -> None:
                integration = importlib.import_module(service.integration)
                module, name = service.replaced
                self.assertIs(getattr(importlib.import_module(module), name),
                              integration.convert_image)
                service.check(self, integration)
                caps = integration.shared_client().capabilities()
                assert service.daemon is not None
                self.assertEqual(caps['allowed_dirs'],
                                 [service.daemon.images])

        class IntegrationWasUsed(IntegrationIsLive):
            """Last: still live, and the caller's tests went through it."""

            def test_used_and_never_without_an_answer(self) -> None:
                integration = importlib.import_module(service.integration)
                assert_used(self, integration._fallbacks_logged)

        return IntegrationIsLive, IntegrationWasUsed

    def suite(self, targets: tuple[str, ...],
              expected: dict[str, tuple[str, str]]) -> unittest.TestSuite:
        first, last = self.live_cases()
        return suite(self.test_package, targets, expected, first, last,
                     self.setup)
