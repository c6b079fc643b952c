# SPDX-License-Identifier: Apache-2.0
"""Malicious inputs through the real engine: each refused with a typed error,
before qemu-img touches it, and nothing written in the allowed directory."""

import os
import shutil

import pytest

from accel_daemon.engine.context import Context
from accel_daemon.engine.filters import CommandPolicy
from accel_daemon.engine import images
from accel_daemon.engine import paths
from accel_daemon.engine.progress import Progress
from accel_daemon import exception
from tests.functional import imagegen as gen

pytestmark = [
    pytest.mark.functional,
    pytest.mark.skipif(shutil.which('qemu-img') is None,
                       reason='qemu-img is not installed'),
]


class RecordingPolicy(CommandPolicy):
    """The real filters, remembering every command they were asked about."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.seen = []

    def check(self, argv):
        self.seen.append(list(argv))
        return super().check(argv)


def listing(env):
    return sorted(os.listdir(env.images))


def refused(env, src, claimed, error, dst_format='raw'):
    """Both info and convert refuse ``src`` with ``error``; nothing left."""
    before = listing(env)
    policy = RecordingPolicy(env.settings.filters_path,
                             env.settings.exec_dirs)
    with pytest.raises(error) as info_err:
        images.info(Context.create(env.settings, policy), src, claimed)
    dst = env.path('out.img')
    with pytest.raises(error):
        images.convert(Context.create(env.settings, policy), Progress(), src,
                       dst, claimed, dst_format)
    assert policy.seen == []  # refused before any qemu-img command
    assert not os.path.lexists(dst)
    assert paths.stray_temp_files(env.images) == []
    assert listing(env) == before
    return info_err.value


def test_qcow2_with_backing_file(env):
    src = gen.qcow2_with_backing(env.path('backed.qcow2'),
                                 os.path.join(env.root, 'base.raw'))
    err = refused(env, src, 'qcow2', exception.UnsafeImage)
    assert 'backing' in err.message


def test_qcow2_with_data_file(env):
    # CVE-2024-32498
    src = gen.qcow2_with_data_file(env.path('df.qcow2'),
                                   os.path.join(env.root, 'host-data.raw'))
    err = refused(env, src, 'qcow2', exception.UnsafeImage)
    assert 'data_file' in err.message


def test_qcow2_with_data_file_claimed_raw(env):
    src = gen.qcow2_with_data_file(env.path('df.raw'),
                                   os.path.join(env.root, 'host-data.raw'))
    refused(env, src, 'raw', exception.FormatMismatch)


def test_vmdk_flat_extent_descriptor(env):
    # CVE-2022-47951: the descriptor points qemu at a host file.
    secret = os.path.join(env.root, 'secret.raw')
    gen.write(secret, b'secret' * 1000, 1024 * 1024)
    src = gen.write(env.path('flat.vmdk'), gen.vmdk_flat_descriptor(secret))
    refused(env, src, 'vmdk', exception.UnsafeImage)
    refused(env, src, 'raw', exception.FormatMismatch)


def test_vmdk_sparse_header_with_flat_extent(env):
    gen.write(env.path('neighbour.raw'), b'x', 1024 * 1024)
    src = gen.write(env.path('s.vmdk'), gen.vmdk_sparse_with_flat_extent())
    refused(env, src, 'vmdk', exception.UnsafeImage)


def test_qcow2_hidden_in_iso(env):
    src = gen.write(env.path('hidden.iso'),
                    gen.iso_bytes(system_area=gen.qcow2_header()))
    for claimed in ('raw', 'qcow2'):
        err = refused(env, src, claimed, exception.UnsafeImage)
        assert 'Multiple formats' in err.message


def test_qcow2_behind_gpt(env):
    src = gen.write(env.path('gpt.img'), gen.qcow2_behind_gpt(), 1 << 20)
    for claimed in ('raw', 'qcow2'):
        refused(env, src, claimed, exception.UnsafeImage)


def test_real_qcow2_claimed_raw(env):
    src = gen.qcow2_with_data(env.path('real.qcow2'), written=1 << 20)
    refused(env, src, 'raw', exception.FormatMismatch)


def test_raw_claimed_qcow2(env):
    src = gen.write(env.path('plain.raw'), b'\1' * 65536)
    refused(env, src, 'qcow2', exception.FormatMismatch)


@pytest.mark.parametrize('claimed', [None, '', 'auto', 'iso'])
def test_format_less_calls(env, claimed):
    # CVE-2026-24708: never let qemu-img guess.
    src = gen.write(env.path('plain.raw'), b'\1' * 65536)
    refused(env, src, claimed, exception.UnsupportedFormat)


def test_unsupported_output_format(env):
    src = gen.write(env.path('plain.raw'), b'\1' * 65536)
    with pytest.raises(exception.UnsupportedFormat):
        images.convert(env.ctx, Progress(), src, env.path('o.vdi'), 'raw',
                       'vdi')
    assert listing(env) == ['plain.raw']


def test_path_outside_allowed_dirs(env):
    outside = gen.write(os.path.join(env.root, 'outside.raw'), b'\1' * 4096)
    refused(env, outside, 'raw', exception.PathNotAllowed)
    src = gen.write(env.path('in.raw'), b'\1' * 4096)
    with pytest.raises(exception.PathNotAllowed):
        images.convert(env.ctx, Progress(), src,
                       os.path.join(env.root, 'out.raw'), 'raw', 'raw')
    assert not os.path.exists(os.path.join(env.root, 'out.raw'))


def test_symlink_escaping_allowed_dirs(env):
    outside = gen.write(os.path.join(env.root, 'outside.raw'), b'\1' * 4096)
    os.symlink(outside, env.path('link.raw'))
    refused(env, env.path('link.raw'), 'raw', exception.SymlinkEscape)
    os.symlink(env.root, env.path('escape'))
    src = gen.write(env.path('in.raw'), b'\1' * 4096)
    with pytest.raises(exception.SymlinkEscape):
        images.convert(env.ctx, Progress(), src, env.path('escape', 'out.raw'),
                       'raw', 'raw')
    assert not os.path.exists(os.path.join(env.root, 'out.raw'))


def test_dotdot_path(env):
    src = env.images + '/../outside.raw'
    gen.write(os.path.join(env.root, 'outside.raw'), b'\1' * 4096)
    refused(env, src, 'raw', exception.PathNotAllowed)


def test_corrupt_qcow2_fails_cleanly(env):
    # A bare header passes format_inspector; qemu-img itself then refuses
    # it (no L1/refcount tables): a refused image, typed, nothing left.
    src = gen.write(env.path('bare.qcow2'), gen.qcow2_header())
    with pytest.raises(exception.ImageInspectionError):
        images.info(env.ctx, src, 'qcow2')
    with pytest.raises(exception.ImageInspectionError):
        images.convert(env.ctx, Progress(), src, env.path('out.raw'), 'qcow2',
                       'raw')
    assert listing(env) == ['bare.qcow2']
