# SPDX-License-Identifier: Apache-2.0
"""Builders of fake sysfs trees for accelerator detection tests.

The layout follows the kernel's: /sys/bus/pci/devices/<address> is a
symbolic link into /sys/devices/pci0000:00/, and a bound device has a
``driver`` link into /sys/bus/pci/drivers/<name>.
"""

from __future__ import annotations

import dataclasses
import os

INTEL = 0x8086


@dataclasses.dataclass(frozen=True)
class FakePci:
    address: str
    vendor: int = INTEL
    device: int = 0x4940
    driver: str | None = '4xxx'


def build(root: str, devices: list[FakePci] = ()) -> str:
    """Create a sysfs tree under ``root`` holding ``devices``; return root."""
    bus = os.path.join(root, 'bus', 'pci', 'devices')
    drivers = os.path.join(root, 'bus', 'pci', 'drivers')
    os.makedirs(bus, exist_ok=True)
    os.makedirs(drivers, exist_ok=True)
    for dev in devices:
        real = os.path.join(root, 'devices', 'pci0000:00', dev.address)
        os.makedirs(real)
        for name, value in (('vendor', dev.vendor), ('device', dev.device)):
            with open(os.path.join(real, name), 'w') as f:
                f.write('0x%04x\n' % value)
        os.symlink(os.path.relpath(real, bus), os.path.join(bus, dev.address))
        if dev.driver:
            target = os.path.join(drivers, dev.driver)
            os.makedirs(target, exist_ok=True)
            os.symlink(os.path.relpath(target, real),
                       os.path.join(real, 'driver'))
    return root


def qat_pf_bound(root: str) -> str:
    """A 4xxx physical function bound to the qat_4xxx driver."""
    return build(root, [FakePci('0000:6b:00.0', device=0x4940,
                                driver='4xxx')])


def qat_vf_bound(root: str) -> str:
    """A C62x virtual function bound to c6xxvf (a guest with SR-IOV)."""
    return build(root, [FakePci('0000:3d:01.0', device=0x37c9,
                                driver='c6xxvf')])


def qat_unbound(root: str) -> str:
    """A QAT device present but bound to no driver: unusable."""
    return build(root, [FakePci('0000:6b:00.0', device=0x4940, driver=None)])


def non_qat_intel(root: str) -> str:
    """An Intel NIC (not QAT), bound."""
    return build(root, [FakePci('0000:00:19.0', device=0x15b8,
                                driver='e1000e')])


def empty(root: str) -> str:
    return build(root, [])
