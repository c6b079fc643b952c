# SPDX-License-Identifier: Apache-2.0
"""Block devices through the REAL privsep daemon: only the devices that
``[accel_daemon] allowed_block_devices`` names are read or written, and the
privileged layer decides it itself -- these requests go straight to it
(``PrivsepBackend``), past the RPC layer's pre-checks, as a client that
skips them would send them.

Two loop devices: ``allowed`` matches the daemon's pattern, ``other`` does
not.  Every refusal leaves the device's bytes as they were.  The command
filters (rendered by tools/render_filters.py, as tools/install.sh does)
name no device at all: qemu-img reads and writes a device only over NBD,
served from the descriptor the privileged open judged, with no capability
of its own.
"""

import importlib.util
import json
import os
import shutil
import subprocess
import time

from oslo_config import cfg
import pytest

from accel_daemon.engine.filters import CommandPolicy
from accel_daemon.engine import nbd
from accel_daemon.engine import paths
from accel_daemon.engine import qemu_img
from accel_daemon import exception
from accel_daemon.manager import backends
from accel_daemon import privileged
from accel_daemon.privileged import start as privileged_start
from tests import envfixture
from tests.functional import procwatch
from tests.functional.test_privsep import assert_bare

pytestmark = [
    pytest.mark.functional, pytest.mark.privsep,
    pytest.mark.skipif(os.geteuid() != 0 or shutil.which('losetup') is None,
                       reason='needs root and losetup'),
    pytest.mark.timeout(120),
]

MiB = 1024 * 1024
SIZE = 8 * MiB
OLD = b'\x5a'


def _render_filters():
    path = os.path.join(envfixture.ROOT, 'tools', 'render_filters.py')
    spec = importlib.util.spec_from_file_location('render_filters', path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _loop(backing):
    with open(backing, 'wb') as f:
        f.write(OLD * SIZE)
    try:
        return subprocess.run(['losetup', '--find', '--show', backing],
                              check=True, capture_output=True,
                              text=True).stdout.strip()
    except subprocess.CalledProcessError as e:
        pytest.skip('no loop device: %s' % e.stderr)


def _content(dev):
    with open(dev, 'rb') as f:
        return f.read(SIZE)


@pytest.fixture(scope='module')
def setup(tmp_path_factory):
    root = str(tmp_path_factory.mktemp('blockdev'))
    env = envfixture.make_env(root)
    devices = {}
    try:
        for name in ('allowed', 'other'):
            devices[name] = _loop(os.path.join(env.root, name + '.img'))
        # Exactly one device, plus a name that is no block device.
        patterns = [devices['allowed'], '/dev/null']
        conf_path = os.path.join(env.root, 'accel-daemon.conf')
        with open(conf_path, 'w') as f:
            f.write('[accel_daemon]\nallowed_dirs = %s\nfilters_path = %s\n'
                    'allowed_block_devices = %s\n'
                    % (env.images, env.filters_dir, ','.join(patterns)))
        cfg.CONF(['--config-file', conf_path], project='accel-daemon')
        privileged_start.init(cfg.CONF)
        try:
            yield env, devices, patterns, backends.PrivsepBackend()
        finally:
            privileged_start.stop()
            cfg.CONF.clear_override('helper_command',
                                    group=privileged.SECTION)
            cfg.CONF.clear()
    finally:
        for dev in devices.values():
            subprocess.run(['losetup', '-d', dev], check=False)


@pytest.fixture
def env(setup):
    env, devices, _, _ = setup
    for dev in devices.values():
        with open(dev, 'r+b') as f:
            f.write(OLD * SIZE)
    yield env
    for name in os.listdir(env.images):
        os.unlink(env.path(name))


@pytest.fixture
def devices(setup):
    return setup[1]


@pytest.fixture
def backend(setup):
    return setup[3]


def qcow2(env, name='src.qcow2'):
    path = env.path(name)
    subprocess.run(['qemu-img', 'create', '-f', 'qcow2', path, '4M'],
                   check=True, capture_output=True)
    subprocess.run(['qemu-io', '-f', 'qcow2', '-c', 'write -P 0x33 0 1M',
                    path], check=True, capture_output=True)
    return path


def test_capabilities_advertise_exactly_the_patterns(setup):
    _, _, patterns, backend = setup
    assert backend.capabilities()['allowed_block_devices'] == patterns


def test_convert_onto_the_allowed_device(env, devices, backend):
    src = qcow2(env)
    result = backend.run('d1', 'convert', {
        'src': src, 'dst': devices['allowed'], 'src_format': 'qcow2',
        'dst_format': 'raw'})
    assert result['output'] == devices['allowed']
    data = _content(devices['allowed'])
    # The image's 4 MiB are written (zeros included), the rest untouched.
    assert data[:MiB] == b'\x33' * MiB
    assert data[MiB:4 * MiB] == bytes(3 * MiB)
    assert data[4 * MiB:] == OLD * (SIZE - 4 * MiB)


@pytest.mark.parametrize('direction', ['read', 'write'])
def test_qemu_img_is_bare_on_a_device(env, devices, backend, direction):
    """The device node is root's (0660 root:disk): qemu-img reads it, or
    writes it in place, as the tool user with no capability at all."""
    (pid,) = procwatch.daemon_pids(os.path.join(env.root,
                                                'accel-daemon.conf'))
    if direction == 'read':
        args = {'src': devices['allowed'], 'dst': env.path('vol.qcow2'),
                'src_format': 'raw', 'dst_format': 'qcow2'}
    else:
        args = {'src': qcow2(env), 'dst': devices['allowed'],
                'src_format': 'qcow2', 'dst_format': 'raw'}
    # Paced (2 s or more) so that the watcher sees the tool at work.
    args['bps_limit'] = 2 * MiB
    with procwatch.watching(pid, b'convert') as seen:
        result = backend.run('bare-' + direction, 'convert', args)
    assert_bare(seen, 'qemu-img convert (%s a device)' % direction)
    if direction == 'read':
        assert subprocess.run(['qemu-img', 'compare', '-f', 'raw', '-F',
                               'qcow2', devices['allowed'],
                               result['output']],
                              capture_output=True).returncode == 0
    else:
        data = _content(devices['allowed'])
        assert data[:MiB] == b'\x33' * MiB
        assert data[MiB:4 * MiB] == bytes(3 * MiB)
        assert data[4 * MiB:] == OLD * (SIZE - 4 * MiB)


def test_device_outside_the_patterns_is_refused_as_output(env, devices,
                                                          backend):
    src = qcow2(env)
    with pytest.raises(exception.PathNotAllowed) as e:
        backend.run('d2', 'convert', {
            'src': src, 'dst': devices['other'], 'src_format': 'qcow2',
            'dst_format': 'raw'})
    assert e.value.fields['path'] == devices['other']
    assert _content(devices['other']) == OLD * SIZE
    assert paths.stray_temp_files(env.images) == []


@pytest.mark.parametrize('operation', ['compress', 'copy'])
def test_device_outside_the_patterns_is_refused_as_input(env, devices,
                                                         backend, operation):
    dst = env.path('out')
    with pytest.raises(exception.PathNotAllowed) as e:
        backend.run('d3', operation, {'src': devices['other'], 'dst': dst})
    assert 'allowed_block_devices' in e.value.message
    assert not os.path.lexists(dst)
    assert os.listdir(env.images) == []


def test_symlink_to_a_device_is_refused(env, devices, backend):
    link = env.path('volume')
    os.symlink(devices['allowed'], link)
    with pytest.raises(exception.SymlinkEscape):
        backend.run('d4', 'compress', {'src': link, 'dst': env.path('o')})
    assert not os.path.lexists(env.path('o'))


def test_a_pattern_that_names_no_block_device_is_refused(env, backend):
    src = qcow2(env)
    with pytest.raises(exception.PathNotAllowed) as e:
        backend.run('d5', 'convert', {'src': src, 'dst': '/dev/null',
                                      'src_format': 'qcow2',
                                      'dst_format': 'raw'})
    assert 'not a block device' in e.value.message


def test_file_operations_never_write_an_allowed_device(env, devices,
                                                       backend):
    src = env.path('data')
    with open(src, 'wb') as f:
        f.write(b'data\n' * 1000)
    for operation in ('compress', 'copy'):
        with pytest.raises((exception.PathNotAllowed,
                            exception.InvalidRequest)):
            backend.run('d6', operation,
                        {'src': src, 'dst': devices['allowed']})
    assert _content(devices['allowed']) == OLD * SIZE


def test_device_in_use_is_refused(env, devices, backend):
    src = qcow2(env)
    # Another exclusive holder, as a mount or a device-mapper table is.
    held = os.open(devices['allowed'], os.O_RDONLY | os.O_EXCL)
    try:
        with pytest.raises(exception.PathNotAllowed) as e:
            backend.run('d7', 'convert', {
                'src': src, 'dst': devices['allowed'],
                'src_format': 'qcow2', 'dst_format': 'raw'})
        assert 'in use' in e.value.message
    finally:
        os.close(held)
    assert _content(devices['allowed']) == OLD * SIZE


def test_compress_reads_the_allowed_device(env, devices, backend):
    dst = env.path('dev.gz')
    result = backend.run('d8', 'compress', {'src': devices['allowed'],
                                            'dst': dst})
    assert result['output'] == dst
    assert subprocess.run(['gzip', '-dc', dst], check=True,
                          capture_output=True).stdout == OLD * SIZE


def test_device_claimed_exclusively_is_not_read(env, devices, backend):
    held = os.open(devices['allowed'], os.O_RDONLY | os.O_EXCL)
    try:
        with pytest.raises(exception.PathNotAllowed) as e:
            backend.run('d9', 'compress', {'src': devices['allowed'],
                                           'dst': env.path('o.gz')})
        assert 'in use' in e.value.message
    finally:
        os.close(held)
    assert os.listdir(env.images) == []


def _guest(dev):
    """A running QEMU holding ``dev`` the way a guest does (opened without
    O_EXCL, with its image locks), until killed."""
    guest = subprocess.Popen(['qemu-io', '-f', 'raw', '-c', 'sleep 60000',
                              dev], stdout=subprocess.DEVNULL,
                             stderr=subprocess.DEVNULL)
    ino = os.stat(dev).st_ino
    for _ in range(100):
        with open('/proc/locks') as f:
            if any(line.split()[5].endswith(':%d' % ino) for line in f
                   if len(line.split()) > 5):
                return guest
        time.sleep(0.05)
    guest.kill()
    raise AssertionError('qemu-io did not lock %s' % dev)


@pytest.mark.parametrize('operation', ['compress', 'convert'])
def test_device_a_running_guest_uses_is_refused(env, devices, backend,
                                                operation):
    """A guest's QEMU opens its volume without O_EXCL, which the claim
    alone does not see; its image locks are seen.  Neither read (torn data)
    nor written."""
    src = qcow2(env)
    guest = _guest(devices['allowed'])
    try:
        if operation == 'compress':
            args = {'src': devices['allowed'], 'dst': env.path('o.gz')}
        else:
            args = {'src': src, 'dst': devices['allowed'],
                    'src_format': 'qcow2', 'dst_format': 'raw'}
        with pytest.raises(exception.PathNotAllowed) as e:
            backend.run('d10', operation, args)
        assert e.value.message.endswith(
            'block device in use (locked by another process, as a running '
            'guest locks it)')
    finally:
        guest.kill()
        guest.wait()
    assert _content(devices['allowed']) == OLD * SIZE
    assert sorted(os.listdir(env.images)) == ['src.qcow2']
    # Once the guest is gone, the device is usable again.
    backend.run('d11', 'compress', {'src': devices['allowed'],
                                    'dst': env.path('after.gz')})


DEVICE_NAMES = ['/dev/sda', '/dev/loop0', '/dev/mapper/vg-volume--1',
                '/dev/disk/by-path/ip-192.0.2.1:3260-iscsi-iqn.x-lun-0',
                '/dev/dm-0']


@pytest.mark.parametrize('name', DEVICE_NAMES)
def test_rendered_filters_name_no_device(tmp_path, name):
    """Whatever the allowed directories, the rendered filters let a tool
    see an image only as an NBD export on an inherited socket (or a new
    output file as /dev/fd/N): every convert shape is refused with a
    device name, or a json: spec naming a file, in place of those."""
    render = _render_filters()
    out = tmp_path / 'filters'
    out.mkdir()
    for entry in os.listdir(envfixture.SHIPPED_FILTERS):
        with open(os.path.join(envfixture.SHIPPED_FILTERS, entry)) as f:
            text = render.render(f.read(), [str(tmp_path / 'images')])
        assert '/dev/' not in text.replace('/dev/fd/', '')
        (out / entry).write_text(text)
    policy = CommandPolicy([str(out)], ('/usr/bin', '/bin'))
    as_file = 'json:' + json.dumps(
        {'driver': 'raw', 'file': {'driver': 'file', 'filename': name}},
        separators=(',', ':'), sort_keys=True)
    for existing in (False, True):
        dst = nbd.image_spec('raw', 4) if existing else '/dev/fd/4'
        argv = qemu_img.convert_cmd(
            nbd.image_spec('qcow2', 3), dst, 'qcow2', 'raw',
            qemu_img.ConvertFlags(
                src_cache='writeback', dst_cache='none', coroutines=8,
                unordered=True, existing_target=existing))
        assert policy.allows(argv)
        for i in (-1, -2):
            for bad_name in (name, as_file):
                bad = list(argv)
                bad[i] = bad_name
                assert not policy.allows(bad), bad


def test_over_rpc_only_the_allowed_device(tmp_path, setup):
    """The same through the real accel-daemon and RabbitMQ: capabilities
    carry the patterns; the RPC layer refuses the other device before any
    task exists, and the allowed one is written."""
    from tests.functional import test_rpc_daemon as rpcd
    rpcd.require_broker()
    env, devices, _, _ = setup
    daemon = rpcd.DaemonProcess(
        str(tmp_path), extra='[accel_daemon]\nallowed_block_devices = %s\n'
        % devices['allowed'])
    daemon.start()
    try:
        with daemon.client() as client:
            caps = client.capabilities()
            assert caps['allowed_block_devices'] == [devices['allowed']]
            src = qcow2(env)
            shutil.copy(src, os.path.join(daemon.images, 'src.qcow2'))
            src = os.path.join(daemon.images, 'src.qcow2')
            for dev in devices.values():
                with open(dev, 'r+b') as f:
                    f.write(OLD * SIZE)
            with pytest.raises(exception.PathNotAllowed):
                client.convert(src, devices['other'], 'qcow2', 'raw')
            assert client.tasks() == []
            client.convert(src, devices['allowed'], 'qcow2', 'raw').wait(60)
        assert _content(devices['other']) == OLD * SIZE
        assert _content(devices['allowed'])[:MiB] == b'\x33' * MiB
    finally:
        assert daemon.stop() == 0
