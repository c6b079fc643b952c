# SPDX-License-Identifier: Apache-2.0
"""qemu-img argv builders, parsers and the shipped filters (no tools run)."""

import json
import os

import pytest

from accel_daemon.engine.filters import CommandPolicy
from accel_daemon.engine import images
from accel_daemon.engine import nbd
from accel_daemon.engine import qemu_img
from accel_daemon import exception
from tests import envfixture

# qemu-img is only ever given descriptors the engine opened: ``served()``
# turns these into what images.py passes (NBD specs for inputs).
SRC = '/dev/fd/5'
DST = '/dev/fd/6'


def convert(**kw):
    args = dict(src_cache='writeback', dst_cache='none', coroutines=16)
    args.update(kw)
    return qemu_img.convert_cmd(
        SRC, DST, 'qcow2', 'raw', qemu_img.ConvertFlags(**args))


# --- formats ---------------------------------------------------------------
@pytest.mark.parametrize('name,expected', [
    ('raw', 'raw'), ('QCOW2', 'qcow2'), ('vhd', 'vpc'), ('VPC', 'vpc'),
    ('vhdx', 'vhdx'), ('vmdk', 'vmdk'), ('vdi', 'vdi')])
def test_input_formats(name, expected):
    assert qemu_img.input_format(name) == expected


@pytest.mark.parametrize('name', ['vdi', 'iso', 'qed', 'luks', 'auto', '',
                                  None, 3])
def test_unsupported_output_formats(name):
    with pytest.raises(exception.UnsupportedFormat):
        qemu_img.output_format(name)


# --- builders --------------------------------------------------------------
def test_info_forces_format_and_json():
    assert qemu_img.info_cmd(SRC, 'vhd') == [
        'qemu-img', 'info', '-f', 'vpc', '--output=json', SRC]


def test_info_refuses_missing_format():
    # CVE-2026-24708: a format-less call lets qemu-img guess.
    with pytest.raises(exception.UnsupportedFormat):
        qemu_img.info_cmd(SRC, None)


def test_check_compare_measure():
    assert qemu_img.check_cmd(SRC, 'qcow2') == [
        'qemu-img', 'check', '-f', 'qcow2', '--output=json', SRC]
    assert qemu_img.compare_cmd(SRC, 'qcow2', DST, 'raw') == [
        'qemu-img', 'compare', '-f', 'qcow2', '-F', 'raw', SRC, DST]
    assert qemu_img.measure_cmd(SRC, 'qcow2', 'raw') == [
        'qemu-img', 'measure', '-f', 'qcow2', '-O', 'raw', '--output=json',
        SRC]


def test_measure_only_for_measurable_outputs():
    with pytest.raises(exception.UnsupportedFormat):
        qemu_img.measure_cmd(SRC, 'qcow2', 'vmdk')


def test_convert_raw_file():
    assert convert(unordered=True) == [
        'qemu-img', 'convert', '-p', '-f', 'qcow2', '-O', 'raw',
        '-T', 'writeback', '-t', 'none', '-W', '-m', '16', '-S', '4k',
        SRC, DST]


def test_convert_device_zeroed():
    argv = convert(unordered=True, existing_target=True, target_is_zero=True)
    assert argv[-5:] == ['4k', '-n', '--target-is-zero', SRC, DST]


def test_convert_compressed_qcow2():
    argv = qemu_img.convert_cmd(
        SRC, DST, 'raw', 'qcow2', qemu_img.ConvertFlags(
            src_cache='none', dst_cache='writeback', coroutines=4,
            compress=True))
    assert argv[argv.index('-O') + 1] == 'qcow2'
    assert argv[-3:] == ['-c', SRC, DST]
    assert '-W' not in argv


def test_convert_rate_limit_and_no_sparse():
    # bps_limit -> -r in bytes per second; sparse=False -> -S 0.
    assert convert(unordered=True, rate_limit=32 * 1024 ** 2,
                   sparse=False) == [
        'qemu-img', 'convert', '-p', '-f', 'qcow2', '-O', 'raw',
        '-T', 'writeback', '-t', 'none', '-W', '-m', '16', '-S', '0',
        '-r', '33554432', SRC, DST]
    argv = convert(unordered=True, existing_target=True,
                   target_is_zero=True, rate_limit=1)
    assert argv[-9:] == ['-m', '16', '-S', '4k', '-r', '1', '-n',
                         '--target-is-zero', SRC, DST][-9:]
    argv = qemu_img.convert_cmd(
        SRC, DST, 'raw', 'qcow2', qemu_img.ConvertFlags(
            src_cache='none', dst_cache='none', coroutines=4, compress=True,
            rate_limit=10 ** 6))
    assert argv[-7:] == ['-S', '4k', '-r', '1000000', '-c', SRC, DST]
    # Neither given: the argv of before.
    assert '-r' not in convert() and convert()[-3:] == ['4k', SRC, DST]


@pytest.mark.parametrize('kw', [
    {'dst_cache': 'writethrough'}, {'dst_cache': 'unsafe'},
    {'src_cache': 'directsync'}, {'coroutines': 0}, {'coroutines': 17},
    {'target_is_zero': True}, {'compress': True},
    {'rate_limit': 0}, {'rate_limit': -5}, {'rate_limit': True},
    {'sparse': False, 'existing_target': True, 'target_is_zero': True}])
def test_convert_refuses(kw):
    # writethrough is never chosen; target_is_zero needs -n; -c needs qcow2;
    # -r needs a rate; -S 0 (write every zero) contradicts
    # --target-is-zero (and -c, below), which skip zeros.
    with pytest.raises(exception.InvalidRequest):
        convert(**kw)


def test_convert_refuses_compressed_without_sparse():
    with pytest.raises(exception.InvalidRequest, match='sparse'):
        qemu_img.convert_cmd(
            SRC, DST, 'raw', 'qcow2', qemu_img.ConvertFlags(
                src_cache='none', dst_cache='none', coroutines=4,
                compress=True, sparse=False))


# --- parsers ---------------------------------------------------------------
def info(**extra):
    data = {'format': 'qcow2', 'virtual-size': 1024, 'filename': SRC}
    data.update(extra)
    return data


def test_parse_info_roundtrip():
    assert qemu_img.parse_info(json.dumps(info()).encode()) == info()


@pytest.mark.parametrize('data', [b'', b'not json', b'[1]', b'\xff'])
def test_parse_info_garbage(data):
    with pytest.raises(exception.ImageInspectionError):
        qemu_img.parse_info(data, SRC)


def test_validate_info_accepts_plain():
    qemu_img.validate_info(info(), SRC, 'qcow2')


@pytest.mark.parametrize('bad,error', [
    ({'format': 'raw'}, exception.FormatMismatch),
    ({'backing-filename': '/etc/passwd'}, exception.UnsafeImage),
    ({'full-backing-filename': 'x'}, exception.UnsafeImage),
    ({'format-specific': {'type': 'qcow2',
                          'data': {'data-file': '/etc/shadow'}}},
     exception.UnsafeImage),
    ({'virtual-size': None}, exception.ImageInspectionError)])
def test_validate_info_refuses(bad, error):
    with pytest.raises(error):
        qemu_img.validate_info(info(**bad), SRC, 'qcow2')


def test_validate_info_vmdk_extents():
    own = {'format': 'vmdk', 'virtual-size': 1,
           'format-specific': {'type': 'vmdk', 'data': {'extents': [
               {'filename': SRC}]}}}
    qemu_img.validate_info(own, SRC, 'vmdk')
    own['format-specific']['data']['extents'].append(
        {'filename': '/etc/shadow'})
    with pytest.raises(exception.UnsafeImage):
        qemu_img.validate_info(own, SRC, 'vmdk')


def test_parse_measure():
    out = qemu_img.parse_measure(b'{"required": 5, "fully-allocated": 9}')
    assert out['required'] == 5
    with pytest.raises(exception.ImageInspectionError):
        qemu_img.parse_measure(b'{"required": 5}')


def test_compare_result():
    assert [qemu_img.compare_result(rc) for rc in (0, 1, 2)] == [
        True, False, None]


# --- progress ---------------------------------------------------------------
def test_progress_parser_split_records():
    parser = qemu_img.ProgressParser()
    assert parser.feed(b'    (0.00/100%)\r    (12.') == 0.0
    assert parser.feed(b'34/100%)\r') == pytest.approx(0.1234)
    assert parser.feed(b'    (') is None
    assert parser.feed(b'100.00/100%)\r') == 1.0


def test_progress_parser_never_goes_back():
    parser = qemu_img.ProgressParser()
    parser.feed(b'(50.00/100%)\r')
    assert parser.feed(b'(10.00/100%)\r') == 0.5


def test_progress_parser_bounded_memory():
    parser = qemu_img.ProgressParser()
    for _ in range(1000):
        parser.feed(b'x' * 4096)
    assert len(parser._tail) <= 64


# --- O_DIRECT probe -------------------------------------------------------
def _fd(path, flags=os.O_RDWR):
    return os.open(path, flags | os.O_CLOEXEC)


def test_probe_direct_io_leaves_file_empty(tmp_path):
    path = tmp_path / 'target'
    path.write_bytes(b'')
    fd = _fd(path)
    try:
        works = qemu_img.probe_direct_io(fd)
    finally:
        os.close(fd)
    assert isinstance(works, bool)
    assert path.stat().st_size == 0


def test_probe_direct_io_of_a_closed_descriptor_is_false():
    assert qemu_img.probe_direct_io(987654) is False


def test_probe_read_does_not_modify(tmp_path):
    path = tmp_path / 'src'
    path.write_bytes(b'a' * 8192)
    fd = _fd(path, os.O_RDONLY)
    try:
        qemu_img.probe_direct_io(fd, write=False)
    finally:
        os.close(fd)
    assert path.read_bytes() == b'a' * 8192


# --- shipped filters --------------------------------------------------------
@pytest.fixture
def policy(tmp_path):
    """The shipped filters, with a stand-in qemu-img in exec_dirs (the
    filters need an executable to resolve; nothing is run)."""
    bindir = tmp_path / 'bin'
    bindir.mkdir()
    fake = bindir / 'qemu-img'
    fake.write_text('#!/bin/false\n')
    fake.chmod(0o755)
    envfixture.install_filters(str(tmp_path / 'filters'),
                               '/var/lib/accel-daemon')
    return CommandPolicy([str(tmp_path / 'filters')], [str(bindir)])


def with_rate(rate):
    argv = convert(unordered=True, rate_limit=1)
    argv[argv.index('-r') + 1] = rate
    return argv


def all_built_commands():
    yield qemu_img.info_cmd(SRC, 'vdi')
    yield qemu_img.check_cmd(SRC, 'raw')
    yield qemu_img.compare_cmd(SRC, 'qcow2', DST, 'vhd')
    yield qemu_img.measure_cmd(SRC, 'vmdk', 'qcow2')
    for fmt in qemu_img.OUTPUT_FORMATS:
        yield qemu_img.convert_cmd(
            SRC, DST, 'vhdx', fmt, qemu_img.ConvertFlags(
                src_cache='none', dst_cache='writeback', coroutines=1,
                unordered=fmt == 'raw'))
    yield convert(compress=False, unordered=True, coroutines=9)
    # Compressed qcow2: with -W, as images.convert builds it.
    yield qemu_img.convert_cmd(
        SRC, DST, 'raw', 'qcow2', qemu_img.ConvertFlags(
            src_cache='none', dst_cache='none', coroutines=16, compress=True,
            unordered=True))
    for zero in (False, True):
        yield qemu_img.convert_cmd(
            SRC, '/dev/fd/7', 'qcow2', 'raw', qemu_img.ConvertFlags(
                src_cache='none', dst_cache='none', coroutines=16,
                unordered=True, existing_target=True, target_is_zero=zero))
    # bps_limit (-r) on every shape, sparse=False (-S 0) where it applies.
    for rate in (1, 33554432, 2 ** 62):
        for sparse in (True, False):
            for fmt in ('raw', 'qcow2'):
                yield qemu_img.convert_cmd(
                    SRC, DST, 'raw', fmt, qemu_img.ConvertFlags(
                        src_cache='none', dst_cache='none', coroutines=16,
                        unordered=fmt == 'raw', sparse=sparse,
                        rate_limit=rate))
            yield qemu_img.convert_cmd(
                SRC, DST, 'qcow2', 'raw', qemu_img.ConvertFlags(
                    src_cache='none', dst_cache='none', coroutines=16,
                    unordered=True, existing_target=True, sparse=sparse))
            yield qemu_img.convert_cmd(
                SRC, DST, 'qcow2', 'raw', qemu_img.ConvertFlags(
                    src_cache='none', dst_cache='none', coroutines=16,
                    unordered=True, existing_target=True, sparse=sparse,
                    rate_limit=rate))
        yield qemu_img.convert_cmd(
            SRC, '/dev/fd/7', 'qcow2', 'vmdk', qemu_img.ConvertFlags(
                src_cache='none', dst_cache='none', coroutines=16,
                unordered=True, existing_target=True, target_is_zero=True,
                rate_limit=rate))
        yield qemu_img.convert_cmd(
            SRC, DST, 'raw', 'qcow2', qemu_img.ConvertFlags(
                src_cache='none', dst_cache='none', coroutines=16,
                compress=True, unordered=True, rate_limit=rate))
    yield convert(unordered=True, sparse=False)


def served(argv):
    """``argv`` as images.py builds it: each input, and a device target
    (-n), served over NBD on a socket (a json: spec of the -f/-F/-O
    format), a new output file as /dev/fd/N."""
    argv = list(argv)

    def fmt_of(flag):
        # A format-less argv (denied anyway) gets a raw spec.
        return argv[argv.index(flag) + 1] if flag in argv else 'raw'
    sources = [a for a in argv if a == SRC or (a == DST and '-F' in argv)]
    for i, arg in enumerate(argv):
        if arg == SRC:
            argv[i] = nbd.image_spec(fmt_of('-f'), 5)
        elif arg == DST and '-F' in argv:
            argv[i] = nbd.image_spec(fmt_of('-F'), 6)
        elif i == len(argv) - 1 and '-n' in argv and arg not in sources:
            argv[i] = nbd.image_spec(fmt_of('-O'), 7)
    return argv


def test_filters_allow_every_built_shape(policy):
    for argv in all_built_commands():
        assert policy.allows(served(argv)), argv


@pytest.mark.parametrize('bad', [
    # An input not served: qemu-img would reopen the file.
    lambda a: [SRC if x.startswith('json:') else x for x in a],
    # A served qcow2 without "backing":null.
    lambda a: [x.replace('"backing":null,', '') for x in a],
    # A file node instead of the socket.
    lambda a: [x.replace('"driver":"nbd","server":{"str":"5","type":"fd"}',
                         '"driver":"file","filename":"/etc/shadow"')
               for x in a],
    # A unix socket path instead of an inherited descriptor.
    lambda a: [x.replace('{"str":"5","type":"fd"}',
                         '{"path":"/run/x.sock","type":"unix"}')
               for x in a],
    # The format of the spec is not pinned (driver missing).
    lambda a: [x.replace('"driver":"qcow2",', '') for x in a],
])
def test_filters_deny_unserved_or_unpinned_inputs(policy, bad):
    for argv in (qemu_img.info_cmd(SRC, 'qcow2'), convert(unordered=True)):
        good = served(argv)
        assert policy.allows(good)
        assert bad(good) != good
        with pytest.raises(exception.CommandDenied):
            policy.check(bad(good))


@pytest.mark.parametrize('argv', [
    # format-less (CVE-2026-24708)
    ['qemu-img', 'info', '--output=json', SRC],
    ['qemu-img', 'convert', '-O', 'raw', SRC, DST],
    # writethrough and unsafe caches, a path escape, other places
    ['qemu-img', 'convert', '-p', '-f', 'qcow2', '-O', 'raw', '-T', 'none',
     '-t', 'writethrough', '-W', '-m', '16', '-S', '4k', SRC, DST],
    ['qemu-img', 'convert', '-p', '-f', 'qcow2', '-O', 'raw', '-T', 'none',
     '-t', 'unsafe', '-W', '-m', '16', '-S', '4k', SRC, DST],
    ['qemu-img', 'info', '-f', 'raw', '--output=json',
     '/var/lib/accel-daemon/../../etc/shadow'],
    ['qemu-img', 'info', '-f', 'raw', '--output=json', '/etc/shadow'],
    ['qemu-img', 'info', '-f', 'raw', '--output=json', '/dev/sda'],
    # a path, even in the allowed directory: it would be resolved again
    ['qemu-img', 'info', '-f', 'raw', '--output=json',
     '/var/lib/accel-daemon/images/a.raw'],
    ['qemu-img', 'info', '-f', 'raw', '--output=json', '/dev/fd/x'],
    # file output onto a device name, device output without -n
    ['qemu-img', 'create', '-f', 'raw', SRC, '1G'],
    ['qemu-img', 'convert', '-p', '-f', 'raw', '-O', 'raw', '-T', 'none',
     '-t', 'none', '-W', '-m', '16', '-S', '4k', SRC, '/dev/dm-0'],
    # -c on a non-qcow2 output, an extra option
    convert(unordered=False)[:6] + ['vmdk'] + convert()[7:-2]
    + ['-c', SRC, DST],
    qemu_img.info_cmd(SRC, 'raw')[:-1] + ['-U', SRC],
] + [
    # -r: a rate of digits (and one unit letter), never 0, nothing else;
    # -S: 4k or 0 only; -S 0 never with -c or --target-is-zero; -r only
    # after -S.
    with_rate(rate) for rate in (
        '0', '-1', '', '1.5M', '1T', '1MB', '1 M', '0x10', '01',
        '1M,2', '1k\n', 'M', '12345678901234567890x')
] + [
    convert(unordered=True)[:-3] + ['1k', SRC, DST],
    convert(unordered=True)[:-3] + ['00', SRC, DST],
    convert(unordered=True)[:-3] + ['0', '-r', SRC, DST],
    convert(unordered=True)[:-4] + ['-r', '1', '-S', '4k', SRC, DST],
    convert(unordered=True, rate_limit=5)[:-2] + ['-r', '5', SRC, DST],
    qemu_img.convert_cmd(
        SRC, DST, 'raw', 'qcow2', qemu_img.ConvertFlags(
            src_cache='none', dst_cache='none', coroutines=16,
            compress=True))[:-4] + ['0', '-c', SRC, DST],
    convert(unordered=True, existing_target=True,
            target_is_zero=True)[:-5] + ['0', '-n', '--target-is-zero',
                                         SRC, DST],
])
def test_filters_deny(policy, argv):
    with pytest.raises(exception.CommandDenied):
        policy.check(served(argv))


def test_filter_file_has_comments_for_each_group():
    path = os.path.join(envfixture.SHIPPED_FILTERS, 'qemu-img.filters')
    with open(path) as f:
        lines = f.read().splitlines()
    for i, line in enumerate(lines):
        if 'RegExpFilter' in line and not lines[i - 1].startswith('qemu_img'):
            assert lines[i - 1].startswith('#'), line


def test_target_probe_keeps_existing_target(tmp_path):
    path = tmp_path / 'precreated'
    path.write_bytes(b'z' * 8192)
    fd = _fd(path)
    try:
        mode = images.target_cache_mode(fd, existing_target=True)
    finally:
        os.close(fd)
    assert mode in ('none', 'writeback')
    assert path.read_bytes() == b'z' * 8192


def test_version_cmd_and_parse():
    assert qemu_img.version_cmd() == ['qemu-img', '--version']
    out = b'qemu-img version 7.2.22 (Debian 1:7.2)\nCopyright (c) 2003\n'
    assert qemu_img.parse_version(out) == \
        'qemu-img version 7.2.22 (Debian 1:7.2)'
    assert qemu_img.parse_version(b'') == ''
