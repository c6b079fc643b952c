# SPDX-License-Identifier: Apache-2.0
"""The one privilege-separation context of accel-daemon, and how it starts.

accel-daemon's main process (RPC server, task manager, journal) runs as an
unprivileged service user.  Everything that needs privilege goes through the
entrypoints in ``accel_daemon.privileged.ops``, which run in an oslo.privsep
daemon started by ``accel_daemon.privileged.start.init()``.  This module holds
only the context, its capabilities and the default pool size the privsep
daemon reads when it imports this module (the one configuration change at
import time: the helper has no other hook before it sizes its pool).

Capabilities (the fewest the work needs)
----------------------------------------
The privsep daemon starts as uid 0 (through sudo, or directly when
accel-daemon already runs as root) and keeps only these capabilities:

``CAP_DAC_OVERRIDE``
    Inputs belong to other services (cinder-volume writes its volume files
    mode 0600 as ``cinder``) and outputs go into their directories (mode
    0750): opening them, creating the unnamed output in such a directory
    and linking it there need it.
``CAP_CHOWN``
    Outputs are given the owner and group of their destination directory
    (``engine.files.Output``) so that the caller can read them, and are
    lent to the tool user while qemu-img writes them.
``CAP_SETUID``, ``CAP_SETGID``
    Every tool runs as ``[accel_daemon] tool_user``: the child switches to
    it between fork and exec.
``CAP_KILL``
    Cancel and timeouts kill the process group of a tool, which runs as
    another user.
``CAP_SETPCAP``
    Held only until ``caps.harden_thread()`` has narrowed what children
    inherit (see below); then dropped from every thread that runs work.

Deliberately not kept:

``CAP_DAC_READ_SEARCH``
    ``CAP_DAC_OVERRIDE`` covers what this process opens, and no tool
    reopens anything: qemu-img reads inputs (and writes block devices)
    over NBD from descriptors this process holds (``engine.nbd``).

``CAP_FOWNER``
    ``fchmod`` happens while we own the file (``Output.commit`` takes it
    back first); publishing with ``link(2)`` a file we no longer own passes
    ``fs.protected_hardlinks`` because ``CAP_DAC_OVERRIDE`` gives read and
    write access; we never set times.  (It would be needed to unlink other
    users' files in a sticky directory such as /tmp: do not configure
    sticky directories in ``allowed_dirs``.)
``CAP_SYS_ADMIN`` / ``CAP_SYS_RAWIO``
    Opening a block device for reading or writing (also with O_DIRECT) and
    the ioctls qemu-img uses (BLKGETSIZE64, BLKDISCARD, BLKZEROOUT) are
    governed by file permissions only.  ``CAP_SYS_ADMIN`` would be needed
    for BLKFLSBUF/BLKRRPART or mounting, which accel-daemon never does.
``CAP_FSETID``
    We never create set-id files.

The tools hold nothing
----------------------
Every file is opened once by the engine in this process and handed to the
tools as a descriptor (``engine.files``), so the tools need no access of
their own: they run as the tool user with no capability at all,
``no_new_privs``, in a Landlock domain of their own, and die with the
thread that started them (``engine.tooluser``).  qemu-img gets its inputs,
and a block device it writes in place, as NBD exports on a socket pair
served from this process's descriptors (``engine.nbd``); a new output file
is lent to the tool user while it is written.

Children of a uid-0 process get every capability back
-----------------------------------------------------
Linux gives a program exec'ed by uid 0 the full bounding set, whatever
capabilities the parent had dropped.  That matters when ``tool_user`` is
empty (tools then run as this process).  ``caps.harden_thread()``
therefore, in each privsep worker thread before its first operation
(capabilities are per thread):

* drops every capability from the bounding set (``CHILD_CAPABILITIES`` is
  empty: no tool can ever hold one, whoever it runs as);
* sets ``SECBIT_NOROOT`` (locked), so uid 0 no longer implies capabilities
  on exec;
* sets ``no_new_privs``, so no set-uid or file-capability binary a filter
  might allow by mistake can gain more;
* drops ``CAP_SETPCAP`` from the thread.
"""

from __future__ import annotations

import logging

from oslo_config import cfg
from oslo_privsep import capabilities as c
from oslo_privsep import priv_context

from accel_daemon import conf as accel_conf

LOG = logging.getLogger(__name__)

SECTION = 'privsep_accel'
CONTEXT_PYPATH = 'accel_daemon.privileged.context'

CAPABILITIES = (c.CAP_CHOWN, c.CAP_DAC_OVERRIDE, c.CAP_KILL, c.CAP_SETGID,
                c.CAP_SETUID, c.CAP_SETPCAP)
# The bounding set of the tools the privsep daemon execs: none (see the
# module docstring, engine.tooluser and engine.nbd).
CHILD_CAPABILITIES: tuple[int, ...] = ()

# privsep threads beyond the task workers, for calls that must never wait
# behind a running task: progress, cancel, capabilities, info, reload.
CONTROL_THREADS = 4

context = priv_context.PrivContext(
    'accel_daemon',
    cfg_section=SECTION,
    pypath=CONTEXT_PYPATH,
    capabilities=list(CAPABILITIES),
    logger_name=__name__,
)


def pool_size(workers: int) -> int:
    """privsep threads needed for ``workers`` tasks plus control calls.

    privsep's own default (the CPU count) would let two tasks block every
    progress and cancel call on a two-CPU host.
    """
    return max(1, int(workers)) + CONTROL_THREADS


def apply_pool_default(conf: cfg.ConfigOpts) -> None:
    try:
        workers = conf.tasks.workers
    except (cfg.NoSuchOptError, cfg.NoSuchGroupError):
        return
    conf.set_default('thread_pool_size', pool_size(workers), group=SECTION)


# In the privsep daemon this module is imported after the configuration
# files are parsed and before the thread pool is created: the default pool
# size follows [tasks] workers there too.
# The daemon's options ([tasks] for the pool size, and what the privileged
# operations read) on the global configuration: this package is imported
# only by the daemon and its privsep helper, never by a client.
accel_conf.register_opts(cfg.CONF)
apply_pool_default(cfg.CONF)
