# SPDX-License-Identifier: Apache-2.0
"""Security review regressions: names swapped by the owner of an allowed
directory between our checks and the use of the file (no external tools)."""

import os
import time

import pytest

from accel_daemon.engine.engine import Engine
from accel_daemon.engine import files
from accel_daemon.engine import filters
from accel_daemon.engine import paths
from accel_daemon.engine import process
from accel_daemon.engine.progress import Progress
from accel_daemon.engine import qemu_img
from accel_daemon.engine.settings import Settings
from accel_daemon import exception
from tests.unit.conftest import on_copy_in


def test_copy_never_writes_through_a_swapped_temp(monkeypatch, allowed,
                                                  victim, staging):
    # No O_TMPFILE in the caller's directory: the copy is staged, and the
    # directory's owner swaps the copy-in temp name for a symlink to a
    # host file the moment it exists.
    src = allowed / 'in.raw'
    src.write_bytes(b'* * * * * root evil\n')
    settings = Settings(allowed_dirs=(str(allowed),),
                        staging_dir=str(staging))
    engine = Engine(settings, policy=filters.CommandPolicy([]))

    def swap(out):
        link = allowed / 'evil'
        link.symlink_to(victim)
        os.rename(link, allowed / out.temp_name)
        swap.temp = allowed / out.temp_name
    monkeypatch.setattr(files.Output, 'use_tmpfile', False)
    on_copy_in(monkeypatch, swap)
    # Our inode lost its only name: it cannot be published, and the
    # symlink under its name is neither written through nor published.
    with pytest.raises(exception.PathNotAllowed):
        engine.copy(Progress(), str(src), str(allowed / 'out.raw'))
    assert victim.read_bytes() == b'root:secret\n'
    assert not os.path.lexists(allowed / 'out.raw')
    assert os.readlink(swap.temp) == str(victim)


def test_source_swapped_between_open_and_use_is_not_read(allowed, victim):
    src = allowed / 'in.raw'
    src.write_bytes(b'mine')
    conf = paths.Confinement([str(allowed)])
    with files.open_source(conf, str(src)) as opened:
        src.unlink()
        src.symlink_to(victim)
        assert os.pread(opened.fd, 64, 0) == b'mine'


def test_qemu_img_gets_descriptors_not_paths():
    assert qemu_img.fd_arg(7) == '/dev/fd/7'
    assert qemu_img.proc_fd_path(7) == '/proc/self/fd/7'


def test_vmdk_extent_must_be_the_opened_descriptor():
    info = {'format': 'vmdk', 'virtual-size': 1024,
            'format-specific': {'data': {'extents': [
                {'filename': '/dev/fd/5'}]}}}
    qemu_img.validate_info(info, '/x/a.vmdk', 'vmdk', opened_as='/dev/fd/5')
    info['format-specific']['data']['extents'][0]['filename'] = '/x/b'
    with pytest.raises(exception.UnsafeImage):
        qemu_img.validate_info(info, '/x/a.vmdk', 'vmdk',
                               opened_as='/dev/fd/5')


def test_interrupted_run_kills_its_child(tmp_path, monkeypatch):
    d = tmp_path / 'f'
    d.mkdir()
    (d / 'x.filters').write_text(
        '[Filters]\nsleep: RegExpFilter, sleep, root, sleep, [0-9]+\n')
    policy = filters.CommandPolicy([str(d)], ['/usr/bin', '/bin'])
    progress = Progress()

    def interrupt(timeout=None):
        # Stands in for KeyboardInterrupt arriving while the child runs.
        raise KeyboardInterrupt

    monkeypatch.setattr(progress, 'wait_cancelled', interrupt)
    seen = []

    class Recording(process.subprocess.Popen):
        def __init__(self, *a, **kw):
            super().__init__(*a, **kw)
            seen.append(self.pid)

    monkeypatch.setattr(process.subprocess, 'Popen', Recording)
    started = time.monotonic()
    with pytest.raises(KeyboardInterrupt):
        process.run(['sleep', '30'], policy, progress=progress)
    assert time.monotonic() - started < 5
    # Killed and reaped: the pid no longer exists (not even as a zombie).
    with pytest.raises(ProcessLookupError):
        os.kill(seen[0], 0)
