# SPDX-License-Identifier: Apache-2.0
"""Fixtures of the path and open-once tests: an allowed directory, a place
outside it, and a root-only "secret" there that no attack may reach."""

import pytest

from accel_daemon.engine import paths


@pytest.fixture
def allowed(tmp_path):
    d = tmp_path / 'allowed'
    d.mkdir()
    (tmp_path / 'outside').mkdir()
    return d


@pytest.fixture
def conf(allowed):
    return paths.Confinement([str(allowed)])


@pytest.fixture
def victim(tmp_path, allowed):
    v = tmp_path / 'outside' / 'victim'
    v.write_bytes(b'root:secret\n')
    return v
