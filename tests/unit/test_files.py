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
from accel_daemon import exception


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


# --- without O_TMPFILE: a private temp name ---------------------------------
class NamedOutput(files.Output):
    use_tmpfile = False


def test_named_temp_is_private_and_removed(conf, allowed):
    with pytest.raises(RuntimeError):
        with NamedOutput(conf, str(allowed / 'out')) as out:
            st = os.stat(allowed / out.temp_name)
            assert stat.S_IMODE(st.st_mode) == 0o600
            raise RuntimeError('boom')
    assert os.listdir(allowed) == []


def test_a_refused_output_its_owner_renamed_is_left_empty(conf, allowed):
    # The owner of the directory renames our temp name to keep the output
    # of a request that is about to be refused: they keep an empty file.
    with pytest.raises(RuntimeError):
        with NamedOutput(conf, str(allowed / 'out')) as out:
            os.write(out.fd, b'refused content' * 1000)
            os.rename(allowed / out.temp_name, allowed / 'kept')
            raise RuntimeError('refused')
    assert os.listdir(allowed) == ['kept']
    assert (allowed / 'kept').read_bytes() == b''


def test_an_output_being_written_is_not_an_input(conf, allowed):
    with NamedOutput(conf, str(allowed / 'out')) as out:
        os.write(out.fd, b'in flight')
        os.link(allowed / out.temp_name, allowed / 'alias')
        for name in (out.temp_name, 'alias'):
            with pytest.raises(exception.PathNotAllowed) as e:
                files.open_source(conf, str(allowed / name))
            assert 'being written' in e.value.message
        out.commit()
    os.unlink(allowed / 'alias')
    # Once published and closed, it is a file like any other.
    with files.open_source(conf, str(allowed / 'out')) as src:
        assert os.pread(src.fd, 100, 0) == b'in flight'


def test_named_temp_swapped_for_a_symlink_publishes_our_inode(conf, allowed,
                                                              victim):
    final = allowed / 'out.raw'
    with NamedOutput(conf, str(final)) as out:
        temp = allowed / out.temp_name
        os.rename(temp, allowed / 'moved')
        temp.symlink_to(victim)
        os.write(out.fd, b'ours')
        out.commit()
    assert final.read_bytes() == b'ours'
    assert victim.read_bytes() == b'root:secret\n'
    # Their symlink under our temp name was neither published nor removed.
    assert os.readlink(temp) == str(victim)
