"""Security review regressions with the real qemu-img: the source or the
temp output renamed to a symlink by the owner of the allowed directory
after every check, just before qemu-img starts, must change nothing."""

import os

import pytest

from accel_daemon import exception
from accel_daemon.engine import images
from accel_daemon.engine import paths
from accel_daemon.engine.filters import CommandPolicy
from tests.functional import imagegen as gen

MiB = 1024 * 1024

pytestmark = gen.REQUIRES_QEMU


class SwapBeforeExec(CommandPolicy):
    """The shipped filters, plus a hook that runs as the command is about
    to be exec'ed: the last moment an attacker could swap a name."""

    def __init__(self, policy: CommandPolicy, verb: str, swap) -> None:
        super().__init__(policy.filters_path, policy.exec_dirs)
        self.verb, self.swap, self.swapped = verb, swap, False

    def check(self, argv):
        if not self.swapped and argv[1:2] == [self.verb]:
            self.swapped = True
            self.swap()
        return super().check(argv)


def symlink_over(target: str, name: str) -> None:
    tmp = name + '.evil'
    os.symlink(target, tmp)
    os.rename(tmp, name)


def test_temp_output_swapped_before_convert(env):
    src = gen.write(env.path('in.raw'), b'\xab' * MiB)
    victim = os.path.join(env.root, 'victim')
    gen.write(victim, b'root:secret\n')

    def swap():
        (temp,) = paths.stray_temp_files(env.images)
        symlink_over(victim, env.path(temp))

    policy = SwapBeforeExec(env.policy, 'convert', swap)
    with pytest.raises(exception.PathNotAllowed):
        images.convert(src, env.path('out.raw'), 'raw', 'raw', env.settings,
                       policy)
    assert policy.swapped
    with open(victim, 'rb') as f:
        assert f.read() == b'root:secret\n'
    assert not os.path.lexists(env.path('out.raw'))
    # Only the attacker's own symlink is left beside the input.
    left = sorted(set(os.listdir(env.images)) - {'in.raw'})
    assert len(left) == 1 and os.path.islink(env.path(left[0]))


def test_source_swapped_before_convert(env):
    src = gen.write(env.path('in.raw'), b'\xab' * MiB)
    keep = env.path('in.keep')
    os.link(src, keep)
    secret = os.path.join(env.root, 'secret')
    gen.write(secret, b'S' * MiB)
    policy = SwapBeforeExec(env.policy, 'convert',
                            lambda: symlink_over(secret, src))
    # qemu-img reads the inspected inode, not the file the name now names;
    # the rename also touched that inode (its link count), so the result
    # is refused rather than published.
    with pytest.raises(exception.UnsafeImage):
        images.convert(src, env.path('out.raw'), 'raw', 'raw',
                       env.settings, policy)
    assert policy.swapped
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

    policy = SwapBeforeExec(env.policy, 'convert', rewrite)
    with pytest.raises(exception.UnsafeImage):
        images.convert(src, env.path('out.raw'), 'qcow2', 'raw',
                       env.settings, policy)
    assert policy.swapped
    assert not os.path.lexists(env.path('out.raw'))
    assert paths.stray_temp_files(env.images) == []


def test_partial_output_is_private_until_published(env):
    src = gen.write(env.path('in.raw'), b'\xab' * MiB)
    modes = []

    def look():
        (temp,) = paths.stray_temp_files(env.images)
        modes.append(os.stat(env.path(temp)).st_mode & 0o777)

    policy = SwapBeforeExec(env.policy, 'convert', look)
    result = images.convert(src, env.path('out.raw'), 'raw', 'raw',
                            env.settings, policy)
    assert modes == [0o600]
    assert os.stat(result['output']).st_mode & 0o777 == 0o640


def test_source_swapped_before_info(env):
    src = gen.qcow2_with_data(env.path('src.qcow2'))
    secret = os.path.join(env.root, 'secret.raw')
    gen.write(secret, b'S' * 3 * MiB)
    policy = SwapBeforeExec(env.policy, 'info',
                            lambda: symlink_over(secret, src))
    data = images.info(src, 'qcow2', env.settings, policy)
    assert policy.swapped
    assert data['format'] == 'qcow2' and data['filename'] == src
