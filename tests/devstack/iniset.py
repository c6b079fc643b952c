# SPDX-License-Identifier: Apache-2.0
"""iniset FILE SECTION OPTION VALUE, for tests/devstack/functions.sh: the
same edit as devstack's (``tools/inifile.py``)."""

import os
import sys

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)),
                                '..', '..', 'tools'))

import inifile  # noqa: E402

if __name__ == '__main__':
    inifile.iniset(*sys.argv[1:5])
