#!/usr/bin/python3
# SPDX-License-Identifier: Apache-2.0
"""Install the shipped filter files for a host's allowed directories.

The shipped filters name no directory today: every command gets opened
descriptors (/dev/fd/N) or stdin/stdout, never a path.  A filter file that
names the default directory /var/lib/accel-daemon/images (an operator's
own, or an older one) is copied to DEST with that name replaced by a regex
alternation of the given directories (each escaped), so one filter line
covers every allowed directory:

    render_filters.py filters/ /etc/accel-daemon/rootwrap.d /srv/a /srv/b

Standard library only: it runs before any venv exists.
"""

import os
import re
import sys

DEFAULT_DIR = '/var/lib/accel-daemon/images'


def dir_pattern(dirs: list[str]) -> str:
    clean = [os.path.normpath(d) for d in dirs]
    for d in clean:
        if not d.startswith('/') or ',' in d:
            # A comma would split the rootwrap filter line.
            raise ValueError('not a usable directory: %r' % d)
    if clean == [DEFAULT_DIR]:
        return DEFAULT_DIR
    return '(?:%s)' % '|'.join(re.escape(d) for d in clean)


def render(text: str, dirs: list[str]) -> str:
    return text.replace(DEFAULT_DIR, dir_pattern(dirs))


def main(argv: list[str]) -> int:
    if len(argv) < 3:
        print(__doc__, file=sys.stderr)
        return 2
    src, dest, dirs = argv[0], argv[1], argv[2:]
    os.makedirs(dest, mode=0o755, exist_ok=True)
    for name in sorted(os.listdir(src)):
        path = os.path.join(src, name)
        if name.startswith('.') or not os.path.isfile(path):
            continue
        with open(path) as f:
            text = render(f.read(), dirs)
        out = os.path.join(dest, name)
        with open(out + '.tmp', 'w') as f:
            f.write(text)
        os.chmod(out + '.tmp', 0o644)
        os.replace(out + '.tmp', out)
        print(out)
    return 0


if __name__ == '__main__':
    sys.exit(main(sys.argv[1:]))
