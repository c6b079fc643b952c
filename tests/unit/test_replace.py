# SPDX-License-Identifier: Apache-2.0
"""Output(replace=True): an existing output replaced atomically.

Each test plays the owner of the allowed directory, who may swap any name
in it at any moment: the final name is judged by lstat through the opened
directory, at the open and again just before the rename; rename(2) never
follows a symbolic link, so a name swapped after that check only loses the
caller's own file, and nothing outside the directory changes.
"""

import os
import socket
import stat

import pytest

from accel_daemon.engine import files
from accel_daemon.engine import paths
from accel_daemon import exception


from tests.unit.conftest import on_copy_in
from tests.unit.conftest import StagedOutput

OUTPUTS = pytest.mark.parametrize('output', [files.Output, StagedOutput],
                                  ids=['tmpfile', 'staged'])


def replace(output, conf, path, data=b'new', mode=0o640):
    with output(conf, str(path), mode=mode, replace=True) as out:
        os.write(out.fd, data)
        out.commit()


def race_before_rename(monkeypatch, swap):
    """Run ``swap(out)`` right after the last check of the final name, as
    a directory owner winning the race would."""
    real = files.Output._check_replaceable

    def check(self):
        real(self)
        if self.committed is False and self.publish_name is not None:
            swap(self)
    monkeypatch.setattr(files.Output, '_check_replaceable', check)


# --- replacing -------------------------------------------------------------
@OUTPUTS
def test_replace_publishes_over_an_existing_file(output, conf, allowed):
    final = allowed / 'out.raw'
    final.write_bytes(b'old contents, longer than the new')
    os.chmod(final, 0o600)
    old_ino = os.stat(final).st_ino
    replace(output, conf, final, b'new', mode=0o640)
    assert final.read_bytes() == b'new'
    st = os.stat(final)
    assert st.st_ino != old_ino and st.st_nlink == 1
    assert stat.S_IMODE(st.st_mode) == 0o640
    assert os.listdir(allowed) == ['out.raw']


@OUTPUTS
def test_replace_takes_the_owner_of_the_directory(output, conf, allowed):
    if os.geteuid() != 0:
        pytest.skip('needs root to give files away')
    final = allowed / 'out.raw'
    final.write_bytes(b'old')
    os.chown(allowed, 65534, 65534)
    replace(output, conf, final)
    st = os.stat(final)
    assert (st.st_uid, st.st_gid) == (65534, 65534)


@OUTPUTS
def test_replace_without_an_existing_output_creates_it(output, conf,
                                                       allowed):
    replace(output, conf, allowed / 'out.raw')
    assert (allowed / 'out.raw').read_bytes() == b'new'
    assert os.listdir(allowed) == ['out.raw']


@OUTPUTS
def test_in_place_the_source_is_read_through_its_descriptor(output, conf,
                                                            allowed):
    f = allowed / 'vol.tmp'
    f.write_bytes(b'original')
    with files.open_source(conf, str(f)) as src, \
            output(conf, str(f), replace=True) as out:
        os.write(out.fd, os.pread(src.fd, 100, 0).upper())
        out.commit()
        # The rename replaced the name only: the opened source is intact.
        assert os.pread(src.fd, 100, 0) == b'original'
    assert f.read_bytes() == b'ORIGINAL'
    assert os.listdir(allowed) == ['vol.tmp']


def test_without_replace_an_existing_output_is_still_refused(conf, allowed):
    (allowed / 'out').write_bytes(b'old')
    with pytest.raises(exception.OutputExists):
        files.Output(conf, str(allowed / 'out')).__enter__()
    assert (allowed / 'out').read_bytes() == b'old'


# --- refusals at the open: nothing written, nothing left ---------------------
def _symlink(allowed, victim):
    (allowed / 'out').symlink_to(victim)


def _fifo(allowed, victim):
    os.mkfifo(allowed / 'out')


def _directory(allowed, victim):
    (allowed / 'out').mkdir()


def _hard_link(allowed, victim):
    (allowed / 'other').write_bytes(b'theirs')
    os.link(allowed / 'other', allowed / 'out')


def _hard_link_out(allowed, victim):
    os.link(victim, allowed / 'out')


def _socket(allowed, victim):
    s = socket.socket(socket.AF_UNIX)
    s.bind(str(allowed / 'out'))
    s.close()


def _device(allowed, victim):
    if os.geteuid() != 0:
        pytest.skip('mknod needs root')
    os.mknod(allowed / 'out', 0o600 | stat.S_IFCHR, os.makedev(1, 3))


REFUSED = pytest.mark.parametrize('make, error', [
    (_symlink, exception.SymlinkEscape),
    (_fifo, exception.PathNotAllowed),
    (_directory, exception.PathNotAllowed),
    (_hard_link, exception.PathNotAllowed),
    (_hard_link_out, exception.PathNotAllowed),
    (_socket, exception.PathNotAllowed),
    (_device, exception.PathNotAllowed),
], ids=['symlink', 'fifo', 'directory', 'hard-link', 'hard-link-outside',
        'socket', 'device-node'])


def _state(allowed, victim):
    names = {}
    for n in sorted(os.listdir(allowed)):
        if n.startswith(paths.TEMP_PREFIX):
            continue        # ours (named fallback): checked apart
        st = os.lstat(allowed / n)
        names[n] = (st.st_ino, st.st_mode, st.st_nlink, st.st_mtime_ns)
    return names, victim.read_bytes(), os.stat(victim).st_nlink


@OUTPUTS
@REFUSED
def test_refused_at_open(output, conf, allowed, victim, make, error):
    make(allowed, victim)
    before = _state(allowed, victim)
    with pytest.raises(error) as err:
        output(conf, str(allowed / 'out'), replace=True).__enter__()
    assert type(err.value) is error
    assert _state(allowed, victim) == before
    assert paths.stray_temp_files(str(allowed)) == []


@OUTPUTS
@REFUSED
def test_refused_at_commit_when_the_name_changed_meanwhile(
        output, conf, allowed, victim, make, error):
    (allowed / 'out').write_bytes(b'caller')
    with pytest.raises(error):
        with output(conf, str(allowed / 'out'), replace=True) as out:
            os.write(out.fd, b'ours')
            os.unlink(allowed / 'out')
            make(allowed, victim)
            before = _state(allowed, victim)
            out.commit()
    # Nothing published, no temp name left, the victim untouched.
    assert _state(allowed, victim) == before
    assert paths.stray_temp_files(str(allowed)) == []
    assert victim.read_bytes() == b'root:secret\n'


@OUTPUTS
def test_outside_refused(output, conf, tmp_path, victim):
    with pytest.raises(exception.PathNotAllowed):
        output(conf, str(victim), replace=True).__enter__()
    assert victim.read_bytes() == b'root:secret\n'
    assert os.listdir(tmp_path / 'outside') == ['victim']


@OUTPUTS
def test_directory_symlink_leading_out_refused(output, conf, allowed,
                                               victim):
    (allowed / 'door').symlink_to(victim.parent)
    with pytest.raises(exception.SymlinkEscape):
        output(conf, str(allowed / 'door' / 'victim'),
               replace=True).__enter__()
    assert victim.read_bytes() == b'root:secret\n'


@OUTPUTS
def test_error_while_writing_leaves_the_old_file(output, conf, allowed):
    final = allowed / 'out'
    final.write_bytes(b'caller')
    with pytest.raises(RuntimeError):
        with output(conf, str(final), replace=True) as out:
            os.write(out.fd, b'partial')
            raise RuntimeError('boom')
    assert final.read_bytes() == b'caller'
    assert os.listdir(allowed) == ['out']


@OUTPUTS
def test_rename_failure_removes_the_publish_name(output, conf, allowed,
                                                 monkeypatch):
    final = allowed / 'out'
    final.write_bytes(b'caller')

    def refuse(*args, **kwargs):
        raise OSError(28, 'No space left on device')
    monkeypatch.setattr(os, 'rename', refuse)
    with pytest.raises(exception.NoSpace):
        replace(output, conf, final)
    assert final.read_bytes() == b'caller'
    assert os.listdir(allowed) == ['out']


# --- the race between the last check and the rename -------------------------
@OUTPUTS
def test_symlink_swapped_in_after_the_check_is_replaced_not_followed(
        output, conf, allowed, victim, monkeypatch):
    final = allowed / 'out'
    final.write_bytes(b'caller')

    def swap(out):
        final.unlink()
        final.symlink_to(victim)
    race_before_rename(monkeypatch, swap)
    replace(output, conf, final, b'ours')
    # The symbolic link was replaced as a name; its target is untouched.
    assert not final.is_symlink() and final.read_bytes() == b'ours'
    assert victim.read_bytes() == b'root:secret\n'
    assert os.stat(victim).st_nlink == 1
    assert os.listdir(allowed) == ['out']


@OUTPUTS
def test_hard_link_swapped_in_after_the_check_only_loses_the_name(
        output, conf, allowed, victim, monkeypatch):
    final = allowed / 'out'
    final.write_bytes(b'caller')

    def swap(out):
        final.unlink()
        os.link(victim, final)
    race_before_rename(monkeypatch, swap)
    replace(output, conf, final, b'ours')
    assert final.read_bytes() == b'ours'
    assert victim.read_bytes() == b'root:secret\n'
    assert os.stat(victim).st_nlink == 1


@OUTPUTS
def test_directory_swapped_in_after_the_check_fails_typed(
        output, conf, allowed, victim, monkeypatch):
    final = allowed / 'out'
    final.write_bytes(b'caller')

    def swap(out):
        final.unlink()
        final.mkdir()
        (final / 'keep').write_bytes(b'theirs')
    race_before_rename(monkeypatch, swap)
    with pytest.raises(exception.PathNotAllowed):
        replace(output, conf, final, b'ours')
    assert (final / 'keep').read_bytes() == b'theirs'
    assert os.listdir(allowed) == ['out']


@OUTPUTS
def test_publish_name_swapped_for_a_symlink_changes_nothing_outside(
        output, conf, allowed, victim, monkeypatch):
    final = allowed / 'out'
    final.write_bytes(b'caller')

    def swap(out):
        # Their symbolic link renamed over our fresh temp name.
        (allowed / 'theirs').symlink_to(victim)
        os.rename(allowed / 'theirs', allowed / out.publish_name)
    race_before_rename(monkeypatch, swap)
    replace(output, conf, final, b'ours')
    # Their link is what they get under the name (they could have put it
    # there after us anyway); the victim is neither written nor read.
    assert os.readlink(final) == str(victim)
    assert victim.read_bytes() == b'root:secret\n'
    assert paths.stray_temp_files(str(allowed)) == []


def test_copy_in_temp_swapped_for_a_symlink_publishes_our_inode(
        conf, allowed, victim, monkeypatch):
    final = allowed / 'out.raw'
    final.write_bytes(b'caller')

    def swap(out):
        temp = allowed / out.temp_name
        os.rename(temp, allowed / 'moved')
        temp.symlink_to(victim)
        swap.temp = temp
    on_copy_in(monkeypatch, swap)
    with StagedOutput(conf, str(final), replace=True) as out:
        os.write(out.fd, b'ours')
        out.commit()
    # The fresh publish name links the descriptor, not the temp name.
    assert not final.is_symlink() and final.read_bytes() == b'ours'
    assert victim.read_bytes() == b'root:secret\n'
    assert os.readlink(swap.temp) == str(victim)


# --- block devices -----------------------------------------------------------
def test_replace_refused_for_a_device(allowed):
    loose = paths.Confinement([str(allowed)], ['/dev/null'])
    with pytest.raises(exception.InvalidRequest) as err:
        files.Output(loose, '/dev/null', devices=True,
                     replace=True).__enter__()
    assert type(err.value) is exception.InvalidRequest
    assert 'block devices' in err.value.message


# --- the RPC layer's pre-check -----------------------------------------------
def test_pre_check_accepts_a_replaceable_output(allowed):
    (allowed / 'out').write_bytes(b'old')
    dirs = [str(allowed)]
    with pytest.raises(exception.OutputExists):
        paths.check_output(str(allowed / 'out'), dirs)
    assert paths.check_output(str(allowed / 'out'), dirs,
                              replace=True) == str(allowed / 'out')
    assert paths.check_output(str(allowed / 'new'), dirs,
                              replace=True) == str(allowed / 'new')


@REFUSED
def test_pre_check_refusals(allowed, victim, make, error):
    make(allowed, victim)
    with pytest.raises(error):
        paths.check_output(str(allowed / 'out'), [str(allowed)],
                           replace=True)


def test_pre_check_refuses_replace_on_a_device(allowed):
    if not os.path.exists('/dev/loop0'):
        pytest.skip('no block device to name')
    with pytest.raises(exception.InvalidRequest):
        paths.check_output('/dev/loop0', [str(allowed)], ['/dev/loop*'],
                           replace=True)
