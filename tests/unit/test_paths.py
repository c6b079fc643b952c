# SPDX-License-Identifier: Apache-2.0

import pytest

from accel_daemon.engine import paths
from accel_daemon import exception


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


@pytest.mark.parametrize('bad', [
    'a\udc80\ud800b',                  # a lone surrogate: not encodable
    '/x/' + 'n' * 300,                  # a component over NAME_MAX
    '/' + 'd/' * 2100,                  # over PATH_MAX
])
def test_unusable_names_are_typed_refusals(allowed, bad):
    with pytest.raises(exception.PathNotAllowed):
        paths.check_name(bad)
    with pytest.raises(exception.PathNotAllowed):
        paths.check_input(bad, [str(allowed)])


@pytest.mark.parametrize('name', ['/a/b/', '/a/b/.', '/a/b/..', '/'])
def test_outputs_naming_directories_are_refused(name):
    with pytest.raises(exception.PathNotAllowed):
        paths.split_output(name)


def test_confinement_resolves_its_directories_once(tmp_path, allowed):
    (tmp_path / 'via').symlink_to(allowed)
    conf = paths.Confinement([str(tmp_path / 'via')], ['/dev/loop*'])
    assert conf.contains(str(allowed / 'x'))
    assert conf.contains(str(allowed))
    assert not conf.contains(str(allowed) + '-evil/x')
    assert conf.device_name('/dev/loop3')
    assert not conf.device_name('/dev/sda')


def test_temp_files_for_matches_only_that_output(allowed):
    mine = allowed / paths.temp_name('a.img', '0123abcd')
    other = allowed / paths.temp_name('a.img.x', '0123abcd')
    mine.write_bytes(b'')
    other.write_bytes(b'')
    assert paths.temp_files_for(str(allowed / 'a.img')) == [str(mine)]
    assert paths.stray_temp_files(str(allowed)) == sorted(
        [mine.name, other.name])
