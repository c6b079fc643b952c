# SPDX-License-Identifier: Apache-2.0
"""accel-image: the operators' command line (a cliff application).

By default it talks to the accel-daemon of this host (or ``--host``) over
RPC; ``--local`` runs the engine in this process instead.  Every error is
one line on stderr (``accel-image: Type: message``) and a non-zero exit:
1 for errors, 2 for a bad command line, 130 when interrupted, 141 (quietly)
when the reader of its output went away.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import math
import os
import sys
import time
from typing import Any, Iterator, NoReturn, TextIO

from cliff import app as cliff_app
from cliff import commandmanager
from oslo_config import cfg

from accel_daemon.cmd.cli import broker
from accel_daemon.cmd.cli import process_started
from accel_daemon.cmd.cli import usage
from accel_daemon.cmd import privsep_helper
from accel_daemon import exception

# The clock of --timeout starts when the process started.
STARTED = process_started()
NAME = usage.NAME
NAMESPACE = 'accel_daemon.cli'
EXIT_ERROR = 1
EXIT_USAGE = 2
EXIT_INTERRUPTED = 130
EXIT_BROKEN_PIPE = 141
DEFAULT_TIMEOUT = 20.0
FORMATS = ('table', 'json', 'value', 'yaml', 'csv', 'shell')


def version() -> str:
    try:
        from importlib import metadata
        return metadata.version('accel-daemon')
    except Exception:   # an uninstalled checkout
        return 'unknown'


# Defined in ``usage`` (which ``base`` uses too); here for the callers that
# know them as the application's.
UsageError = usage.UsageError
OneLineParser = usage.OneLineParser
one_line_errors = usage.one_line_errors


def say(stream: TextIO, message: str) -> None:
    """The one line of an error."""
    stream.write('%s: %s\n' % (NAME, ' '.join(str(message).split())))
    stream.flush()


class CommandManager(commandmanager.CommandManager):
    """cliff's command manager, loading a command's module only when that
    command runs.  cliff 4.17 hands the namespace to stevedore, which
    imports every command module up front, and with them the operation
    table and the engine: a tenth of a second for each ``--version`` or
    ``help``.  Here each name maps to its entry point, which
    ``find_command`` loads."""

    def load_commands(self, namespace: str) -> None:
        from importlib import metadata
        self.group_list.append(namespace)
        for ep in metadata.entry_points(group=namespace):
            name = ep.name.replace('_', ' ') if self.convert_underscores \
                else ep.name
            self.commands[name] = ep


class AccelImage(cliff_app.App):
    """accel-image: convert, compress and decompress disk images through
    accel-daemon."""

    NAME = NAME

    def __init__(self, conf: cfg.ConfigOpts | None = None,
                 transport: Any = None, backend: Any = None,
                 started: float | None = None) -> None:
        super().__init__(
            description=(self.__doc__ or '').split('\n\n')[0].strip(),
            version=version(),
            command_manager=CommandManager(NAMESPACE),
            deferred_help=True)
        self._conf = conf
        self._transport = transport
        self._backend: Any = backend
        self._own_backend = backend is None
        self.conf: cfg.ConfigOpts | None = None
        self._started = time.monotonic() if started is None else started
        self._answered = False
        self._log_state: tuple[int, logging.Handler | None] = (
            logging.getLogger().level, None)
        # What the command raised (cliff's run_subcommand only logs it).
        self.errors: list[BaseException] = []

    # -- options --------------------------------------------------------
    def build_option_parser(self, description: str | None,
                            version: str | None,
                            argparse_kwargs: dict[str, Any] | None = None
                            ) -> argparse.ArgumentParser:
        p = OneLineParser(prog=NAME, description=description,
                          add_help=False, allow_abbrev=False,
                          **(argparse_kwargs or {}))
        p.add_argument('--version', action='version',
                       version='%s %s' % (NAME, version))
        p.add_argument('-h', '--help', dest='deferred_help',
                       action='store_true', help='show help and exit')
        p.add_argument('--config-file', action='append', default=[],
                       metavar='PATH',
                       help='oslo.config file (repeatable); default: '
                            '/etc/accel-daemon/accel-daemon.conf when '
                            'present')
        p.add_argument('--host', help='daemon host to talk to (default: '
                                      'this one)')
        p.add_argument('--local', action='store_true',
                       help='run the engine in this process, not via the '
                            'daemon (as root)')
        p.add_argument('--timeout', type=float, default=DEFAULT_TIMEOUT,
                       metavar='SECONDS',
                       help='give up on the broker or the daemon after '
                            'this long without an answer (default %g)'
                            % DEFAULT_TIMEOUT)
        p.add_argument('--wait-timeout', type=float, default=0,
                       metavar='SECONDS',
                       help='stop waiting for a task after this long (0, '
                            'the default: no limit); the daemon\'s task '
                            'goes on, a --local one is cancelled')
        p.add_argument('--no-wait', action='store_true',
                       help='show the task as soon as it is queued')
        p.add_argument('--progress', action=argparse.BooleanOptionalAction,
                       default=None,
                       help='progress bar on stderr (default: when stderr '
                            'is a terminal)')
        p.add_argument('-f', '--format', dest='formatter', choices=FORMATS,
                       help='output format (default: table)')
        p.add_argument('--json', action='store_true',
                       help='the same as -f json')
        p.add_argument('-c', '--column', dest='columns', action='append',
                       default=[], metavar='COLUMN',
                       help='show this column (repeatable)')
        p.add_argument('-v', '--verbose', action='count',
                       dest='verbose_level', default=0,
                       help='log more (repeatable)')
        p.add_argument('--debug', action='store_true',
                       help='log everything, show tracebacks')
        p.set_defaults(log_file=None)
        return p

    def configure_logging(self) -> None:
        """No log lines by default: an error is the command's one line,
        and the libraries' retries and warnings would add to it.  -v shows
        INFO and up, -vv or --debug everything."""
        if self.options.debug or self.options.verbose_level > 1:
            level = logging.DEBUG
        elif self.options.verbose_level == 1:
            level = logging.INFO
        else:
            level = logging.CRITICAL + 1
        root = logging.getLogger()
        self._log_state = (root.level, None)
        root.setLevel(level)
        handler = logging.StreamHandler(self.stderr)
        handler.setFormatter(logging.Formatter(
            '%s: %%(levelname)s %%(name)s: %%(message)s' % NAME))
        handler.setLevel(level)
        root.addHandler(handler)
        self._log_state = (self._log_state[0], handler)

    def unconfigure_logging(self) -> None:
        """Undo ``configure_logging`` (main() run in-process, by tests)."""
        level, handler = self._log_state
        root = logging.getLogger()
        root.setLevel(level)
        if handler is not None:
            root.removeHandler(handler)

    # -- running --------------------------------------------------------
    def initialize_app(self, argv: list[str]) -> None:
        if argv and argv[0] in ('help', 'complete'):
            return
        # An unknown command is a usage error, before any configuration is
        # read or library loaded for it.
        self.check_command(argv)
        self.conf = load_conf(self.options.config_file, self._conf)

    def progress_wanted(self) -> bool | None:
        """None: decided by the terminal."""
        return self.options.progress

    def time_left(self) -> float:
        """Seconds this call may take: ``--timeout``, less the time spent
        so far until the daemon has answered once (so that a broker or
        daemon that never answers fails the command within --timeout)."""
        timeout = self.options.timeout
        if self._answered:
            return timeout
        # Less a moment to say so and exit (about 0.2 s: the interpreter's
        # shutdown).
        return max(0.05, timeout - (time.monotonic() - self._started) - 0.3)

    @contextlib.contextmanager
    def guard(self, what: str) -> Iterator[None]:
        """Bound one call to the daemon (see ``broker.Deadline``)."""
        with broker.Deadline(self.time_left(), what,
                             lambda line: say(self.stderr, line),
                             shown=self.options.timeout):
            yield
        self._answered = True

    def backend(self) -> Any:
        if self._backend is None:
            self._backend = self._make_backend()
        return self._backend

    def _make_backend(self) -> Any:
        _threading_backend()
        from accel_daemon.cmd.cli import base
        conf = self.conf
        assert conf is not None  # nosec B101: initialize_app loaded it
        if self.options.local:
            from accel_daemon import conf as accel_conf
            from accel_daemon.engine.engine import Engine
            return base.Local(Engine(accel_conf.settings(conf)))
        timeout = self.options.timeout
        from accel_daemon import client as client_mod
        client_mod.register_opts(conf)
        # The answer to one call may not take longer than --timeout: the
        # RPC timeout (whole seconds) comes a little before the deadline.
        conf.set_override('timeout', max(1, math.ceil(timeout * 0.8)),
                          group='accel_daemon_client')
        if self._transport is None:
            broker.check(broker.broker_hosts(conf), self.time_left())
        with broker.Deadline(self.time_left(), 'the message broker',
                             lambda line: say(self.stderr, line)):
            client = client_mod.AccelClient(conf, host=self.options.host,
                                            transport=self._transport)
        # How often a waiting command asks for the task's progress.
        step = max(0.1, min(0.25, timeout / 4))
        remote = base.Remote(client, self.guard, step,
                             'the daemon on host %s' % client.host)
        return remote

    def clean_up(self, cmd: Any, result: int,
                 err: BaseException | None) -> None:
        if err is not None:
            self.errors.append(err)
        backend = self._backend
        if self._own_backend:
            self._backend = None
        if backend is not None and self._own_backend:
            with broker.Deadline(self.options.timeout, 'the message broker',
                                 lambda line: say(self.stderr, line)):
                backend.close()

    def check_command(self, argv: list[str]) -> None:
        """A UsageError for a command that does not exist."""
        try:
            self.command_manager.find_command(argv)
        except ValueError:
            matches = [m for m in self.get_fuzzy_matches(argv[0])
                       if m[:2] == argv[0][:2]]
            hint = (' (did you mean %s?)' % ' or '.join(matches[:3])
                    if matches else '')
            raise UsageError('unknown command %r%s; see %s help'
                             % (' '.join(argv), hint, NAME))

    def run_subcommand(self, argv: list[str]) -> int:
        self.check_command(argv)
        return super().run_subcommand(argv)


def load_conf(files: list[str], conf: cfg.ConfigOpts | None = None
              ) -> cfg.ConfigOpts:
    """The configuration, from ``files`` or the default file; any problem
    with a file is a ``ConfigError`` naming it."""
    # The client's modules import oslo.messaging: oslo.service's
    # threading backend first.
    _threading_backend()
    from accel_daemon import conf as accel_conf
    if conf is None:
        conf = cfg.ConfigOpts()
        accel_conf.register_opts(conf)
        from accel_daemon import client as client_mod
        client_mod.register_opts(conf)
        args: list[str] = []
        for f in files:
            args += ['--config-file', os.path.abspath(f)]
        try:
            conf(args, project='accel-daemon', prog=NAME,
                 default_config_files=[] if files else None,
                 use_env=False)
        except cfg.ConfigFilesNotFoundError as e:
            raise ConfigError(_files_problem(e.config_files, 'not found'))
        except cfg.ConfigFilesPermissionDeniedError as e:
            raise ConfigError(_files_problem(e.config_files,
                                             'permission denied'))
        except cfg.ConfigFileParseError as e:
            raise ConfigError('cannot parse config file %s: %s'
                              % (e.config_file, e.msg))
        except cfg.Error as e:
            raise ConfigError(str(e))
    return conf


def _files_problem(files: Any, why: str) -> str:
    return 'cannot read config file %s: %s' % (
        ', '.join(files or ()) or '?', why)


class ConfigError(Exception):
    """A configuration file that is missing, unreadable or malformed, or a
    value in it that is not valid."""


def _threading_backend() -> None:
    """A command line never runs green threads: pick oslo.service's
    threading backend before oslo.messaging is imported (it otherwise loads
    the deprecated eventlet backend and warns on every call).  Only the
    commands that talk to the daemon or run the engine get here: loading
    the backend imports futurist and eventlet, a third of a second that
    ``--version``, ``--help`` and a bad command line do without."""
    from oslo_service import backend
    from oslo_service.backend import exceptions
    try:
        backend.init_backend(backend.BackendType.THREADING)
    except exceptions.BackendAlreadySelected:
        pass


def _quiet_stdout() -> None:
    """After a broken pipe: send what is still buffered nowhere, so that
    the interpreter's last flush does not complain."""
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)
    except (OSError, ValueError, AttributeError):
        pass


def main(argv: list[str] | None = None, conf: cfg.ConfigOpts | None = None,
         transport: Any = None, stdout: TextIO | None = None,
         stderr: TextIO | None = None, backend: Any = None) -> int:
    """Run accel-image; returns its exit status.  ``conf``, ``transport``
    and ``backend`` are for tests (an in-process daemon on ``fake://``, or
    a stand-in for the daemon)."""
    privsep_helper.without_green_threads()
    app = AccelImage(conf=conf, transport=transport, backend=backend,
                     started=STARTED if argv is None else None)
    app.stdout = stdout or sys.stdout
    app.stderr = stderr or sys.stderr
    err = app.stderr
    argv = list(sys.argv[1:] if argv is None else argv)
    try:
        return run(app, argv)
    except UsageError as e:
        say(err, 'error: %s' % e)
        return EXIT_USAGE
    except BrokenPipeError:
        if app.stdout is sys.stdout:
            _quiet_stdout()
        return EXIT_BROKEN_PIPE
    except KeyboardInterrupt:
        say(err, 'interrupted')
        return EXIT_INTERRUPTED
    finally:
        app.unconfigure_logging()


def run(app: AccelImage, argv: list[str]) -> int:
    """cliff's App.run, with every failure turned into one line."""
    try:
        app.options, remainder = app.parser.parse_known_args(argv)
    except SystemExit as e:        # --version
        return int(e.code or 0)
    app.configure_logging()
    if not remainder:
        if app.options.deferred_help:
            remainder = ['help']
        else:
            raise UsageError('a command is required; see %s help' % NAME)
    elif app.options.deferred_help:
        remainder = ['help'] + remainder
    app.interactive_mode = False
    try:
        app.initialize_app(remainder)
        return _run_command(app, remainder)
    except exception.AccelError as e:
        if app.options.debug:
            logging.getLogger(NAME).exception('%s', e)
        say(app.stderr, '%s: %s' % (type(e).__name__, e.message))
        return EXIT_ERROR
    except ConfigError as e:
        if app.options.debug:
            logging.getLogger(NAME).exception('%s', e)
        say(app.stderr, 'ConfigError: %s' % e)
        return EXIT_ERROR
    except OSError as e:
        if isinstance(e, BrokenPipeError):
            raise
        if app.options.debug:
            logging.getLogger(NAME).exception('%s', e)
        say(app.stderr, str(e))
        return EXIT_ERROR


def _run_command(app: AccelImage, argv: list[str]) -> int:
    """cliff's run_subcommand logs a command's error itself: silence that
    and raise it, to print it as one line."""
    logger = app.LOG
    disabled = logger.disabled
    logger.disabled = True
    try:
        result = app.run_subcommand(argv)
    finally:
        logger.disabled = disabled
    if app.errors:
        raise_known(app.errors[0])
    return result


def raise_known(err: BaseException) -> NoReturn:
    """Raise ``err`` as one of the errors ``run`` prints."""
    if isinstance(err, (exception.AccelError, OSError, UsageError,
                        ConfigError, KeyboardInterrupt)):
        raise err
    if isinstance(err, cfg.Error):
        raise ConfigError(str(err))
    raise exception.AccelError('%s: %s' % (type(err).__name__, err))


if __name__ == '__main__':
    sys.exit(main())
