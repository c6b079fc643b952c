# SPDX-License-Identifier: Apache-2.0
"""Open once: during every operation, no name the engine checked is opened
again.  Every open(2) the engine makes (``os.open``, ``open`` and
``engine.beneath.openat2``) is recorded while real operations run; each
name in the allowed directory (the input, the output's directory) may be
looked up once.  Reopening a
descriptor through ``/proc/self/fd/N`` (O_DIRECT, linkat) names no file a
directory owner controls and is not counted."""

from __future__ import annotations

import builtins
import collections
import gzip
import os

import pytest

from accel_daemon.engine import beneath
from accel_daemon.engine.engine import Engine
from accel_daemon.engine import paths
from accel_daemon import operations
from tests.functional import imagegen as gen

MiB = 1024 * 1024
pytestmark = gen.REQUIRES_QEMU


class OpenRecorder:
    def __init__(self, root: str) -> None:
        self.root = root
        self.names: collections.Counter = collections.Counter()

    def note(self, path, dir_fd=None) -> None:
        if isinstance(path, int):
            return
        path = os.fsdecode(path)
        if dir_fd is not None and not os.path.isabs(path):
            return      # relative to a directory opened (and counted) once
        if os.path.abspath(path).startswith(self.root):
            self.names[os.path.abspath(path)] += 1


@pytest.fixture
def recorder(env, monkeypatch):
    rec = OpenRecorder(env.images)
    real_os_open, real_open = os.open, builtins.open

    def os_open(path, flags, mode=0o777, *, dir_fd=None):
        rec.note(path, dir_fd)
        return real_os_open(path, flags, mode, dir_fd=dir_fd)

    def py_open(file, *args, **kwargs):
        rec.note(file)
        return real_open(file, *args, **kwargs)

    real_openat2 = beneath.openat2

    def openat2(dir_fd, name, flags, resolve, mode=0):
        # A lookup beneath an allowed directory names a file in it; the
        # allowed directory itself (from the root, no symlink) is the
        # operator's name, not one its owner chose.
        if dir_fd != beneath.AT_FDCWD:
            rec.note(os.path.normpath(os.path.join(
                paths.fd_path(dir_fd), os.fsdecode(name))))
        return real_openat2(dir_fd, name, flags, resolve, mode)

    monkeypatch.setattr(os, 'open', os_open)
    monkeypatch.setattr(builtins, 'open', py_open)
    monkeypatch.setattr(beneath, 'openat2', openat2)
    return rec


def _inputs(env):
    raw = gen.write(env.path('in.raw'), b'\x5a' * MiB, size=8 * MiB)
    qcow2 = gen.qcow2_with_data(env.path('in.qcow2'))
    with open(raw, 'rb') as f:
        data = f.read()
    with gzip.open(env.path('in.raw.gz'), 'wb') as f:
        f.write(data)
    return raw, qcow2, env.path('in.raw.gz')


def test_no_checked_name_is_opened_twice(env, recorder):
    raw, qcow2, packed = _inputs(env)
    engine = Engine(env.settings, env.policy)
    engine.capabilities()           # load drivers before recording
    recorder.names.clear()
    runs = [
        ('compress', {'src': raw, 'dst': env.path('o1.gz')}),
        ('compress', {'src': raw, 'dst': env.path('o2.gz'),
                      'driver': 'gzip'}),
        ('decompress', {'src': packed, 'dst': env.path('o3.raw'),
                        'checksum': True}),
        ('convert', {'src': qcow2, 'dst': env.path('o4.raw'),
                     'src_format': 'qcow2', 'dst_format': 'raw',
                     'checksum': True}),
        ('copy', {'src': raw, 'dst': env.path('o5.raw'), 'checksum': True}),
        ('upload', {'src': qcow2, 'dst': env.path('o6.gz'),
                    'src_format': 'qcow2', 'disk_format': 'raw'}),
        ('upload', {'src': raw, 'dst': env.path('o7.gz'),
                    'src_format': 'raw', 'disk_format': 'raw'}),
        ('download', {'src': packed, 'dst': env.path('o8.qcow2'),
                      'disk_format': 'raw', 'dst_format': 'qcow2'}),
        ('download', {'src': packed, 'dst': env.path('o9.raw'),
                      'disk_format': 'raw', 'dst_format': 'raw',
                      'checksum': True}),
    ]
    for i, (name, params) in enumerate(runs):
        recorder.names.clear()
        result = operations.run(engine, 't%d' % i, name, params)
        assert os.path.exists(result['output'])
        opened = dict(recorder.names)
        # The input, and the output's directory, each looked up once.
        assert opened == {params['src']: 1, env.images: 1}, (name, opened)
    recorder.names.clear()
    engine.image_info(qcow2, 'qcow2')
    assert dict(recorder.names) == {qcow2: 1}


def test_replace_opens_no_checked_name_twice(env, recorder):
    """replace=True: the final name is judged by lstat through the opened
    directory and replaced by rename(2) there; in place, the input is the
    output's name and is still opened once."""
    raw, qcow2, packed = _inputs(env)
    engine = Engine(env.settings, env.policy)
    engine.capabilities()
    inplace = env.path('inplace.raw')
    with open(raw, 'rb') as f, open(inplace, 'wb') as g:
        g.write(f.read())
    runs = [
        ('compress', {'src': inplace, 'dst': inplace}),
        ('decompress', {'src': inplace, 'dst': inplace, 'checksum': True}),
        ('decompress', {'src': packed, 'dst': env.path('r3.raw')}),
        ('convert', {'src': qcow2, 'dst': env.path('r4.raw'),
                     'src_format': 'qcow2', 'dst_format': 'raw'}),
        ('copy', {'src': raw, 'dst': env.path('r5.raw')}),
        ('upload', {'src': qcow2, 'dst': env.path('r6.gz'),
                    'src_format': 'qcow2', 'disk_format': 'raw'}),
        ('upload', {'src': raw, 'dst': env.path('r7.gz'),
                    'src_format': 'raw', 'disk_format': 'raw'}),
        ('download', {'src': packed, 'dst': env.path('r8.qcow2'),
                      'disk_format': 'raw', 'dst_format': 'qcow2'}),
        ('download', {'src': packed, 'dst': env.path('r9.raw'),
                      'disk_format': 'raw', 'dst_format': 'raw'}),
    ]
    for i, (name, params) in enumerate(runs):
        if not os.path.exists(params['dst']):
            with open(params['dst'], 'wb') as f:
                f.write(b'an older output')
        recorder.names.clear()
        before = os.stat(params['dst']).st_ino
        result = operations.run(engine, 'r%d' % i, name,
                                dict(params, replace=True))
        assert os.stat(result['output']).st_ino != before, name
        opened = dict(recorder.names)
        assert opened == {params['src']: 1, env.images: 1}, (name, opened)
    with open(raw, 'rb') as f, open(inplace, 'rb') as g:
        assert f.read() == g.read()
