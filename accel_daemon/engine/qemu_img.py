# SPDX-License-Identifier: Apache-2.0
"""qemu-img commands as data, and parsers for what qemu-img prints.

Everything here is pure (argv lists in, dicts out) except ``probe_direct_io``,
which touches the destination to find out whether O_DIRECT works there.
Running the commands is ``images.py``'s job, through ``process.run`` and the
command filters; ``filters/qemu-img.filters`` allows exactly the shapes built
here, so a change to a builder needs the matching filter change.

Every builder takes the format explicitly: qemu-img must never guess a format
from the content (CVE-2026-24708; the guessing is what turned a raw disk
holding a qcow2 header into a host file read, e.g. CVE-2024-32498).
"""

from __future__ import annotations

import dataclasses
import errno
import json
import logging
import mmap
import os
import re
import stat
from typing import Any

from accel_daemon import exception

LOG = logging.getLogger(__name__)

QEMU_IMG = 'qemu-img'

# qemu-img driver names.  'vhd' is the name users (and Glance) use for 'vpc'.
INPUT_FORMATS = ('raw', 'qcow2', 'vmdk', 'vhdx', 'vpc', 'vdi')
OUTPUT_FORMATS = ('raw', 'qcow2', 'vmdk', 'vhdx', 'vpc')
# qemu-img measure only knows these output drivers (vmdk/vhdx/vpc say
# "does not support size measurement").
MEASURE_FORMATS = ('raw', 'qcow2')
ALIASES = {'vhd': 'vpc'}

CACHE_NONE = 'none'
CACHE_WRITEBACK = 'writeback'
# writethrough flushes after every write: 2.4x slower than 'none' here and
# never safer than writeback + the fsync AtomicOutput does on commit.
CACHE_MODES = (CACHE_NONE, CACHE_WRITEBACK)

# -S: runs of zeros at least this long become holes (raw) or unallocated
# clusters; 4k matches the page and most filesystem block sizes.
SPARSE_SIZE = '4k'
# -S 0: no zero detection, every zero is written (the output is fully
# allocated; cinder's disable_sparse, for thin backends that need it).
NO_SPARSE = '0'
MAX_COROUTINES = 16  # qemu-img's own upper bound for -m

_DIRECT_BLOCK = 4096


def canonical_format(fmt: Any, operation: str,
                     allowed: tuple[str, ...]) -> str:
    """Map a user format name to a qemu-img driver, or UnsupportedFormat."""
    if not isinstance(fmt, str):
        raise exception.UnsupportedFormat(format=fmt, operation=operation)
    name = ALIASES.get(fmt.lower(), fmt.lower())
    if name not in allowed:
        raise exception.UnsupportedFormat(format=fmt, operation=operation)
    return name


def input_format(fmt: Any, operation: str = 'input') -> str:
    return canonical_format(fmt, operation, INPUT_FORMATS)


def output_format(fmt: Any, operation: str = 'output') -> str:
    return canonical_format(fmt, operation, OUTPUT_FORMATS)


# --- argv builders --------------------------------------------------------
def fd_arg(fd: int) -> str:
    """How qemu-img is told to open our descriptor ``fd`` (with pass_fds).

    The child gets only the descriptors passed to it, and /dev/fd/N reopens
    the very inode we checked and inspected, whatever happens to its name.
    """
    return '/dev/fd/%d' % int(fd)


_PROC_FD = '/proc/self/fd/'


def proc_fd_path(fd: int) -> str:
    """The same magic link seen from this process (for our own probes)."""
    return '%s%d' % (_PROC_FD, int(fd))


def version_cmd() -> list[str]:
    return [QEMU_IMG, '--version']


def parse_version(data: bytes | str) -> str:
    """'qemu-img version 7.2.22 (Debian ...)' -> that first line."""
    if isinstance(data, bytes):
        data = data.decode('utf-8', 'replace')
    return (data.strip().splitlines() or [''])[0]


def info_cmd(path: str, fmt: str) -> list[str]:
    return [QEMU_IMG, 'info', '-f', input_format(fmt, 'info'),
            '--output=json', path]


def check_cmd(path: str, fmt: str) -> list[str]:
    return [QEMU_IMG, 'check', '-f', input_format(fmt, 'check'),
            '--output=json', path]


def compare_cmd(path1: str, fmt1: str, path2: str, fmt2: str) -> list[str]:
    return [QEMU_IMG, 'compare', '-f', input_format(fmt1, 'compare'),
            '-F', input_format(fmt2, 'compare'), path1, path2]


def measure_cmd(path: str, src_fmt: str, dst_fmt: str) -> list[str]:
    return [QEMU_IMG, 'measure', '-f', input_format(src_fmt, 'measure'),
            '-O', canonical_format(dst_fmt, 'measure', MEASURE_FORMATS),
            '--output=json', path]


@dataclasses.dataclass(frozen=True)
class ConvertFlags:
    """The flags of one ``qemu-img convert`` (``convert_cmd``).

    ``existing_target`` adds -n (write into a device or pre-created file
    instead of creating it); ``target_is_zero`` adds --target-is-zero, which
    qemu-img only accepts together with -n.  ``sparse=False`` gives -S 0
    (every zero written); ``rate_limit`` adds -r, in bytes per second.
    """
    src_cache: str
    dst_cache: str
    coroutines: int
    unordered: bool = False
    existing_target: bool = False
    target_is_zero: bool = False
    compress: bool = False
    sparse: bool = True
    rate_limit: int | None = None


def convert_cmd(src: str, dst: str, src_fmt: str, dst_fmt: str,
                flags: ConvertFlags) -> list[str]:
    """argv for ``qemu-img convert`` (always -p, -f, -O, -T, -t, -m, -S)."""
    src_cache, dst_cache = flags.src_cache, flags.dst_cache
    coroutines, rate_limit = flags.coroutines, flags.rate_limit
    target_is_zero, existing_target = (flags.target_is_zero,
                                       flags.existing_target)
    compress, sparse = flags.compress, flags.sparse
    src_fmt = input_format(src_fmt, 'convert')
    dst_fmt = output_format(dst_fmt, 'convert')
    for mode in (src_cache, dst_cache):
        if mode not in CACHE_MODES:
            raise exception.InvalidRequest(reason='cache mode %r' % mode)
    if not 1 <= int(coroutines) <= MAX_COROUTINES:
        raise exception.InvalidRequest(reason='-m must be 1..16')
    if target_is_zero and not existing_target:
        raise exception.InvalidRequest(
            reason='target_is_zero needs an existing target (block device)')
    if compress and dst_fmt != 'qcow2':
        raise exception.InvalidRequest(
            reason='compressed output is only supported for qcow2')
    if not sparse and (compress or target_is_zero):
        # Both skip zeros on purpose: asking to write them too is a
        # contradiction, not a request to guess at.
        raise exception.InvalidRequest(
            reason='sparse=False cannot be combined with %s'
            % ('compress' if compress else 'target_is_zero'))
    if rate_limit is not None and (isinstance(rate_limit, bool)
                                   or int(rate_limit) < 1):
        raise exception.InvalidRequest(reason='-r must be at least 1')
    argv = [QEMU_IMG, 'convert', '-p', '-f', src_fmt, '-O', dst_fmt,
            '-T', src_cache, '-t', dst_cache]
    if flags.unordered:
        argv.append('-W')
    argv += ['-m', str(int(coroutines)),
             '-S', SPARSE_SIZE if sparse else NO_SPARSE]
    if rate_limit is not None:
        argv += ['-r', str(int(rate_limit))]
    if existing_target:
        argv.append('-n')
    if target_is_zero:
        argv.append('--target-is-zero')
    if compress:
        argv.append('-c')
    return argv + [src, dst]


# --- output parsers -------------------------------------------------------
def _json(data: bytes | str, what: str) -> dict:
    try:
        value = json.loads(data)
    except (ValueError, UnicodeDecodeError) as e:
        raise exception.ImageInspectionError(
            path=what, reason='unparsable qemu-img output: %s' % e)
    if not isinstance(value, dict):
        raise exception.ImageInspectionError(
            path=what, reason='qemu-img output is not an object')
    return value


def parse_info(data: bytes | str, path: str = '') -> dict:
    return _json(data, path)


def parse_check(data: bytes | str, path: str = '') -> dict:
    return _json(data, path)


def parse_measure(data: bytes | str, path: str = '') -> dict:
    value = _json(data, path)
    for key in ('required', 'fully-allocated'):
        if not isinstance(value.get(key), int):
            raise exception.ImageInspectionError(
                path=path, reason='qemu-img measure gave no %s' % key)
    return value


def validate_info(info: dict, path: str, fmt: str,
                  opened_as: str | None = None) -> None:
    """Defence in depth after format_inspector: what qemu-img itself saw.

    format_inspector is the gate (it runs before qemu-img touches the file);
    this repeats the important checks on qemu-img's own reading, so a parser
    difference between the two cannot open a backing or data file.
    ``opened_as`` is the name qemu-img was given (an NBD ``json:`` spec or
    fd_arg) when not ``path``: an extent may only name the image itself
    (``same_image``).
    """
    fmt = input_format(fmt, 'info')
    if info.get('format') != fmt:
        raise exception.FormatMismatch(path=path, claimed=fmt,
                                       detected=info.get('format'))
    for key in ('backing-filename', 'full-backing-filename',
                'backing-filename-format'):
        if info.get(key):
            # CVE-2024-32498 family: a backing file makes qemu read
            # another file of the host.
            raise exception.UnsafeImage(path=path, reason='has a backing file')
    data = (info.get('format-specific') or {}).get('data') or {}
    if data.get('data-file') or data.get('data-file-raw'):
        # CVE-2024-32498: an external data file is a host file read.
        raise exception.UnsafeImage(path=path, reason='has a data file')
    for extent in data.get('extents') or ():
        # CVE-2022-47951: VMDK extents naming other files.
        name = extent.get('filename')
        if opened_as is not None:
            other = bool(name) and not same_image(name, opened_as)
        else:
            other = bool(name) and (os.path.realpath(name)
                                    != os.path.realpath(path))
        if other:
            raise exception.UnsafeImage(
                path=path, reason='VMDK extent refers to another file')
    if not isinstance(info.get('virtual-size'), int):
        raise exception.ImageInspectionError(path=path,
                                             reason='no virtual size')


def _flat(spec: Any, prefix: str = '') -> dict:
    """QEMU's dotted form of a nested option dict."""
    if not isinstance(spec, dict):
        return {prefix[:-1]: spec}
    out: dict = {}
    for key, value in spec.items():
        out.update(_flat(value, '%s%s.' % (prefix, key)))
    return out


def _spec(name: str) -> dict | None:
    if not name.startswith('json:'):
        return None
    try:
        value = json.loads(name[len('json:'):])
    except ValueError:
        return None
    return _flat(value) if isinstance(value, dict) else None


def same_image(name: str, opened_as: str) -> bool:
    """Whether the file ``name`` qemu-img reports (a VMDK extent) is the
    one it was given as ``opened_as``: the same string, or, for an image
    served over NBD, the same ``file`` node (qemu-img reports it as its
    own flattened ``json:`` spec)."""
    if name == opened_as:
        return True
    given, seen = _spec(opened_as), _spec(name)
    if given is None or seen is None:
        return False
    node = {k[len('file.'):]: v for k, v in given.items()
            if k.startswith('file.')}
    return bool(node) and seen == node


def compare_result(returncode: int) -> bool | None:
    """qemu-img compare: 0 identical, 1 different, anything else an error."""
    return {0: True, 1: False}.get(returncode)


# qemu-img check exit codes: 0 clean, 2 corruptions, 3 leaked clusters;
# 1 means the check itself failed, 63 the format has no check (raw).
CHECK_REPORTED = (0, 2, 3)
CHECK_UNSUPPORTED = 63


# --- progress -------------------------------------------------------------
_PROGRESS_RE = re.compile(rb'\((\d+(?:\.\d+)?)/100%\)')


class ProgressParser:
    """Incremental parser for ``qemu-img -p`` output ("    (12.34/100%)\\r").

    Chunks from a pipe may split a record anywhere; only the unfinished tail
    is kept between calls, so memory stays bounded however long it runs.
    """

    _KEEP = 64

    def __init__(self) -> None:
        self._tail = b''
        self.fraction = 0.0

    def feed(self, chunk: bytes) -> float | None:
        """Consume output; return the newest fraction seen, if any."""
        data = self._tail + chunk
        matches = list(_PROGRESS_RE.finditer(data))
        last_end = matches[-1].end() if matches else 0
        self._tail = data[max(last_end, len(data) - self._KEEP):]
        if not matches:
            return None
        value = min(1.0, max(0.0, float(matches[-1].group(1)) / 100.0))
        # qemu-img only ever moves forward; ignore anything that would not.
        self.fraction = max(self.fraction, value)
        return self.fraction


# --- O_DIRECT probe -------------------------------------------------------
def probe_direct_io(fd: int, write: bool = True) -> bool:
    """True if O_DIRECT I/O works on the file open as ``fd``.

    The descriptor's magic link is reopened with O_DIRECT (the inode we
    hold, not a name).  With ``write`` on a regular file (an output that
    qemu-img recreates anyway) one aligned zero block is written and the
    file is truncated again.  Block devices and sources are only read:
    writing a device would break --target-is-zero.  tmpfs (before Linux
    6.6) and some FUSE/NFS setups refuse O_DIRECT with EINVAL; 'writeback'
    is used there.
    """
    try:
        write = write and not stat.S_ISBLK(os.fstat(fd).st_mode)
        flags = os.O_DIRECT | os.O_CLOEXEC
        flags |= os.O_WRONLY if write else os.O_RDONLY
        dfd = os.open(proc_fd_path(fd), flags)
    except OSError as e:
        LOG.debug('O_DIRECT open of fd %d failed: %s', fd, e)
        return False
    buf = mmap.mmap(-1, _DIRECT_BLOCK)  # page aligned, as O_DIRECT needs
    try:
        if write:
            os.pwritev(dfd, [buf], 0)
            os.ftruncate(dfd, 0)
        else:
            os.preadv(dfd, [buf], 0)
        return True
    except OSError as e:
        if e.errno not in (errno.EINVAL, errno.EOPNOTSUPP):
            LOG.warning('O_DIRECT probe of fd %d failed: %s', fd, e)
        return False
    finally:
        buf.close()
        os.close(dfd)
