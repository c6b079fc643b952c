# SPDX-License-Identifier: Apache-2.0
"""Fixtures of the path and open-once tests: an allowed directory, a place
outside it, and a root-only "secret" there that no attack may reach."""

import pytest

from accel_daemon.engine import files
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


class StagedOutput(files.Output):
    """An output whose directory has no O_TMPFILE (NFS, CIFS): it is made
    in the staging directory of the ``staging`` fixture."""
    use_tmpfile = False
    staging = ''

    def __init__(self, *args, **kwargs):
        kwargs.setdefault('staging_dir', self.staging)
        super().__init__(*args, **kwargs)


@pytest.fixture(autouse=True)
def staging(tmp_path, monkeypatch):
    """The private staging directory of StagedOutput (made on first use)."""
    d = tmp_path / 'staging'
    monkeypatch.setattr(StagedOutput, 'staging', str(d))
    return d


def on_copy_in(monkeypatch, hook):
    """Run ``hook(out)`` as soon as a staged output's copy-in temp name
    exists in the caller's directory (before anything is copied): the
    directory's owner acting at the worst moment."""
    real = files.Output._create_named

    def create(self):
        real(self)
        hook(self)
    monkeypatch.setattr(files.Output, '_create_named', create)
