# SPDX-License-Identifier: Apache-2.0
"""Security review regressions with the real qemu-img: the source renamed
to a symlink (or rewritten) by the owner of the allowed directory after
every check, just before qemu-img starts, must change nothing; the output
has no name an attacker could swap."""

import os

import pytest

from accel_daemon.engine.context import Context
from accel_daemon.engine import images
from accel_daemon.engine import paths
from accel_daemon.engine.progress import Progress
from accel_daemon import exception
from tests.functional.hooks import ActBeforeExec
from tests.functional import imagegen as gen

MiB = 1024 * 1024

pytestmark = gen.REQUIRES_QEMU


def symlink_over(target: str, name: str) -> None:
    tmp = name + '.evil'
    os.symlink(target, tmp)
    os.rename(tmp, name)


def _unnamed_outputs(directory: str) -> list[str]:
    """What this process holds open in ``directory`` that has no name
    (O_TMPFILE files: '/dir/#1234 (deleted)')."""
    found = []
    for fd in os.listdir('/proc/self/fd'):
        try:
            target = os.readlink('/proc/self/fd/' + fd)
        except OSError:
            continue
        if target.startswith(directory + '/#') and \
                target.endswith(' (deleted)'):
            found.append('/proc/self/fd/' + fd)
    return found


def test_output_has_no_name_to_swap_when_qemu_img_starts(env):
    src = gen.write(env.path('in.raw'), b'\xab' * MiB)
    seen = []

    def look():
        # The last moment an attacker could act: nothing but the input has
        # a name in the directory, so there is nothing to swap.
        seen.append(sorted(os.listdir(env.images)))

    policy = ActBeforeExec(env.policy, 'convert', look)
    result = images.convert(Context.create(env.settings, policy), Progress(),
                            src, env.path('out.raw'), 'raw', 'raw')
    assert seen == [['in.raw']]
    assert sorted(os.listdir(env.images)) == ['in.raw', 'out.raw']
    assert gen.compare(src, 'raw', result['output'], 'raw')


def test_source_swapped_before_convert(env):
    src = gen.write(env.path('in.raw'), b'\xab' * MiB)
    keep = env.path('in.keep')
    os.link(src, keep)
    secret = os.path.join(env.root, 'secret')
    gen.write(secret, b'S' * MiB)
    policy = ActBeforeExec(env.policy, 'convert',
                           lambda: symlink_over(secret, src))
    # qemu-img reads the inspected inode, not the file the name now names;
    # the rename also touched that inode (its link count), so the result
    # is refused rather than published.
    with pytest.raises(exception.UnsafeImage):
        images.convert(Context.create(env.settings, policy), Progress(), src,
                       env.path('out.raw'), 'raw', 'raw')
    assert policy.acted
    assert not os.path.lexists(env.path('out.raw'))
    assert paths.stray_temp_files(env.images) == []


def test_backing_file_added_after_inspection_is_refused(env):
    # The owner of the directory rewrites the inspected qcow2 just before
    # qemu-img opens it: a backing file pointing at a host file.  qemu-img
    # then reads that file into the output (CVE-2024-32498 class); the
    # source's ctime moved, so the output is discarded unseen.
    secret = os.path.join(env.root, 'secret.raw')
    gen.write(secret, b'S' * MiB)
    src = gen.qcow2_with_data(env.path('src.qcow2'))
    evil = gen.qcow2_with_backing(os.path.join(env.root, 'evil.qcow2'),
                                  secret)

    def rewrite():
        with open(evil, 'rb') as f, open(src, 'r+b') as g:
            g.write(f.read(64 * 1024))

    policy = ActBeforeExec(env.policy, 'convert', rewrite)
    with pytest.raises(exception.UnsafeImage):
        images.convert(Context.create(env.settings, policy), Progress(), src,
                       env.path('out.raw'), 'qcow2', 'raw')
    assert policy.acted
    assert not os.path.lexists(env.path('out.raw'))
    assert paths.stray_temp_files(env.images) == []


def test_partial_output_is_private_until_published(env):
    src = gen.write(env.path('in.raw'), b'\xab' * MiB)
    modes = []

    def look():
        for link in _unnamed_outputs(env.images):
            modes.append(os.stat(link).st_mode & 0o777)

    policy = ActBeforeExec(env.policy, 'convert', look)
    result = images.convert(Context.create(env.settings, policy), Progress(),
                            src, env.path('out.raw'), 'raw', 'raw')
    assert modes == [0o600]
    assert os.stat(result['output']).st_mode & 0o777 == 0o640


def test_source_swapped_before_info(env):
    src = gen.qcow2_with_data(env.path('src.qcow2'))
    secret = os.path.join(env.root, 'secret.raw')
    gen.write(secret, b'S' * 3 * MiB)
    policy = ActBeforeExec(env.policy, 'info',
                           lambda: symlink_over(secret, src))
    data = images.info(Context.create(env.settings, policy), src, 'qcow2')
    assert policy.acted
    assert data['format'] == 'qcow2' and data['filename'] == src
