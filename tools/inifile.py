# SPDX-License-Identifier: Apache-2.0
"""Edit an INI file the way devstack's ``iniset`` does (standard library
only: install.sh and the devstack test harness run it with the system's
python3).

``iniset``: the option is replaced where it is; a missing option is added
right under its section line; a missing section is added at the end; a
missing file is created.  Other lines, comments included, are kept as they
are.  ``iniget`` reads one value back (None when absent).
"""

from __future__ import annotations

import re


def _read(path: str) -> list[str]:
    try:
        with open(path) as f:
            return f.read().splitlines()
    except FileNotFoundError:
        return []


def _section(lines: list[str], section: str) -> tuple[int | None, int]:
    """(index of the section line or None, index past its last line)."""
    header = '[%s]' % section
    start = next((i for i, line in enumerate(lines)
                  if line.strip() == header), None)
    if start is None:
        return None, len(lines)
    end = next((i for i in range(start + 1, len(lines))
                if lines[i].startswith('[')), len(lines))
    return start, end


def _key(option: str) -> re.Pattern[str]:
    return re.compile(r'^%s[ \t]*=[ \t]*(.*)$' % re.escape(option))


def iniget(path: str, section: str, option: str) -> str | None:
    lines = _read(path)
    start, end = _section(lines, section)
    if start is None:
        return None
    key = _key(option)
    for line in lines[start + 1:end]:
        m = key.match(line)
        if m:
            return m.group(1).strip()
    return None


def iniset(path: str, section: str, option: str, value: str) -> None:
    lines = _read(path)
    start, end = _section(lines, section)
    if start is None:
        lines += ['', '[%s]' % section]
        start, end = len(lines) - 1, len(lines)
    new = '%s = %s' % (option, value)
    key = _key(option)
    for i in range(start + 1, end):
        if key.match(lines[i]):
            lines[i] = new
            break
    else:
        lines.insert(start + 1, new)
    with open(path, 'w') as f:
        f.write('\n'.join(lines) + '\n')


if __name__ == '__main__':
    import sys
    # inifile.py get FILE SECTION OPTION | set FILE SECTION OPTION VALUE
    if sys.argv[1:2] == ['get'] and len(sys.argv) == 5:
        print(iniget(*sys.argv[2:5]) or '')
    elif sys.argv[1:2] == ['set'] and len(sys.argv) == 6:
        iniset(*sys.argv[2:6])
    else:
        sys.exit('usage: inifile.py get FILE SECTION OPTION | '
                 'set FILE SECTION OPTION VALUE')
