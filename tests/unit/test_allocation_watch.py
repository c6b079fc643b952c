# SPDX-License-Identifier: Apache-2.0
"""The second line against outputs that grow past the limit while qemu-img
writes them (engine.images._AllocationWatch)."""

import os

from accel_daemon.engine import files
from accel_daemon.engine import images
from accel_daemon.engine import paths
from accel_daemon.engine.progress import Progress

MiB = 1024 * 1024


def _output(tmp_path):
    conf = paths.Confinement([str(tmp_path)])
    return files.Output(conf, str(tmp_path / 'out.raw'))


def test_allocation_past_the_limit_stops_the_run(tmp_path):
    with _output(tmp_path) as out:
        progress = Progress()
        watch = images._AllocationWatch(out, 8 * MiB, progress)
        os.posix_fallocate(out.fd, 0, 8 * MiB)      # within the slack
        watch.check()
        assert not watch.exceeded and not progress.cancelled
        os.posix_fallocate(out.fd, 0, 64 * MiB)     # a "cluster bomb"
        watch.check()
        assert watch.exceeded and progress.cancelled


def test_sparse_output_of_the_same_size_is_fine(tmp_path):
    with _output(tmp_path) as out:
        progress = Progress()
        watch = images._AllocationWatch(out, 8 * MiB, progress)
        os.ftruncate(out.fd, 1024 * MiB)            # holes: no blocks
        watch.check()
        assert not watch.exceeded and not progress.cancelled


def test_no_limit_no_watch(tmp_path):
    with _output(tmp_path) as out:
        progress = Progress()
        watch = images._AllocationWatch(out, None, progress)
        os.posix_fallocate(out.fd, 0, 64 * MiB)
        watch.check()
        assert not watch.exceeded
