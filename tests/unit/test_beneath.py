# SPDX-License-Identifier: Apache-2.0
"""Opens never leave the allowed tree (engine.beneath through
engine.files): nothing outside is opened, and a name outside gets the
same answer whether it exists or not."""

from __future__ import annotations

import os
import threading

import pytest

from accel_daemon.engine import beneath
from accel_daemon.engine import files
from accel_daemon.engine import paths
from accel_daemon import exception

pytestmark = pytest.mark.skipif(not beneath.available(),
                                reason='this kernel has no openat2')


@pytest.fixture
def tree(tmp_path):
    allowed = tmp_path / 'allowed'
    outside = tmp_path / 'outside'
    allowed.mkdir()
    outside.mkdir()
    (outside / 'secret.img').write_bytes(b'secret')
    return allowed, outside, paths.Confinement([str(allowed)])


class BlockedWriter:
    """A FIFO whose writer waits for a reader: opening it for reading,
    even O_NONBLOCK, wakes the writer.  So it tells whether anybody
    opened it."""

    def __init__(self, path) -> None:
        os.mkfifo(path)
        self.path = path
        self.thread = threading.Thread(target=self._write, daemon=True)
        self.thread.start()

    def _write(self) -> None:
        fd = os.open(self.path, os.O_WRONLY)
        os.close(fd)

    def opened(self) -> bool:
        self.thread.join(0.3)
        return not self.thread.is_alive()

    def release(self) -> None:
        fd = os.open(self.path, os.O_RDONLY | os.O_NONBLOCK)
        self.thread.join(5)
        os.close(fd)


def test_a_parent_swapped_for_a_link_opens_nothing_outside(tree):
    allowed, outside, conf = tree
    fifo = BlockedWriter(outside / 'watchdog')
    (allowed / 'dev').symlink_to(outside)
    try:
        with pytest.raises(exception.SymlinkEscape):
            files.open_source(conf, str(allowed / 'dev' / 'watchdog'))
        assert not fifo.opened()
    finally:
        fifo.release()


def test_outside_existing_or_not_gets_one_answer(tree):
    allowed, outside, conf = tree
    (allowed / 'out').symlink_to(outside)
    answers = set()
    for name in ('secret.img', 'no-such.img'):
        with pytest.raises(exception.PathNotAllowed) as e:
            files.open_source(conf, str(allowed / 'out' / name))
        answers.add((type(e.value), e.value.message.replace(name, '*')))
        with pytest.raises(exception.PathNotAllowed) as e:
            files.open_source(conf, str(outside / name))
        answers.add((type(e.value), e.value.message.replace(name, '*')))
    assert answers == {
        (exception.SymlinkEscape,
         'Path %s/out/* is a symbolic link or leaves the allowed '
         'directories' % allowed),
        (exception.PathNotAllowed,
         'Path %s/* is not allowed: outside the allowed directories and '
         'allowed_block_devices' % outside)}


def test_links_to_the_proc_magic_are_refused(tree):
    allowed, _, conf = tree
    (allowed / 'root').symlink_to('/proc/self/root')
    with pytest.raises(exception.SymlinkEscape):
        files.open_source(conf, str(allowed / 'root' / 'etc' / 'passwd'))


def test_links_that_stay_beneath_are_followed(tree):
    allowed, _, conf = tree
    (allowed / 'real').mkdir()
    (allowed / 'real' / 'disk.img').write_bytes(b'disk')
    (allowed / 'alias').symlink_to('real')
    with files.open_source(conf, str(allowed / 'alias' / 'disk.img')) as f:
        assert os.pread(f.fd, 4, 0) == b'disk'


def test_an_allowed_directory_replaced_by_a_link_is_refused(tree):
    allowed, outside, conf = tree
    os.rename(allowed, str(allowed) + '.old')
    allowed.symlink_to(outside)
    with pytest.raises(exception.PathNotAllowed) as e:
        files.open_source(conf, str(allowed / 'secret.img'))
    assert 'the allowed directory cannot be opened' in e.value.message


def test_output_directories_are_judged_the_same_way(tree):
    allowed, outside, conf = tree
    (allowed / 'sub').symlink_to(outside)
    with pytest.raises(exception.SymlinkEscape):
        with files.Output(conf, str(allowed / 'sub' / 'new.img')):
            pass
    assert os.listdir(outside) == ['secret.img']


def test_a_request_may_name_the_configured_or_the_resolved_directory(
        tmp_path):
    real = tmp_path / 'real'
    real.mkdir()
    (real / 'disk.img').write_bytes(b'disk')
    (tmp_path / 'configured').symlink_to(real)
    conf = paths.Confinement([str(tmp_path / 'configured')])
    for name in (tmp_path / 'configured' / 'disk.img', real / 'disk.img'):
        with files.open_source(conf, str(name)) as f:
            assert os.pread(f.fd, 4, 0) == b'disk'


@pytest.mark.skipif(os.geteuid() != 0, reason='chown needs root')
def test_a_hard_link_to_another_owners_file_is_refused(tree):
    allowed, _, conf = tree
    os.chown(allowed, 4242, 4242)             # the service's directory
    mine = allowed / 'mine.img'
    mine.write_bytes(b'mine')
    os.chown(mine, 4242, 4242)
    os.link(mine, allowed / 'mine-too.img')
    theirs = allowed / 'theirs.img'           # root's, as /etc/shadow is
    theirs.write_bytes(b'root')
    os.link(theirs, allowed / 'linked.img')
    with files.open_source(conf, str(allowed / 'mine-too.img')) as f:
        assert os.pread(f.fd, 4, 0) == b'mine'
    for name in ('linked.img', 'theirs.img'):
        with pytest.raises(exception.PathNotAllowed) as e:
            files.open_source(conf, str(allowed / name))
        assert e.value.message.endswith(
            'a hard link to a file the owner of its directory does not own')
    # One link, whoever owns it: an ordinary file of the directory.
    os.unlink(allowed / 'linked.img')
    with files.open_source(conf, str(theirs)) as f:
        assert os.pread(f.fd, 4, 0) == b'root'


@pytest.mark.parametrize('value, protected', [('1\n', True), ('0\n', False),
                                              (None, None)])
def test_protected_hardlinks_is_read_from_proc(tmp_path, value, protected):
    if value is not None:
        (tmp_path / 'sys' / 'fs').mkdir(parents=True)
        (tmp_path / 'sys' / 'fs' / 'protected_hardlinks').write_text(value)
    assert paths.hardlinks_protected(str(tmp_path)) is protected
