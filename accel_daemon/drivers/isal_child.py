# SPDX-License-Identifier: Apache-2.0
"""The unprivileged gzip reader: a script, run as a tool, never imported.

``IsalCompressor.open_decompressed`` runs, through the filters and as the
tool user (no capability, a Landlock domain of its own)::

    python3 -I -S /proc/self/fd/C/accel_daemon/drivers/isal_child.py \
        /proc/self/fd/C /proc/self/fd/L CHUNK

C and L are directories the helper opened and handed down: the one that
holds the ``accel_daemon`` package and the one that holds ``isal``.  They
are the child's only import path (``-I -S``: no environment, no site),
so it reads the code through descriptors and needs no path to the
installation, which may lie in a directory the tool user cannot enter.

Its stdin is the caller's compressed file (the helper's descriptor), its
stdout a pipe: ``isal_decode.write_frames`` of ``inflate_members``.  Bad
input: its reason on stderr and exit status 1.
"""

import os
import sys


def main() -> int:
    sys.path[:0] = sys.argv[1:3]
    from accel_daemon.drivers import isal_decode
    from accel_daemon import exception

    zero_members = isal_decode.known_zero_members(int(sys.argv[3]))
    raw = os.fdopen(0, 'rb', buffering=0)
    try:
        isal_decode.write_frames(isal_decode.inflate_members(
            raw, 'stdin', zero_members), 1)
    except BrokenPipeError:
        return 0     # the helper stopped reading (cap, cancel): it knows
    except exception.CorruptInput as e:
        sys.stderr.write(str(e.fields.get('reason', e.message)))
        return 1
    except isal_decode.DECODE_ERRORS as e:
        sys.stderr.write(str(e) or type(e).__name__)
        return 1
    return 0


if __name__ == '__main__':
    sys.exit(main())
