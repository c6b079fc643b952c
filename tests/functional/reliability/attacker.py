# SPDX-License-Identifier: Apache-2.0
"""The owner of an allowed directory, attacking the daemon's names.

A stand-alone script (standard library only: it runs as a throwaway
unprivileged user with the system's python3, which cannot read the test
venv).  Usage::

    attacker.py watch DIR SECRET HARMLESS
    attacker.py link TARGET NAME        # exit 0 if the kernel allowed it

``watch`` prints ``ready``, runs until SIGTERM, then prints its counters
(one JSON line).
It reacts to names by convention (TAG is the task's tag):

* ``TAG.in`` with a sibling ``TAG.in.alt``: the two names are swapped with
  renameat2(RENAME_EXCHANGE) all the time, and at once whenever the daemon
  opens ``TAG.in`` (inotify IN_OPEN): the source is, at any moment, either
  the benign file or the attacker's (symlink, hard link, FIFO, malicious
  image: whatever the test put at ``TAG.in.alt``).
* output ``TAG.out-link``: as soon as it is published it is replaced by a
  symlink to SECRET (a daemon that hashes or reads its output again by
  name would then hash SECRET).
* output ``TAG.out-fifo``: a FIFO is planted at the final name as soon as
  the task shows life (source opened, or a temp name created).
* output ``TAG.out-tmplink``: every temp name seen for it is replaced by a
  hard link to HARMLESS (a daemon that writes or publishes by name would
  publish HARMLESS).
* output ``TAG.out-tmpsym``: every temp name seen for it is replaced by a
  symlink to SECRET.
"""

import ctypes
import json
import os
import select
import signal
import struct
import sys
import time

IN_ACCESS = 0x1
IN_MODIFY = 0x2
IN_OPEN = 0x20
IN_MOVED_TO = 0x80
IN_CREATE = 0x100
RENAME_EXCHANGE = 2
AT_FDCWD = -100
SYS_RENAMEAT2 = {'x86_64': 316, 'aarch64': 276}

libc = ctypes.CDLL(None, use_errno=True)


def exchange(a, b):
    """renameat2(a, b, RENAME_EXCHANGE) through the raw syscall."""
    nr = SYS_RENAMEAT2.get(os.uname().machine)
    if nr is None:
        rc = libc.renameat2(AT_FDCWD, a.encode(), AT_FDCWD, b.encode(),
                            RENAME_EXCHANGE)
    else:
        rc = libc.syscall(ctypes.c_long(nr), ctypes.c_int(AT_FDCWD),
                          ctypes.c_char_p(a.encode()),
                          ctypes.c_int(AT_FDCWD),
                          ctypes.c_char_p(b.encode()),
                          ctypes.c_uint(RENAME_EXCHANGE))
    return rc == 0


class Attacker:
    def __init__(self, directory, secret, harmless):
        self.dir = directory
        self.secret = secret
        self.harmless = harmless
        self.stats = {'flips': 0, 'flips_on_open': 0, 'published_swapped': 0,
                      'fifos_planted': 0, 'temps_hardlinked': 0,
                      'temps_symlinked': 0, 'events': 0, 'errors': 0}
        self.pairs = []
        self.seq = 0
        self.fd = libc.inotify_init1(os.O_NONBLOCK | os.O_CLOEXEC)
        if self.fd < 0:
            raise OSError(ctypes.get_errno(), 'inotify_init1')
        mask = IN_ACCESS | IN_OPEN | IN_MOVED_TO | IN_CREATE | IN_MODIFY
        if libc.inotify_add_watch(self.fd, directory.encode(), mask) < 0:
            raise OSError(ctypes.get_errno(), 'inotify_add_watch')
        self.running = True

    def path(self, name):
        return os.path.join(self.dir, name)

    def scratch(self):
        self.seq += 1
        return self.path('.attk-%d-%d' % (os.getpid(), self.seq))

    def flip(self, tag_in):
        if exchange(self.path(tag_in), self.path(tag_in + '.alt')):
            self.stats['flips'] += 1
            return True
        return False

    def plant_symlink(self, name, target):
        tmp = self.scratch()
        try:
            os.symlink(target, tmp)
            os.rename(tmp, self.path(name))
            return True
        except OSError:
            self._unlink(tmp)
            return False

    def plant_hardlink(self, name):
        tmp = self.scratch()
        try:
            os.link(self.harmless, tmp)
            os.rename(tmp, self.path(name))
            return True
        except OSError:
            self._unlink(tmp)
            return False

    def plant_fifo(self, name):
        try:
            os.mkfifo(self.path(name), 0o666)
            return True
        except OSError:
            return False

    @staticmethod
    def _unlink(path):
        try:
            os.unlink(path)
        except OSError:
            pass

    def on_event(self, mask, name):
        self.stats['events'] += 1
        if name.endswith('.in') and mask & IN_OPEN:
            if self.flip(name):
                self.stats['flips_on_open'] += 1
            self._fifo_for(name[:-len('.in')])
            return
        if name.startswith('.accel-') and mask & (IN_CREATE | IN_MOVED_TO):
            body = name[len('.accel-'):]
            if '.out-fifo' in body:
                self._fifo_for(body.split('.out-fifo')[0])
            elif '.out-tmplink' in body:
                if self.plant_hardlink(name):
                    self.stats['temps_hardlinked'] += 1
            elif '.out-tmpsym' in body:
                if self.plant_symlink(name, self.secret):
                    self.stats['temps_symlinked'] += 1
            return
        if name.endswith('.out-link') and mask & (IN_CREATE | IN_MOVED_TO):
            try:
                if os.path.islink(self.path(name)):
                    return
            except OSError:
                return
            if self.plant_symlink(name, self.secret):
                self.stats['published_swapped'] += 1

    def _fifo_for(self, tag):
        name = tag + '.out-fifo'
        if not os.path.lexists(self.path(name)) and self.plant_fifo(name):
            self.stats['fifos_planted'] += 1

    def read_events(self):
        try:
            buf = os.read(self.fd, 65536)
        except BlockingIOError:
            return
        off = 0
        while off + 16 <= len(buf):
            _wd, mask, _cookie, length = struct.unpack_from('iIII', buf, off)
            name = buf[off + 16:off + 16 + length].rstrip(b'\0')
            off += 16 + length
            try:
                self.on_event(mask, name.decode())
            except OSError:
                self.stats['errors'] += 1

    def rescan(self):
        try:
            names = set(os.listdir(self.dir))
        except OSError:
            return
        self.pairs = [n for n in names
                      if n.endswith('.in') and n + '.alt' in names]

    def run(self):
        last_scan = 0.0
        while self.running:
            now = time.monotonic()
            if now - last_scan > 0.02:
                self.rescan()
                last_scan = now
            ready, _, _ = select.select([self.fd], [], [], 0.001)
            if ready:
                self.read_events()
            for tag_in in self.pairs:
                self.flip(tag_in)
        self.write_stats()

    def write_stats(self):
        print(json.dumps(self.stats), flush=True)


def main(argv):
    if argv[1] == 'link':
        try:
            os.link(argv[2], argv[3])
        except OSError as e:
            print(e, file=sys.stderr)
            return 1
        return 0
    attacker = Attacker(*argv[2:5])

    def stop(signum, frame):
        attacker.running = False
    signal.signal(signal.SIGTERM, stop)
    print('ready', flush=True)
    attacker.run()
    return 0


if __name__ == '__main__':
    sys.exit(main(sys.argv))
