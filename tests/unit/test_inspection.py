# SPDX-License-Identifier: Apache-2.0
"""format_inspector-based inspection on small crafted files (no tools)."""

import os

import pytest

from accel_daemon.engine import inspection
from accel_daemon import exception
from tests.functional import imagegen as gen

MiB = 1024 * 1024


def make(tmp_path, name, data, size=None):
    return gen.write(str(tmp_path / name), data, size)


def test_raw_virtual_size_is_file_size(tmp_path):
    path = make(tmp_path, 'disk.raw', b'hello', 4 * MiB)
    found = inspection.inspect(path, 'raw')
    assert (found.format, found.virtual_size) == ('raw', 4 * MiB)
    assert found.actual_size < 4 * MiB  # sparse: only one block written


def test_qcow2_detected_with_header_size(tmp_path):
    path = make(tmp_path, 'disk.qcow2', gen.qcow2_header(size=10 * MiB))
    found = inspection.inspect(path, 'qcow2')
    assert (found.format, found.virtual_size) == ('qcow2', 10 * MiB)


@pytest.mark.parametrize('claimed', ['QCOW2', 'qcow2'])
def test_claim_is_case_insensitive(tmp_path, claimed):
    path = make(tmp_path, 'disk.qcow2', gen.qcow2_header())
    assert inspection.inspect(path, claimed).format == 'qcow2'


def test_qcow2_claimed_raw_is_mismatch(tmp_path):
    path = make(tmp_path, 'disk.raw', gen.qcow2_header())
    with pytest.raises(exception.FormatMismatch) as e:
        inspection.inspect(path, 'raw')
    assert e.value.fields['detected'] == 'qcow2'


def test_raw_claimed_qcow2_is_mismatch(tmp_path):
    path = make(tmp_path, 'disk.qcow2', b'\0' * 4096)
    with pytest.raises(exception.FormatMismatch):
        inspection.inspect(path, 'qcow2')


def test_qcow2_backing_file_refused(tmp_path):
    path = make(tmp_path, 'b.qcow2', gen.qcow2_header(backing=b'/etc/passwd'))
    with pytest.raises(exception.UnsafeImage) as e:
        inspection.inspect(path, 'qcow2')
    assert 'backing_file' in e.value.message


def test_qcow2_data_file_refused(tmp_path):
    # CVE-2024-32498
    data = gen.qcow2_header(incompatible=gen.QCOW2_INCOMPAT_DATA_FILE)
    path = make(tmp_path, 'd.qcow2', data)
    with pytest.raises(exception.UnsafeImage) as e:
        inspection.inspect(path, 'qcow2')
    assert 'data_file' in e.value.message


def test_qcow2_unknown_feature_refused(tmp_path):
    path = make(tmp_path, 'u.qcow2', gen.qcow2_header(incompatible=1 << 40))
    with pytest.raises(exception.UnsafeImage):
        inspection.inspect(path, 'qcow2')


def test_vmdk_flat_descriptor_refused(tmp_path):
    # CVE-2022-47951: the descriptor's extent is a host file.
    path = make(tmp_path, 'f.vmdk', gen.vmdk_flat_descriptor())
    with pytest.raises(exception.UnsafeImage):
        inspection.inspect(path, 'vmdk')


def test_vmdk_flat_descriptor_claimed_raw_is_mismatch(tmp_path):
    path = make(tmp_path, 'f.raw', gen.vmdk_flat_descriptor())
    with pytest.raises(exception.FormatMismatch):
        inspection.inspect(path, 'raw')


def test_vmdk_relative_flat_extent_refused(tmp_path):
    # format_inspector accepts this one (no '/' in the extent name); our
    # own extent check is what refuses it.
    path = make(tmp_path, 's.vmdk', gen.vmdk_sparse_with_flat_extent())
    with pytest.raises(exception.UnsafeImage) as e:
        inspection.inspect(path, 'vmdk')
    assert 'non-sparse extent' in e.value.message


def test_qcow2_hidden_in_iso_refused(tmp_path):
    data = gen.iso_bytes(system_area=gen.qcow2_header())
    path = make(tmp_path, 'hidden.iso', data)
    for claimed in ('raw', 'qcow2'):
        with pytest.raises(exception.UnsafeImage) as e:
            inspection.inspect(path, claimed)
        assert 'Multiple formats' in e.value.message


def test_qcow2_behind_gpt_refused(tmp_path):
    path = make(tmp_path, 'gpt.qcow2', gen.qcow2_behind_gpt(), MiB)
    for claimed in ('raw', 'qcow2'):
        with pytest.raises(exception.UnsafeImage):
            inspection.inspect(path, claimed)


def test_partitioned_disk_is_raw(tmp_path):
    path = make(tmp_path, 'gpt.raw', gen.mbr(protective=True), 8 * MiB)
    found = inspection.inspect(path, 'raw')
    assert (found.format, found.detected, found.virtual_size) == (
        'raw', 'gpt', 8 * MiB)


def test_plain_iso_is_accepted_as_raw(tmp_path):
    path = make(tmp_path, 'cd.iso', gen.iso_bytes())
    found = inspection.inspect(path, 'raw')
    assert (found.format, found.detected) == ('raw', 'iso')


def test_iso_claimed_qcow2_is_mismatch(tmp_path):
    path = make(tmp_path, 'cd.iso', gen.iso_bytes())
    with pytest.raises(exception.FormatMismatch):
        inspection.inspect(path, 'qcow2')


@pytest.mark.parametrize('claimed', ['iso', 'qed', 'luks', 'gpt', '', None,
                                     'auto'])
def test_unsupported_claims(tmp_path, claimed):
    path = make(tmp_path, 'x.raw', b'\0' * 4096)
    with pytest.raises(exception.UnsupportedFormat):
        inspection.inspect(path, claimed)


def test_symlink_is_not_followed(tmp_path):
    target = make(tmp_path, 'real.raw', b'\0' * 4096)
    link = tmp_path / 'link.raw'
    os.symlink(target, link)
    with pytest.raises(exception.SymlinkEscape):
        inspection.inspect(str(link), 'raw')


def test_missing_input(tmp_path):
    with pytest.raises(exception.InputNotFound):
        inspection.inspect(str(tmp_path / 'nope'), 'raw')


def test_empty_qcow2_claim_is_refused(tmp_path):
    path = make(tmp_path, 'empty', b'')
    with pytest.raises(exception.FormatMismatch):
        inspection.inspect(path, 'qcow2')


def test_hybrid_iso_is_accepted_as_raw(tmp_path):
    # ISO 9660 plus an MBR, like most Linux installer images.
    path = make(tmp_path, 'hybrid.iso', gen.iso_bytes(system_area=gen.mbr()))
    found = inspection.inspect(path, 'raw')
    assert (found.format, found.detected) == ('raw', 'iso')
    with pytest.raises(exception.UnsafeImage):
        inspection.inspect(path, 'qcow2')


def test_qcow2_in_hybrid_iso_refused(tmp_path):
    path = make(tmp_path, 'evil.iso',
                gen.iso_bytes(system_area=gen.qcow2_behind_gpt()))
    with pytest.raises(exception.UnsafeImage) as e:
        inspection.inspect(path, 'raw')
    assert 'gpt,iso,qcow2' in e.value.message


def test_raw_with_text_then_binary_head_is_raw(tmp_path):
    # format_inspector's VMDK inspector used to crash (AttributeError) when
    # the first 64 KiB started as text but did not decode as ASCII.
    path = tmp_path / 'disk.raw'
    with open(path, 'wb') as f:
        f.write(b'accel-daemon 0\n' * 4096)
        f.write(bytes(range(128, 256)) * 512)
    found = inspection.inspect(str(path), 'raw')
    assert found.format == 'raw'
