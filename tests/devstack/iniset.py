# SPDX-License-Identifier: Apache-2.0
"""iniset FILE SECTION OPTION VALUE, for tests/devstack/functions.sh.

devstack's iniset: the option is replaced where it is; a missing option is
added right under its section line; a missing section is added at the end;
a missing file is created.  Other lines are kept as they are.
"""

import re
import sys


def iniset(path, section, option, value):
    try:
        with open(path) as f:
            lines = f.read().splitlines()
    except FileNotFoundError:
        lines = []
    header = '[%s]' % section
    key = re.compile(r'^%s[ \t]*=' % re.escape(option))
    start = next((i for i, line in enumerate(lines) if line == header),
                 None)
    if start is None:
        lines += ['', header]
        start = len(lines) - 1
    end = next((i for i in range(start + 1, len(lines))
                if lines[i].startswith('[')), len(lines))
    new = '%s = %s' % (option, value)
    for i in range(start + 1, end):
        if key.match(lines[i]):
            lines[i] = new
            break
    else:
        lines.insert(start + 1, new)
    with open(path, 'w') as f:
        f.write('\n'.join(lines) + '\n')


if __name__ == '__main__':
    iniset(*sys.argv[1:5])
