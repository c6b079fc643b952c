# SPDX-License-Identifier: Apache-2.0
"""The configuration tests/daemonproc.py writes for a real daemon (the
functional tests, the caller flow tests and the benchmarks start theirs
with it)."""

from tests import daemonproc


def test_later_layers_change_and_add_options():
    merged = daemonproc.merge(
        {'DEFAULT': {'debug': 'false', 'transport_url': 'rabbit://'},
         'accel_daemon_rpc': {'host': 'h'}},
        {'DEFAULT': {'debug': 'true'}, 'tasks': {'workers': 2}})
    assert merged == {
        'DEFAULT': {'debug': 'true', 'transport_url': 'rabbit://'},
        'accel_daemon_rpc': {'host': 'h'}, 'tasks': {'workers': 2}}


def test_config_text_then_extra():
    text = daemonproc.render_config(
        {'DEFAULT': {'debug': 'false'}, 'tasks': {'workers': 4}},
        '[privsep_accel]\nhelper_command = /bin/false\n')
    assert text == ('[DEFAULT]\ndebug = false\n\n[tasks]\nworkers = 4\n\n'
                    '[privsep_accel]\nhelper_command = /bin/false\n')


def test_layout_and_rendered_filters(tmp_path):
    d = daemonproc.DaemonProcess(str(tmp_path), 'host-1',
                                 sections={'tasks': {'workers': 1}})
    assert d.images == str(tmp_path / 'images')
    assert sorted(p.name for p in (tmp_path / 'filters').iterdir()) == [
        'compression.filters', 'qemu-img.filters']
    config = (tmp_path / 'accel-daemon.conf').read_text()
    assert 'allowed_dirs = %s\n' % d.images in config
    assert 'host = host-1\n' in config
    assert '[tasks]\nworkers = 1\n' in config
    assert not d.running
