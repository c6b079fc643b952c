"""Security review regressions: names swapped by the owner of an allowed
directory between our checks and the use of the file (no external tools)."""

import os
import time

import pytest

from accel_daemon import exception
from accel_daemon.engine import api
from accel_daemon.engine import filters
from accel_daemon.engine import paths
from accel_daemon.engine import process
from accel_daemon.engine import qemu_img
from accel_daemon.engine.progress import Progress
from accel_daemon.engine.settings import Settings


@pytest.fixture
def allowed(tmp_path):
    d = tmp_path / 'allowed'
    d.mkdir()
    return d


@pytest.fixture
def victim(tmp_path):
    v = tmp_path / 'victim'
    v.write_bytes(b'root:secret\n')
    return v


def test_temp_swapped_for_symlink_is_not_written_or_published(allowed,
                                                              victim):
    final = str(allowed / 'out.raw')
    with pytest.raises(exception.PathNotAllowed):
        with paths.AtomicOutput(final) as out:
            # The directory's owner renames a symlink over the temp name.
            link = str(allowed / 'evil')
            os.symlink(str(victim), link)
            os.rename(link, out.path)
            os.write(out.fd, b'image bytes')
            out.commit()
    assert victim.read_bytes() == b'root:secret\n'
    assert not os.path.lexists(final)
    # The attacker's own symlink stays; none of our temp files does.
    assert os.listdir(allowed) == [os.path.basename(out.path)]
    assert os.path.islink(out.path)


def test_commit_publishes_the_inode_written_not_the_name(allowed):
    final = str(allowed / 'out.raw')
    with paths.AtomicOutput(final) as out:
        os.write(out.fd, b'ours')
        # Renamed away (our inode survives under another name) and the
        # temp name now holds the attacker's file.
        os.rename(out.path, str(allowed / 'moved'))
        (allowed / os.path.basename(out.path)).write_bytes(b'theirs')
        out.commit()
    assert open(final, 'rb').read() == b'ours'
    # Their file under our temp name was neither published nor removed.
    assert (allowed / os.path.basename(out.path)).read_bytes() == b'theirs'


def test_parent_swapped_after_check_is_refused(tmp_path, allowed):
    sub = allowed / 'sub'
    sub.mkdir()
    outside = tmp_path / 'outside'
    outside.mkdir()
    real = paths.check_output(str(sub / 'out.raw'), [str(allowed)])
    # After the check, 'sub' becomes a symlink to a directory elsewhere.
    os.rename(str(sub), str(allowed / 'sub.old'))
    os.symlink(str(outside), str(sub))
    with pytest.raises(exception.SymlinkEscape):
        with paths.AtomicOutput(real):
            pass
    assert os.listdir(outside) == []
    assert paths.stray_temp_files(str(allowed / 'sub.old')) == []


def test_open_checked_refuses_swapped_names(tmp_path, allowed, victim):
    f = allowed / 'in.raw'
    f.write_bytes(b'x')
    real = paths.check_input(str(f), [str(allowed)])
    f.unlink()
    f.symlink_to(victim)
    with pytest.raises(exception.SymlinkEscape):
        paths.open_checked(real)
    # A parent directory swapped for a symlink to a look-alike tree.
    sub = allowed / 'sub'
    sub.mkdir()
    (sub / 'in.raw').write_bytes(b'x')
    real = paths.check_input(str(sub / 'in.raw'), [str(allowed)])
    elsewhere = tmp_path / 'elsewhere'
    elsewhere.mkdir()
    (elsewhere / 'in.raw').write_bytes(b'secret')
    os.rename(str(sub), str(allowed / 'sub.old'))
    os.symlink(str(elsewhere), str(sub))
    with pytest.raises(exception.SymlinkEscape):
        paths.open_checked(real)


class _SwapTempOnCreate(paths.AtomicOutput):
    """Swaps the fresh temp name for a symlink, as the directory's owner
    (watching with inotify) would, before the engine writes the file."""

    target = ''

    def __enter__(self):
        super().__enter__()
        link = self.path + '.evil'
        os.symlink(self.target, link)
        os.rename(link, self.path)
        return self


def test_copy_never_writes_through_a_swapped_temp(monkeypatch, allowed,
                                                  victim):
    src = allowed / 'in.raw'
    src.write_bytes(b'* * * * * root evil\n')
    settings = Settings(allowed_dirs=(str(allowed),))
    engine = api.Engine(settings, policy=filters.CommandPolicy([]))
    monkeypatch.setattr(_SwapTempOnCreate, 'target', str(victim))
    monkeypatch.setattr(paths, 'AtomicOutput', _SwapTempOnCreate)
    with pytest.raises(exception.PathNotAllowed):
        engine.run('t1', 'copy', {'src': str(src),
                                  'dst': str(allowed / 'out.raw')})
    assert victim.read_bytes() == b'root:secret\n'
    assert not os.path.lexists(allowed / 'out.raw')


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
