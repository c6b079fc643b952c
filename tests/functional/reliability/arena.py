# SPDX-License-Identifier: Apache-2.0
"""A daemon whose allowed directory belongs to a throwaway user, a root-only
secret outside it, and the attacker process (attacker.py) run as that
user."""

from __future__ import annotations

import gzip
import json
import os
import shutil
import subprocess
import sys
import tempfile

from tests.functional.reliability import common

HERE = os.path.dirname(os.path.abspath(__file__))
PYTHON = '/usr/bin/python3' if os.path.exists('/usr/bin/python3') \
    else getattr(sys, '_base_executable', sys.executable)
MiB = common.MiB


def benign_raw(size: int = MiB) -> bytes:
    """Recognisable, partly compressible, no zero blocks."""
    line = b'benign image block %08d ' * 1
    out = bytearray()
    n = 0
    while len(out) < size:
        out += line % n
        n += 1
    return bytes(out[:size])


class Arena:
    def __init__(self, user):
        self.user, self.uid, self.gid = user
        self.root = tempfile.mkdtemp(prefix='accel-race-', dir='/tmp')
        os.chmod(self.root, 0o755)
        self.fixtures = os.path.join(self.root, 'fixtures')
        self.secret_dir = os.path.join(self.root, 'secret')
        self.bin = os.path.join(self.root, 'bin')
        for d in (self.fixtures, self.bin):
            os.makedirs(d)
            os.chmod(d, 0o755)
        os.makedirs(self.secret_dir, mode=0o700)
        shutil.copy(os.path.join(HERE, 'attacker.py'), self.bin)
        os.chmod(os.path.join(self.bin, 'attacker.py'), 0o755)
        self.script = os.path.join(self.bin, 'attacker.py')
        self.daemon = None
        self.attacker = None
        self._build_fixtures()

    # -- files -----
    def _secret_file(self, name, data):
        path = os.path.join(self.secret_dir, name)
        with open(path, 'wb') as f:
            f.write(data)
        os.chmod(path, 0o600)
        return path

    def _fixture(self, name, data):
        path = os.path.join(self.fixtures, name)
        with open(path, 'wb') as f:
            f.write(data)
        return path

    def _build_fixtures(self):
        self.secret_bytes = os.urandom(64 * 1024)
        self.secret2_bytes = os.urandom(64 * 1024)
        self.secret = self._secret_file('secret.bin', self.secret_bytes)
        self.secret_gz = self._secret_file(
            'secret.gz', gzip.compress(self.secret2_bytes))
        self.raw = benign_raw()
        self.raw_path = self._fixture('benign.raw', self.raw)
        self.qcow2_path = os.path.join(self.fixtures, 'benign.qcow2')
        subprocess.run(['qemu-img', 'convert', '-q', '-f', 'raw', '-O',
                        'qcow2', self.raw_path, self.qcow2_path], check=True)
        with open(self.qcow2_path, 'rb') as f:
            qcow2 = f.read()
        self.raw_gz_path = self._fixture('benign.raw.gz',
                                         gzip.compress(self.raw))
        self.qcow2_gz_path = self._fixture('benign.qcow2.gz',
                                           gzip.compress(qcow2))
        # The malicious twin: a qcow2 whose backing file is the secret.
        self.evil_path = os.path.join(self.fixtures, 'evil.qcow2')
        subprocess.run(['qemu-img', 'create', '-q', '-f', 'qcow2', '-b',
                        self.secret, '-F', 'raw', self.evil_path,
                        str(len(self.raw))], check=True)
        with open(self.evil_path, 'rb') as f:
            self.evil_gz_path = self._fixture('evil.qcow2.gz',
                                              gzip.compress(f.read()))
        padded = self.secret_bytes.ljust(len(self.raw), b'\0')
        with open(self.secret_gz, 'rb') as f:
            secret_gz_bytes = f.read()
        self.forbidden_hashes = {
            common.sha256_bytes(d) for d in (
                self.secret_bytes, self.secret2_bytes, secret_gz_bytes,
                padded, gzip.compress(padded, mtime=0))}
        self.windows = [s[i:i + 256] for s in (self.secret_bytes,
                                               self.secret2_bytes)
                        for i in (0, 20000, 65536 - 256)]

    def leaks(self, data: bytes) -> bool:
        return any(w in data for w in self.windows)

    # -- the daemon -----
    def start(self, extra=''):
        self.daemon = common.start_daemon(
            os.path.join(self.root, 'd'), extra=extra,
            owner=(self.uid, self.gid), mode=0o750)
        os.chmod(self.daemon.root, 0o755)
        self.images = self.daemon.images
        self.harmless = os.path.join(self.images, 'harmless.img')
        with open(self.harmless, 'wb') as f:
            f.write(b'harmless ' * 10000)
        os.chown(self.harmless, self.uid, self.gid)
        st = os.stat(self.harmless)
        self.harmless_inode = (st.st_dev, st.st_ino)
        return self.daemon

    def as_user(self, *argv, **kwargs):
        return subprocess.run([PYTHON, self.script, *argv], user=self.uid,
                              group=self.gid, extra_groups=[], cwd='/',
                              capture_output=True, text=True, timeout=30,
                              **kwargs)

    def hardlink_allowed(self) -> bool:
        probe = os.path.join(self.images, 'probe.link')
        ok = self.as_user('link', self.secret, probe).returncode == 0
        if os.path.lexists(probe):
            os.unlink(probe)
        return ok

    def start_attacker(self):
        self.attacker = subprocess.Popen(
            [PYTHON, self.script, 'watch', self.images, self.secret,
             self.harmless],
            user=self.uid, group=self.gid, extra_groups=[], cwd='/',
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        line = self.attacker.stdout.readline()
        assert line.strip() == 'ready', self.attacker.stderr.read()

    def stop_attacker(self) -> dict:
        if self.attacker is None:
            return {}
        proc, self.attacker = self.attacker, None
        proc.terminate()
        try:
            out, err = proc.communicate(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            out, err = proc.communicate(timeout=10)
        lines = out.strip().splitlines()
        assert lines, 'attacker died: %s' % err[-2000:]
        return json.loads(lines[-1])

    def close(self):
        self.stop_attacker()
        if self.daemon is not None:
            common.stop_daemon(self.daemon)
        shutil.rmtree(self.root, ignore_errors=True)
