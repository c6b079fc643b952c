"""The shipped sample config must match the registered options.

When this fails, regenerate the sample (from the repository root):

    .venv/bin/oslo-config-generator \
        --config-file etc/accel-daemon/accel-daemon-config-generator.conf
"""

import os
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(
    os.path.abspath(__file__))))
ETC = os.path.join(ROOT, 'etc', 'accel-daemon')
GENERATOR_CONF = os.path.join(ETC, 'accel-daemon-config-generator.conf')
SAMPLE = os.path.join(ETC, 'accel-daemon.conf.sample')
REGEN = ('.venv/bin/oslo-config-generator --config-file '
         'etc/accel-daemon/accel-daemon-config-generator.conf')


def _generate(output):
    # A child process, so the generator's entry-point imports (oslo.messaging
    # and its drivers) neither see nor change this process's global CONF.
    subprocess.run(
        [sys.executable, '-c',
         'from oslo_config import generator; generator.main()',
         '--config-file', GENERATOR_CONF, '--output-file', str(output)],
        check=True, cwd=ROOT, capture_output=True, text=True)
    with open(output) as f:
        return f.read()


def test_sample_config_is_up_to_date(tmp_path):
    fresh = _generate(tmp_path / 'accel-daemon.conf.sample')
    with open(SAMPLE) as f:
        shipped = f.read()
    assert fresh == shipped, 'sample config is stale; run: ' + REGEN


def test_sample_names_every_accel_daemon_group():
    with open(SAMPLE) as f:
        text = f.read()
    for group in ('[accel_daemon]', '[compression]', '[qemu_img]'):
        assert group in text
    assert 'allowed_dirs' in text


def test_client_namespace_has_the_client_options_only():
    """What cinder's and nova's generators get from ``accel_daemon.client``
    (an entry point of its own, so they list nothing of the daemon)."""
    out = subprocess.run(
        [sys.executable, '-c',
         'from oslo_config import generator; generator.main()',
         '--namespace', 'accel_daemon.client'],
        capture_output=True, text=True, check=True, cwd=ROOT).stdout
    groups = [line for line in out.splitlines() if line.startswith('[')]
    assert groups == ['[DEFAULT]', '[accel_daemon_client]']
    assert 'wait_interval' in out and 'allowed_dirs' not in out
