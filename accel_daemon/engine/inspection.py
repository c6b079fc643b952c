# SPDX-License-Identifier: Apache-2.0
"""Format detection and safety checks before qemu-img ever sees an image.

Every input goes through ``inspect()``: oslo.utils' format_inspector reads
the headers in Python (no qemu), every known format's inspector runs at once,
the one format found must pass its ``safety_check()`` and must equal the
format the caller claimed.  Only then may qemu-img open the file, and always
with that format forced (``-f``).

What this refuses, and why:
- qcow2 with a backing file or an external data file: qemu would open
  another host file (CVE-2024-32498).
- VMDK whose descriptor names flat or other extents: same, through the
  descriptor (CVE-2022-47951).  format_inspector refuses subformats other
  than monolithicSparse/streamOptimized and extent names with '/'; we also
  refuse non-SPARSE extents (a sparse header with capacity 0 makes qemu
  treat the embedded descriptor as a descriptor file, and a relative FLAT
  extent would then read a neighbour in the same directory).
- More than one format at once (a qcow2 header hidden in an ISO's system
  area, or a qcow2 that also carries an MBR/GPT signature): a parser that
  picks the "other" one would interpret the image differently.  Only a
  hybrid ISO (ISO + MBR/GPT) claimed as raw is accepted, see _choose().
- A claimed format that differs from the content (a qcow2 sent as "raw" is
  the classic way to smuggle a backing file to a later guessing reader).

Raw claims accept content detected as 'gpt' (partitioned disks, also MBR)
and 'iso' (the bytes of an ISO 9660/UDF filesystem): qemu-img reads both
with ``-f raw`` as opaque bytes, and cinder volumes created from ISO images
hold exactly that.  Both must still pass their own safety check, and an
ISO or GPT that also looks like something else is refused above.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import stat
from typing import Any

from oslo_utils.imageutils import format_inspector as fi

from accel_daemon.engine import files
from accel_daemon.engine import qemu_img
from accel_daemon import exception

LOG = logging.getLogger(__name__)

# qemu-img driver name -> format_inspector name.
_INSPECTOR_NAME = {'vpc': 'vhd'}
# Content that a 'raw' claim may carry (see the module docstring).
RAW_COMPATIBLE = frozenset({'raw', 'gpt', 'iso'})

_CHUNK = 64 * 1024
# Stop reading once the inspectors decided; this bounds a pathological file.
_MAX_READ = 64 * 1024 * 1024


@dataclasses.dataclass(frozen=True)
class Inspected:
    format: str          # qemu-img driver name (claimed == detected)
    virtual_size: int    # bytes the guest sees
    actual_size: int     # bytes allocated on disk (device size for devices)
    detected: str = ''   # format_inspector's name, e.g. 'gpt' for raw


def inspect(path: str, claimed: str) -> Inspected:
    """``inspect_fd()`` of a file named by a caller that has no descriptor
    (tests, tools).  The engine itself only inspects descriptors it opened
    once (``engine.files``)."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK
                     | os.O_CLOEXEC)
    except OSError as e:
        raise files.open_error(path, e)
    try:
        if not (stat.S_ISREG(os.fstat(fd).st_mode)
                or stat.S_ISBLK(os.fstat(fd).st_mode)):
            raise exception.PathNotAllowed(path=path,
                                           reason='not a regular file')
        return inspect_fd(fd, path, claimed)
    finally:
        os.close(fd)


def inspect_fd(fd: int, path: str, claimed: str) -> Inspected:
    """``inspect()`` of an already opened file (``path`` names it in errors).

    Callers that then hand the file to qemu-img pass this same descriptor
    (as /dev/fd/N), so the inode inspected is the inode qemu-img opens.
    """
    fmt = qemu_img.input_format(claimed, 'inspection')
    os.lseek(fd, 0, os.SEEK_SET)    # _detect reads from the shared offset
    found = _choose(_detect(fd, path), fmt, path)
    _check_claim(found, fmt, path)
    _safety(found, path)
    if str(found) == 'vmdk':
        check_vmdk_extents(found, path)
    size, allocated = _sizes(fd)
    virtual = size if fmt == 'raw' else found.virtual_size
    if virtual <= 0:
        raise exception.ImageInspectionError(
            path=path, reason='could not determine the virtual size')
    LOG.debug('%s: %s (detected %s), virtual %d bytes', path, fmt, found,
              virtual)
    return Inspected(fmt, virtual, allocated, str(found))


def _detect(fd: int, path: str) -> list[fi.FileInspector]:
    """Feed the file to every inspector until they all decided."""
    with os.fdopen(os.dup(fd), 'rb', buffering=0) as f:
        return _feed(f, path)[0]


def _feed(source: Any, path: str) -> tuple[list[fi.FileInspector], bytes]:
    """Feed ``source`` (``read(n)``) to every inspector until they all
    decided (at most ``_MAX_READ`` bytes); the formats found and the bytes
    read."""
    wrapper = fi.InspectWrapper(source)
    _vmdk_default(wrapper)
    head = bytearray()
    while len(head) < _MAX_READ:
        chunk = wrapper.read(_CHUNK)
        if not chunk:
            break
        head += chunk
        if wrapper.formats is not None:
            break
    wrapper.close()
    try:
        found = wrapper.formats
    except fi.ImageFormatError as e:
        raise exception.ImageInspectionError(path=path, reason=str(e))
    if not found:
        raise exception.ImageInspectionError(
            path=path, reason='format could not be determined')
    return found, bytes(head)


class _Reads:
    """``read(n)`` of a stream that has ``readinto``."""

    def __init__(self, stream: Any) -> None:
        self._stream = stream

    def read(self, n: int) -> bytes:
        buf = bytearray(n)
        got = self._stream.readinto(buf)
        return bytes(buf[:got])


def inspect_head(stream: Any, path: str, claimed: str) -> tuple[bytes, str]:
    """Judge the start of a stream (``readinto``) as ``inspect_fd`` judges a
    file, before anything of it is written: one format, the one claimed,
    safe.  Returns the bytes read, which come first in what is written,
    and the format format_inspector found."""
    fmt = qemu_img.input_format(claimed, 'inspection')
    found_all, head = _feed(_Reads(stream), path)
    found = _choose(found_all, fmt, path)
    _check_claim(found, fmt, path)
    _safety(found, path)
    if str(found) == 'vmdk':
        check_vmdk_extents(found, path)
    return head, str(found)


class _QuietVmdkProbe(logging.Filter):
    """format_inspector logs an ERROR whenever the first bytes of any file
    do not decode as ASCII while it checks for a VMDK text descriptor; that
    is the normal case for raw disks, so it is not an error for us."""

    def filter(self, record: logging.LogRecord) -> bool:
        return 'VMDK descriptor failed to decode' not in record.getMessage()


logging.getLogger(fi.__name__).addFilter(_QuietVmdkProbe())


def _vmdk_default(wrapper: fi.InspectWrapper) -> None:
    """Work around a format_inspector crash on non-ASCII 'descriptors'.

    VMDKInspector sets ``vmdktype`` only when the text it captured at
    offset 0 decodes as ASCII; otherwise ``format_match`` raises
    AttributeError and inspection of an ordinary raw disk (binary data in
    its first 64 KiB after some text) fails.  Not decodable means "not a
    VMDK descriptor", which is what this default says.
    """
    for inspector in getattr(wrapper, '_inspectors', ()):
        if isinstance(inspector, fi.VMDKInspector) and \
                not hasattr(inspector, 'vmdktype'):
            inspector.vmdktype = 'formatnotfound'


def _choose(found: list[fi.FileInspector], fmt: str,
            path: str) -> fi.FileInspector:
    """The one format of the content; several at once is an attack.

    One exception: a "hybrid" ISO (an ISO 9660 filesystem plus an MBR/GPT so
    it boots from USB sticks; most Linux installer images) claimed as raw.
    Both are read by qemu-img -f raw as plain bytes, both safety checks must
    pass, and a third format (a qcow2 header at offset 0) is still refused.
    """
    names = sorted(str(i) for i in found)
    if len(found) == 1:
        return found[0]
    if fmt == 'raw' and names == ['gpt', 'iso']:
        for inspector in found:
            _safety(inspector, path)
        return next(i for i in found if str(i) == 'iso')
    # Two headers in one file: a parser that picks the "other" one reads a
    # different image (qcow2 hidden in an ISO's system area, or behind GPT).
    raise exception.UnsafeImage(
        path=path, reason='Multiple formats detected: %s' % ','.join(names))


def _check_claim(found: fi.FileInspector, fmt: str, path: str) -> None:
    detected = str(found)
    if fmt == 'raw':
        ok = detected in RAW_COMPATIBLE
    else:
        ok = detected == _INSPECTOR_NAME.get(fmt, fmt)
    if not ok:
        raise exception.FormatMismatch(path=path, claimed=fmt,
                                       detected=detected)


def _safety(found: fi.FileInspector, path: str) -> None:
    try:
        found.safety_check()
    except fi.SafetyCheckFailed as e:
        reasons = '; '.join('%s: %s' % (k, v) for k, v in e.failures.items())
        raise exception.UnsafeImage(path=path, reason=reasons)
    except fi.ImageFormatError as e:
        raise exception.ImageInspectionError(path=path, reason=str(e))


def check_vmdk_extents(found: fi.FileInspector, path: str) -> None:
    """Every extent of a VMDK we accept must be SPARSE (CVE-2022-47951)."""
    text = getattr(found, 'desc_text', None) or ''
    for line in text.splitlines():
        words = line.split()
        if words and words[0] in ('rw', 'rdonly', 'noaccess'):
            if len(words) < 3 or words[2] != 'sparse':
                raise exception.UnsafeImage(
                    path=path, reason='VMDK has a non-sparse extent: %s'
                    % ' '.join(words[:3]))


def _sizes(fd: int) -> tuple[int, int]:
    st = os.fstat(fd)
    if stat.S_ISBLK(st.st_mode):
        size = os.lseek(fd, 0, os.SEEK_END)
        return size, size
    return st.st_size, st.st_blocks * 512
