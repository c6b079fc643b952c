import os

import pytest

from accel_daemon import exception
from accel_daemon.engine import paths


@pytest.fixture
def allowed(tmp_path):
    d = tmp_path / 'allowed'
    d.mkdir()
    (tmp_path / 'outside').mkdir()
    return d


def test_input_inside_is_returned_resolved(allowed):
    f = allowed / 'a.img'
    f.write_bytes(b'x')
    assert paths.check_input(str(f), [str(allowed)]) == str(f)


@pytest.mark.parametrize('bad', ['', 'relative/a.img', '/x/../etc/passwd',
                                 'a\0b'])
def test_malformed_paths_refused(allowed, bad):
    with pytest.raises(exception.PathNotAllowed):
        paths.check_input(bad, [str(allowed)])


def test_input_outside_refused(allowed, tmp_path):
    f = tmp_path / 'outside' / 'a.img'
    f.write_bytes(b'x')
    with pytest.raises(exception.PathNotAllowed) as e:
        paths.check_input(str(f), [str(allowed)])
    assert not isinstance(e.value, exception.SymlinkEscape)


def test_prefix_sibling_is_not_inside(tmp_path, allowed):
    sibling = tmp_path / 'allowed-evil'
    sibling.mkdir()
    f = sibling / 'a.img'
    f.write_bytes(b'x')
    with pytest.raises(exception.PathNotAllowed):
        paths.check_input(str(f), [str(allowed)])


def test_symlink_input_refused_even_when_target_inside(allowed):
    target = allowed / 'real.img'
    target.write_bytes(b'x')
    link = allowed / 'link.img'
    link.symlink_to(target)
    with pytest.raises(exception.SymlinkEscape):
        paths.check_input(str(link), [str(allowed)])


def test_symlinked_directory_escaping_refused(allowed, tmp_path):
    secret = tmp_path / 'outside' / 'secret'
    secret.write_bytes(b'x')
    (allowed / 'door').symlink_to(tmp_path / 'outside')
    with pytest.raises(exception.SymlinkEscape):
        paths.check_input(str(allowed / 'door' / 'secret'), [str(allowed)])
    with pytest.raises(exception.SymlinkEscape):
        paths.check_output(str(allowed / 'door' / 'new'), [str(allowed)])
    assert not (tmp_path / 'outside' / 'new').exists()


def test_missing_input(allowed):
    with pytest.raises(exception.InputNotFound):
        paths.check_input(str(allowed / 'nope'), [str(allowed)])


def test_directory_input_refused(allowed):
    (allowed / 'sub').mkdir()
    with pytest.raises(exception.PathNotAllowed):
        paths.check_input(str(allowed / 'sub'), [str(allowed)])


def test_output_must_not_exist(allowed):
    f = allowed / 'out'
    f.write_bytes(b'')
    with pytest.raises(exception.OutputExists):
        paths.check_output(str(f), [str(allowed)])


def test_dangling_symlink_output_refused(allowed, tmp_path):
    (allowed / 'out').symlink_to(tmp_path / 'outside' / 'x')
    with pytest.raises(exception.OutputExists):
        paths.check_output(str(allowed / 'out'), [str(allowed)])


def test_block_device_needs_pattern_and_device(allowed):
    # /dev/null is a character device: matching the pattern is not enough.
    assert not paths.allowed_block_device('/dev/null', ['/dev/*'])
    with pytest.raises(exception.PathNotAllowed):
        paths.check_output('/dev/null', [str(allowed)], ['/dev/*'])


def test_open_input_refuses_symlink_swapped_in(allowed, tmp_path):
    f = allowed / 'a.img'
    f.write_bytes(b'x')
    real = paths.check_input(str(f), [str(allowed)])
    # Between check and open an attacker swaps the file for a link.
    f.unlink()
    f.symlink_to(tmp_path / 'outside')
    with pytest.raises(OSError):
        paths.open_input(real, [str(allowed)])


def test_atomic_output_publishes_with_mode(allowed):
    final = str(allowed / 'out.gz')
    with paths.AtomicOutput(final, mode=0o640) as out:
        with open(out.path, 'wb') as f:
            f.write(b'data')
        assert paths.stray_temp_files(str(allowed))
        out.commit()
    assert open(final, 'rb').read() == b'data'
    assert os.stat(final).st_mode & 0o777 == 0o640
    assert paths.stray_temp_files(str(allowed)) == []


def test_atomic_output_removed_on_error(allowed):
    final = str(allowed / 'out.gz')
    with pytest.raises(RuntimeError):
        with paths.AtomicOutput(final) as out:
            with open(out.path, 'wb') as f:
                f.write(b'partial')
            raise RuntimeError('boom')
    assert os.listdir(allowed) == []


def test_atomic_output_never_clobbers(allowed):
    final = allowed / 'out.gz'
    with pytest.raises(exception.OutputExists):
        with paths.AtomicOutput(str(final)) as out:
            final.write_bytes(b'someone else')
            out.commit()
    assert final.read_bytes() == b'someone else'
    assert paths.stray_temp_files(str(allowed)) == []


def test_temp_files_for_matches_only_that_output(allowed):
    final = str(allowed / 'a.img')
    with paths.AtomicOutput(final):
        with paths.AtomicOutput(str(allowed / 'a.img.x')):
            found = paths.temp_files_for(final)
            assert len(found) == 1
            assert os.path.basename(found[0]).startswith('.accel-a.img.')
    assert paths.temp_files_for(final) == []


def test_fd_ref_writes_the_temp_inode_even_after_a_swap(allowed, tmp_path):
    victim = tmp_path / 'outside' / 'victim'
    victim.write_bytes(b'keep me')
    final = str(allowed / 'out.gz')
    with paths.AtomicOutput(final) as out:
        # The directory's owner renames another file over the temp name
        # (a hard link to a foreign file, where the host allows that).
        decoy = allowed / 'decoy'
        decoy.write_bytes(b'decoy')
        os.rename(decoy, out.path)
        fd = paths.open_ref(paths.fd_ref(out.fd), os.O_WRONLY)
        try:
            os.write(fd, b'compressed bytes')
        finally:
            os.close(fd)
        with pytest.raises(exception.PathNotAllowed):
            out.commit()      # the name no longer holds what we wrote
    assert victim.read_bytes() == b'keep me'
    assert not os.path.exists(final)


def test_open_ref_refuses_symlinked_names(allowed, tmp_path):
    (allowed / 'link').symlink_to(tmp_path / 'outside')
    with pytest.raises(OSError):
        paths.open_ref(str(allowed / 'link'), os.O_RDONLY)
