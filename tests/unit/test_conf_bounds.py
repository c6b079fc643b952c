# SPDX-License-Identifier: Apache-2.0
"""The resource bounds reach the engine: options -> Settings -> policy."""

from oslo_config import cfg

from accel_daemon import conf as accel_conf
from accel_daemon.engine.engine import Engine
from accel_daemon.engine.settings import Settings

TiB = 1024 ** 4


def _conf(overrides=None):
    conf = cfg.ConfigOpts()
    accel_conf.register_opts(conf)
    conf([], project='accel-daemon')
    for (group, name), value in (overrides or {}).items():
        conf.set_override(name, value, group)
    return conf


def test_defaults():
    conf = _conf()
    assert conf.accel_daemon.command_timeout == 3 * 3600
    assert conf.accel_daemon.max_image_gib == 1024
    assert conf.compression.max_decompressed_gib == 1024
    assert conf.tasks.task_timeout == 6 * 3600
    s = accel_conf.settings(conf)
    assert s.command_timeout == 3 * 3600.0
    assert s.max_image_bytes == TiB
    assert s.max_decompressed_bytes == TiB
    # The dataclass defaults agree with the option defaults.
    d = Settings()
    assert (d.command_timeout, d.max_image_bytes, d.max_decompressed_bytes) \
        == (s.command_timeout, s.max_image_bytes, s.max_decompressed_bytes)


def test_zero_command_timeout_means_none():
    s = accel_conf.settings(_conf({('accel_daemon', 'command_timeout'): 0}))
    assert s.command_timeout is None


def test_overrides():
    s = accel_conf.settings(_conf({
        ('accel_daemon', 'command_timeout'): 120,
        ('accel_daemon', 'max_image_gib'): 8,
        ('compression', 'max_decompressed_gib'): 4}))
    assert s.command_timeout == 120.0
    assert s.max_image_bytes == 8 * 1024 ** 3
    assert s.max_decompressed_bytes == 4 * 1024 ** 3


def test_engine_policy_takes_the_command_timeout(tmp_path):
    engine = Engine(Settings(filters_path=(str(tmp_path),),
                             command_timeout=42.0))
    assert engine.policy.timeout == 42.0
    engine = Engine(Settings(filters_path=(str(tmp_path),),
                             command_timeout=None))
    assert engine.policy.timeout is None
