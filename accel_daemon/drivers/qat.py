# SPDX-License-Identifier: Apache-2.0
"""Intel QuickAssist (QAT) compression through QATzip's ``qzip``.

Cinder's 2019 accelerator took "``qzip`` is on the PATH" as proof of
hardware.  Here the hardware is read from sysfs: a PCI function with
Intel's vendor id, a known QAT physical or virtual function device id, and
a bound driver (an unbound device cannot be used).  Only then, and when
``qzip`` is found and allowed by the filters, is the driver available.

qzip reads stdin and writes stdout when given no file (QATzip utils), so,
like the other CLI drivers, it never sees a path.  ``-O gzip`` selects the
plain gzip header (the default ``gzipext`` adds a QAT extra field); each
hardware request becomes a gzip member, and stock ``gzip -d`` reads the
concatenation.
"""

from __future__ import annotations

import dataclasses
import logging
import os
from types import MappingProxyType

from accel_daemon.drivers import cli
from accel_daemon.engine import driver as base

LOG = logging.getLogger(__name__)

INTEL_VENDOR = 0x8086
# PCI device ids of QAT endpoints: (physical function, virtual function).
# From the Linux qat drivers (qat_common/adf_accel_devices.h, pci_ids.h) and
# Intel's out-of-tree QAT driver for C4xxx and D15xx.
QAT_DEVICES = {
    'DH895xCC': (0x0435, 0x0443),
    'C62x': (0x37c8, 0x37c9),
    'C3xxx': (0x19e2, 0x19e3),
    'C4xxx': (0x18a0, 0x18a1),
    'D15xx': (0x6f54, 0x6f55),
    '4xxx': (0x4940, 0x4941),
    '401xx': (0x4942, 0x4943),
    '402xx': (0x4944, 0x4945),
    '420xx': (0x4946, 0x4947),
}
_BY_ID = {dev_id: (model, kind == 1)
          for model, ids in QAT_DEVICES.items()
          for kind, dev_id in enumerate(ids)}


@dataclasses.dataclass(frozen=True)
class QatDevice:
    address: str        # PCI address, e.g. 0000:6b:00.0
    device_id: int
    model: str
    virtual: bool       # an SR-IOV virtual function
    driver: str | None  # bound kernel driver, None when unbound


def _read_hex(path: str) -> int | None:
    try:
        with open(path) as f:
            return int(f.read().strip(), 16)
    except (OSError, ValueError):
        return None


class QatProbe:
    """Finds QAT devices under a sysfs root (tests pass a fake tree)."""

    def __init__(self, sysfs_root: str = '/sys') -> None:
        self.devices_dir = os.path.join(sysfs_root, 'bus', 'pci', 'devices')

    def devices(self) -> list[QatDevice]:
        try:
            names = sorted(os.listdir(self.devices_dir))
        except OSError:
            return []
        found = []
        for name in names:
            dev = self._device(name)
            if dev is not None:
                found.append(dev)
        return found

    def _device(self, name: str) -> QatDevice | None:
        path = os.path.join(self.devices_dir, name)
        if _read_hex(os.path.join(path, 'vendor')) != INTEL_VENDOR:
            return None
        dev_id = _read_hex(os.path.join(path, 'device'))
        if dev_id not in _BY_ID:
            return None
        model, virtual = _BY_ID[dev_id]
        link = os.path.join(path, 'driver')
        driver = (os.path.basename(os.readlink(link))
                  if os.path.islink(link) else None)
        return QatDevice(name, dev_id, model, virtual, driver)

    def usable(self) -> list[QatDevice]:
        """Devices bound to a driver (unbound ones cannot take requests)."""
        return [d for d in self.devices() if d.driver]


# --- argv builders (pure) ---------------------------------------------------
def qzip_compress_argv(level: int, threads: int = 1) -> list[str]:
    return ['qzip', '-A', 'deflate', '-O', 'gzip',
            '-L', str(max(1, min(9, int(level))))]


def qzip_decompress_argv() -> list[str]:
    return ['qzip', '-d', '-O', 'gzip']


def qzip_version_argv() -> list[str]:
    return ['qzip', '-V']


class QatCompressor(cli.CliCompressor):
    name = 'qat'
    tool = 'qzip'
    hardware = True
    # Last for gzip: any software decoder is preferred (decoding is not
    # where QAT pays).
    decodes = MappingProxyType({base.GZIP: 50})
    build_compress = staticmethod(qzip_compress_argv)

    def decompress_argv(self) -> list[str]:
        return qzip_decompress_argv()

    def version_argv(self) -> list[str]:
        return qzip_version_argv()

    def probe(self) -> QatProbe:
        return QatProbe(self.settings.sysfs_root)

    def availability(self) -> base.Availability:
        devices = self.probe().devices()
        if not devices:
            return base.Availability(False, 'no QAT device found in %s'
                                     % self.settings.sysfs_root)
        if not any(d.driver for d in devices):
            return base.Availability(
                False, 'QAT device(s) %s not bound to a driver'
                % ', '.join(d.address for d in devices))
        return super().availability()
