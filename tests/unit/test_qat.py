# SPDX-License-Identifier: Apache-2.0
"""QAT detection from a fake sysfs tree, and the qzip argv shapes."""

import dataclasses
import os

import pytest

from accel_daemon.drivers import qat
from accel_daemon.engine.filters import CommandPolicy
from tests import envfixture
from tests.fakes import sysfs

FAKES = os.path.join(envfixture.ROOT, 'tests', 'fakes')


def test_pf_bound_is_usable(tmp_path):
    probe = qat.QatProbe(sysfs.qat_pf_bound(str(tmp_path)))
    (dev,) = probe.usable()
    assert (dev.address, dev.model, dev.virtual, dev.driver) == \
        ('0000:6b:00.0', '4xxx', False, '4xxx')


def test_vf_bound_is_usable(tmp_path):
    (dev,) = qat.QatProbe(sysfs.qat_vf_bound(str(tmp_path))).usable()
    assert (dev.model, dev.virtual, dev.driver) == ('C62x', True, 'c6xxvf')


def test_unbound_device_is_found_but_not_usable(tmp_path):
    probe = qat.QatProbe(sysfs.qat_unbound(str(tmp_path)))
    assert [d.driver for d in probe.devices()] == [None]
    assert probe.usable() == []


@pytest.mark.parametrize('builder', [sysfs.non_qat_intel, sysfs.empty])
def test_no_qat_device(tmp_path, builder):
    assert qat.QatProbe(builder(str(tmp_path))).devices() == []


def test_missing_sysfs_root(tmp_path):
    assert qat.QatProbe(str(tmp_path / 'nothing')).devices() == []


def test_other_vendor_with_qat_device_id_is_ignored(tmp_path):
    root = sysfs.build(str(tmp_path), [sysfs.FakePci(
        '0000:01:00.0', vendor=0x1022, device=0x4940, driver='x')])
    assert qat.QatProbe(root).devices() == []


@pytest.mark.parametrize('model', sorted(qat.QAT_DEVICES))
def test_every_known_model_pf_and_vf(tmp_path, model):
    pf, vf = qat.QAT_DEVICES[model]
    root = sysfs.build(str(tmp_path), [
        sysfs.FakePci('0000:01:00.0', device=pf, driver='qat'),
        sysfs.FakePci('0000:01:00.1', device=vf, driver='qatvf')])
    devs = qat.QatProbe(root).usable()
    assert [(d.model, d.virtual) for d in devs] == [(model, False),
                                                    (model, True)]


def test_qzip_argv_gives_plain_gzip_and_clamps_level():
    assert qat.qzip_compress_argv(1) == ['qzip', '-A', 'deflate', '-O',
                                         'gzip', '-L', '1']
    assert qat.qzip_compress_argv(12)[-1] == '9'
    assert qat.qzip_compress_argv(0)[-1] == '1'
    assert qat.qzip_decompress_argv() == ['qzip', '-d', '-O', 'gzip']


def _driver(env, sysfs_root, exec_dirs):
    settings = dataclasses.replace(env.settings, sysfs_root=sysfs_root,
                                   exec_dirs=tuple(exec_dirs))
    policy = CommandPolicy(settings.filters_path, settings.exec_dirs)
    return qat.QatCompressor(settings, policy)


def test_available_with_device_and_stand_in(env, tmp_path):
    drv = _driver(env, sysfs.qat_pf_bound(str(tmp_path / 'sys')),
                  [FAKES] + list(env.settings.exec_dirs))
    avail = drv.availability()
    assert avail.available, avail.reason
    assert 'test double' in avail.version
    assert drv.hardware is True


def test_unavailable_without_device_even_with_qzip(env, tmp_path):
    drv = _driver(env, sysfs.empty(str(tmp_path / 'sys')),
                  [FAKES] + list(env.settings.exec_dirs))
    avail = drv.availability()
    assert not avail.available
    assert 'no QAT device' in avail.reason


def test_unavailable_when_unbound(env, tmp_path):
    drv = _driver(env, sysfs.qat_unbound(str(tmp_path / 'sys')),
                  [FAKES] + list(env.settings.exec_dirs))
    avail = drv.availability()
    assert not avail.available and 'not bound' in avail.reason


def test_unavailable_without_qzip(env, tmp_path):
    drv = _driver(env, sysfs.qat_pf_bound(str(tmp_path / 'sys')),
                  [str(tmp_path / 'empty-bin')])
    avail = drv.availability()
    assert not avail.available and 'qzip' in avail.reason


def test_unavailable_when_filters_forbid_qzip(env, tmp_path):
    envfixture.copy_filters_without(env, 'qzip')
    drv = _driver(env, sysfs.qat_pf_bound(str(tmp_path / 'sys')),
                  [FAKES] + list(env.settings.exec_dirs))
    avail = drv.availability()
    assert not avail.available and 'refused by the filters' in avail.reason
