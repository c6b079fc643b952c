# SPDX-License-Identifier: Apache-2.0
"""Open once (engine.files): names are looked up once, the opened file is
judged, and only the descriptor is used afterwards.  Each test plays the
owner of the allowed directory swapping names at the worst moment."""

import os
import stat
import time

import pytest

from accel_daemon.engine import files
from accel_daemon.engine import paths
from accel_daemon.engine.progress import Progress
from accel_daemon import exception
from tests.unit.conftest import on_copy_in
from tests.unit.conftest import StagedOutput


# --- sources -------------------------------------------------------------
def test_source_is_judged_after_opening(conf, allowed):
    f = allowed / 'a.img'
    f.write_bytes(b'image')
    with files.open_source(conf, str(f)) as src:
        assert src.real == str(f) and not src.is_device
        assert os.pread(src.fd, 5, 0) == b'image'
        # O_NONBLOCK was only for the open.
        assert os.get_blocking(src.fd)


def test_swapping_the_name_after_the_open_changes_nothing(conf, allowed,
                                                          victim):
    f = allowed / 'a.img'
    f.write_bytes(b'image')
    with files.open_source(conf, str(f)) as src:
        f.unlink()
        f.symlink_to(victim)
        assert os.pread(src.fd, 100, 0) == b'image'


def test_symlink_source_refused(conf, allowed, victim):
    (allowed / 'a.img').symlink_to(victim)
    with pytest.raises(exception.SymlinkEscape):
        files.open_source(conf, str(allowed / 'a.img'))


def test_parent_symlink_leading_out_refused(conf, allowed, victim):
    (allowed / 'door').symlink_to(victim.parent)
    with pytest.raises(exception.SymlinkEscape):
        files.open_source(conf, str(allowed / 'door' / 'victim'))


def test_fifo_source_refused_without_blocking(conf, allowed):
    os.mkfifo(allowed / 'fifo')
    started = time.monotonic()
    with pytest.raises(exception.PathNotAllowed):
        files.open_source(conf, str(allowed / 'fifo'))
    assert time.monotonic() - started < 1


@pytest.mark.parametrize('name,error', [
    ('missing', exception.InputNotFound),
    ('dir', exception.PathNotAllowed),
    ('file.img/', exception.PathNotAllowed),            # ENOTDIR
    ('file.img/x', exception.PathNotAllowed),           # ENOTDIR
    ('n' * 256, exception.PathNotAllowed),              # ENAMETOOLONG
])
def test_bad_names_are_typed(conf, allowed, name, error):
    (allowed / 'dir').mkdir()
    (allowed / 'file.img').write_bytes(b'x')
    with pytest.raises(error):
        files.open_source(conf, str(allowed) + '/' + name)


def test_devices_need_a_pattern(conf):
    with pytest.raises(exception.PathNotAllowed):
        files.open_source(conf, '/dev/null')
    loose = paths.Confinement([], ['/dev/*'])
    with pytest.raises(exception.PathNotAllowed):    # a character device
        files.open_source(loose, '/dev/null')


def test_proc_root_is_not_a_way_out(conf):
    with pytest.raises(exception.PathNotAllowed):
        files.open_source(conf, '/proc/1/root/etc/passwd')


# --- outputs -------------------------------------------------------------
def test_output_is_unnamed_until_published(conf, allowed):
    final = allowed / 'out.gz'
    with files.Output(conf, str(final), mode=0o640) as out:
        os.write(out.fd, b'data')
        assert os.listdir(allowed) == []
        out.commit()
    assert final.read_bytes() == b'data'
    assert stat.S_IMODE(os.stat(final).st_mode) == 0o640
    assert os.listdir(allowed) == ['out.gz']


def test_output_discarded_on_error_leaves_nothing(conf, allowed):
    with pytest.raises(RuntimeError):
        with files.Output(conf, str(allowed / 'out.gz')) as out:
            os.write(out.fd, b'partial')
            raise RuntimeError('boom')
    assert os.listdir(allowed) == []


def test_existing_output_refused_at_open(conf, allowed, victim):
    (allowed / 'out').symlink_to(victim)
    with pytest.raises(exception.OutputExists):
        files.Output(conf, str(allowed / 'out')).__enter__()
    assert victim.read_bytes() == b'root:secret\n'


def test_name_taken_meanwhile_is_never_clobbered(conf, allowed, victim):
    final = allowed / 'out.gz'
    with pytest.raises(exception.OutputExists):
        with files.Output(conf, str(final)) as out:
            os.write(out.fd, b'ours')
            final.symlink_to(victim)       # the owner takes the name
            out.commit()
    assert os.readlink(final) == str(victim)
    assert victim.read_bytes() == b'root:secret\n'


def test_output_directory_swapped_after_open_keeps_the_output_inside(
        conf, allowed, tmp_path):
    sub = allowed / 'sub'
    sub.mkdir()
    with files.Output(conf, str(sub / 'out')) as out:
        os.rename(sub, allowed / 'sub.old')
        os.symlink(tmp_path / 'outside', sub)
        os.write(out.fd, b'ours')
        out.commit()
    assert os.listdir(tmp_path / 'outside') == []
    assert (allowed / 'sub.old' / 'out').read_bytes() == b'ours'


@pytest.mark.parametrize('name', ['out/', 'missing/out', '.'])
def test_output_names_that_are_not_files(conf, allowed, name):
    with pytest.raises(exception.PathNotAllowed):
        files.Output(conf, str(allowed) + '/' + name).__enter__()


def test_output_outside_refused(conf, tmp_path):
    with pytest.raises(exception.PathNotAllowed):
        files.Output(conf, str(tmp_path / 'outside' / 'x')).__enter__()
    assert os.listdir(tmp_path / 'outside') == []


def test_device_output_only_when_asked(tmp_path):
    loose = paths.Confinement([str(tmp_path)], ['/dev/null'])
    with pytest.raises(exception.InvalidRequest):
        files.Output(loose, '/dev/null').__enter__()


# --- without O_TMPFILE: made in the staging directory, copied in ---------
MIB = 1024 * 1024


def names(directory):
    return sorted(os.listdir(directory)) if directory.exists() else []


def test_a_staged_output_is_named_only_once_accepted(conf, allowed, staging):
    final = allowed / 'out'
    with StagedOutput(conf, str(final)) as out:
        os.pwrite(out.fd, b'head', 0)
        os.pwrite(out.fd, b'tail', 8 * MIB)
        # While it is made, the caller's directory shows nothing, and the
        # staging directory is root's alone and holds no name either.
        assert names(allowed) == [] and names(staging) == []
        st = os.stat(staging)
        assert st.st_uid == os.geteuid() and stat.S_IMODE(st.st_mode) == 0o700
        out.commit()
    assert names(allowed) == ['out'] and names(staging) == []
    data = final.read_bytes()
    assert data[:4] == b'head' and data[8 * MIB:] == b'tail'
    assert len(data) == 8 * MIB + 4
    # The copy-in kept the hole.
    assert os.stat(final).st_blocks * 512 < 4 * MIB
    assert stat.S_IMODE(os.stat(final).st_mode) == 0o640


def test_a_refused_staged_output_leaves_nothing(conf, allowed, staging):
    with pytest.raises(RuntimeError):
        with StagedOutput(conf, str(allowed / 'out')) as out:
            os.write(out.fd, b'refused content' * 1000)
            raise RuntimeError('refused')
    assert names(allowed) == [] and names(staging) == []


def test_without_a_staging_dir_such_a_directory_is_refused(conf, allowed):
    with pytest.raises(exception.PathNotAllowed) as e:
        with StagedOutput(conf, str(allowed / 'out'), staging_dir=None):
            pass
    assert 'O_TMPFILE' in e.value.message
    assert names(allowed) == []


@pytest.mark.parametrize('bad', ['open', 'symlink'])
def test_a_staging_dir_others_can_enter_is_refused(conf, allowed, tmp_path,
                                                   bad):
    staging = tmp_path / 'shared'
    staging.mkdir(mode=0o755)
    os.chmod(staging, 0o755)
    if bad == 'symlink':
        os.chmod(staging, 0o700)
        (tmp_path / 'link').symlink_to(staging)
        staging = tmp_path / 'link'
    with pytest.raises(exception.InternalError) as e:
        with StagedOutput(conf, str(allowed / 'out'),
                          staging_dir=str(staging)):
            pass
    assert 'staging_dir' in e.value.message
    assert names(allowed) == []


def test_a_copy_in_that_fails_leaves_nothing(conf, allowed, staging,
                                             monkeypatch):
    # The caller's file system fills up halfway through the copy, after
    # the directory's owner renamed our temp name to keep it.
    def full(src, dst, size, each=None, block_size=None):
        os.pwrite(dst, b'half', 0)
        raise OSError(28, 'No space left on device')

    def keep(out):
        os.rename(allowed / out.temp_name, allowed / 'kept')
    on_copy_in(monkeypatch, keep)
    monkeypatch.setattr(files.directio, 'copy_extents', full)
    with pytest.raises(OSError):
        with StagedOutput(conf, str(allowed / 'out')) as out:
            os.write(out.fd, b'accepted' * 1000)
            out.commit()
    # What they kept is empty; nothing else is named, nothing is staged.
    assert names(allowed) == ['kept'] and names(staging) == []
    assert (allowed / 'kept').read_bytes() == b''


def test_a_cancel_during_the_copy_in_leaves_nothing(conf, allowed, staging,
                                                    monkeypatch):
    progress = Progress()
    on_copy_in(monkeypatch, lambda out: progress.cancel())
    with pytest.raises(exception.Cancelled):
        with StagedOutput(conf, str(allowed / 'out')) as out:
            os.write(out.fd, b'x' * 4096)
            out.commit(progress)
    assert names(allowed) == [] and names(staging) == []


def test_an_output_being_copied_in_is_not_an_input(conf, allowed,
                                                   monkeypatch):
    def read_it(out):
        os.link(allowed / out.temp_name, allowed / 'alias')
        for name in (out.temp_name, 'alias'):
            with pytest.raises(exception.PathNotAllowed) as e:
                files.open_source(conf, str(allowed / name))
            assert 'being written' in e.value.message
        read_it.called = True
    on_copy_in(monkeypatch, read_it)
    with StagedOutput(conf, str(allowed / 'out')) as out:
        os.write(out.fd, b'in flight')
        out.commit()
    assert read_it.called
    os.unlink(allowed / 'alias')
    # Once published and closed, it is a file like any other.
    with files.open_source(conf, str(allowed / 'out')) as src:
        assert os.pread(src.fd, 100, 0) == b'in flight'


def test_an_output_being_written_is_not_an_input(conf, allowed):
    with files.Output(conf, str(allowed / 'out')) as out:
        os.write(out.fd, b'in flight')
        # A name given to the unnamed file (as root could, through /proc).
        dir_fd = os.open(allowed, os.O_RDONLY | os.O_DIRECTORY)
        try:
            os.link('/proc/self/fd/%d' % out.fd, 'alias',
                    dst_dir_fd=dir_fd, follow_symlinks=True)
        finally:
            os.close(dir_fd)
        with pytest.raises(exception.PathNotAllowed) as e:
            files.open_source(conf, str(allowed / 'alias'))
        assert 'being written' in e.value.message
        out.commit()
    os.unlink(allowed / 'alias')


def test_copy_in_temp_swapped_for_a_symlink_publishes_our_inode(
        conf, allowed, victim, monkeypatch):
    final = allowed / 'out.raw'

    def swap(out):
        temp = allowed / out.temp_name
        os.rename(temp, allowed / 'moved')
        temp.symlink_to(victim)
        swap.temp = temp
    on_copy_in(monkeypatch, swap)
    with StagedOutput(conf, str(final)) as out:
        os.write(out.fd, b'ours')
        out.commit()
    assert final.read_bytes() == b'ours'
    assert victim.read_bytes() == b'root:secret\n'
    # Their symlink under our temp name was neither published nor removed.
    assert os.readlink(swap.temp) == str(victim)
