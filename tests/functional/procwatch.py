# SPDX-License-Identifier: Apache-2.0
"""What the processes of a real privsep helper are: their /proc status
(uids, capabilities, no_new_privs), their children and command lines, and
a watcher that records the status of the tools a helper runs while they
run.  Shared by the functional tests that prove the tools are bare."""

import contextlib
import os
import threading
import time


def mask(caps):
    return sum(1 << cap for cap in caps)


def status(pid):
    return status_path('/proc/%d/status' % pid)


def status_path(path):
    fields = {}
    with open(path) as f:
        for line in f:
            key, _, value = line.partition(':')
            fields[key] = value.strip()
    return fields


def cmdline(pid):
    try:
        with open('/proc/%s/cmdline' % pid, 'rb') as f:
            return f.read().split(b'\0')
    except OSError:
        return []


def execed(pid, timeout=5.0):
    """Wait until a just-forked child has exec'ed its tool.

    Between fork and exec a child is a copy of the privsep thread and
    still holds that thread's capabilities; only the exec'ed tool's
    capabilities are what this test checks.  False if it exited.
    """
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        argv = cmdline(pid)
        if not argv or argv == [b'']:
            return False
        if os.path.basename(argv[0]) not in (b'python', b'python3') and \
                b'privsep-helper' not in argv[0]:
            return True
        time.sleep(0.01)
    return False


def daemon_pids(conf_path):
    found = [int(p) for p in os.listdir('/proc') if p.isdigit()
             and conf_path.encode() in cmdline(p)
             and any(a.endswith(b'privsep-helper') for a in cmdline(p))]
    # A child forked by the daemon shows the daemon's command line until it
    # exec's its tool: keep only processes whose parent is not a candidate.
    return [p for p in found if _ppid(p) not in found]


def _ppid(pid):
    try:
        return int(status(pid)['PPid'])
    except (OSError, KeyError, ValueError):
        return None


def children(pid):
    try:
        with open('/proc/%d/task/%d/children' % (pid, pid)) as f:
            direct = [int(x) for x in f.read().split()]
    except OSError:
        direct = []
    # Work runs in pool threads: their children are listed per thread.
    for tid in os.listdir('/proc/%d/task' % pid):
        try:
            with open('/proc/%d/task/%s/children' % (pid, tid)) as f:
                direct += [int(x) for x in f.read().split()]
        except OSError:
            pass
    return sorted(set(direct))


def watch_children(pid, want, stop, seen):
    """Record /proc status of exec'ed children whose argv has ``want``
    (an argument, or a test of the whole argv)."""
    match = want if callable(want) else (lambda argv: want in argv)
    while not stop.is_set():
        for kid in children(pid):
            argv = cmdline(kid)
            if match(argv) and kid not in seen:
                try:
                    seen[kid] = status(kid)
                except OSError:
                    pass
        time.sleep(0.002)


@contextlib.contextmanager
def watching(pid, want):
    """Record, while the block runs, the /proc status of every exec'ed
    child of ``pid`` whose argv contains ``want`` (bytes, or a test of the
    argv): yields the dict {child pid: status}, complete when the block
    ends."""
    stop, seen = threading.Event(), {}
    watcher = threading.Thread(target=watch_children,
                               args=(pid, want, stop, seen))
    watcher.start()
    try:
        yield seen
    finally:
        stop.set()
        watcher.join()
