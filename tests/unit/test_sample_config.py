# SPDX-License-Identifier: Apache-2.0
"""The shipped sample configs must match the registered options.

When this fails, regenerate the samples (from the repository root):

    for c in etc/accel-daemon/*config-generator.conf; do
        .venv/bin/oslo-config-generator --config-file "$c"; done
"""

import os
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(
    os.path.abspath(__file__))))
ETC = os.path.join(ROOT, 'etc', 'accel-daemon')
GENERATOR_CONF = os.path.join(ETC, 'accel-daemon-config-generator.conf')
SAMPLE = os.path.join(ETC, 'accel-daemon.conf.sample')
REGEN = ('.venv/bin/oslo-config-generator --config-file '
         'etc/accel-daemon/accel-daemon-config-generator.conf')


# generator config -> the sample it writes: the daemon's, and what a
# cinder and a nova deployment add to their own configuration.
SAMPLES = {
    'accel-daemon-config-generator.conf': 'accel-daemon.conf.sample',
    'accel-daemon-cinder-config-generator.conf':
        'accel-daemon-cinder.conf.sample',
    'accel-daemon-nova-config-generator.conf':
        'accel-daemon-nova.conf.sample',
}


def _generate(output, generator_conf=GENERATOR_CONF):
    # A child process, so the generator's entry-point imports (oslo.messaging
    # and its drivers) neither see nor change this process's global CONF.
    subprocess.run(
        [sys.executable, '-c',
         'from oslo_config import generator; generator.main()',
         '--config-file', generator_conf, '--output-file', str(output)],
        check=True, cwd=ROOT, capture_output=True, text=True)
    with open(output) as f:
        return f.read()


def _namespaces(*names):
    """The sample oslo-config-generator writes for these namespaces."""
    args = []
    for name in names:
        args += ['--namespace', name]
    return subprocess.run(
        [sys.executable, '-c',
         'from oslo_config import generator; generator.main()'] + args,
        capture_output=True, text=True, check=True, cwd=ROOT).stdout


def _groups(sample):
    return [line for line in sample.splitlines() if line.startswith('[')]


def test_every_generator_config_has_a_sample():
    names = {n for n in os.listdir(ETC) if n.endswith('generator.conf')}
    assert names == set(SAMPLES)


@pytest.mark.parametrize('generator_conf', sorted(SAMPLES))
def test_sample_config_is_up_to_date(tmp_path, generator_conf):
    sample = SAMPLES[generator_conf]
    fresh = _generate(tmp_path / sample, os.path.join(ETC, generator_conf))
    with open(os.path.join(ETC, sample)) as f:
        shipped = f.read()
    assert fresh == shipped, 'sample config is stale; run: ' + REGEN.replace(
        'accel-daemon-config-generator.conf', generator_conf)


def test_sample_names_every_accel_daemon_group():
    with open(SAMPLE) as f:
        text = f.read()
    for group in ('[accel_daemon]', '[compression]', '[qemu_img]'):
        assert group in text
    assert 'allowed_dirs' in text


def test_client_namespace_has_the_client_options_only():
    """What cinder's and nova's generators get from ``accel_daemon.client``
    (an entry point of its own, so they list nothing of the daemon)."""
    out = _namespaces('accel_daemon.client')
    assert _groups(out) == ['[DEFAULT]', '[accel_daemon_client]']
    assert 'wait_interval' in out and 'allowed_dirs' not in out
    # The switch the accel-cinder-volume and accel-nova-compute commands
    # read from the service's configuration.
    assert '#enabled = false' in out


# namespace -> the one group it lists
SERVICE_NAMESPACES = {'accel_daemon.cinder': '[accel_daemon_cinder]',
                      'accel_daemon.nova': '[accel_daemon_nova]'}


@pytest.mark.parametrize('namespace', sorted(SERVICE_NAMESPACES))
def test_service_namespace_has_its_own_group_only(namespace):
    """cinder's sample gets [accel_daemon_cinder] and not nova's group,
    and neither gets anything of the daemon."""
    out = _namespaces(namespace)
    assert _groups(out) == ['[DEFAULT]', SERVICE_NAMESPACES[namespace]]
    assert 'probe_timeout' in out


def test_service_samples_hold_no_daemon_group():
    # (The daemon's own sample lists the client group too: accel-image
    # reads it.)
    daemon_groups = set(_groups(_namespaces('accel_daemon'))) - {
        '[DEFAULT]', '[accel_daemon_client]'}
    assert '[accel_daemon]' in daemon_groups
    for service in ('cinder', 'nova'):
        with open(os.path.join(ETC, SAMPLES[
                'accel-daemon-%s-config-generator.conf' % service])) as f:
            groups = _groups(f.read())
        assert sorted(groups) == sorted(['[DEFAULT]', '[accel_daemon_client]',
                                         '[accel_daemon_%s]' % service])
        assert not daemon_groups & set(groups)


def test_daemon_sample_holds_no_integration_group():
    with open(SAMPLE) as f:
        groups = _groups(f.read())
    assert '[accel_daemon_cinder]' not in groups
    assert '[accel_daemon_nova]' not in groups
