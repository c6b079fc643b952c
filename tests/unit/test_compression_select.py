# SPDX-License-Identifier: Apache-2.0
"""Driver loading and selection with stevedore test instances."""

import pytest
from stevedore import extension

from accel_daemon.engine import compression
from accel_daemon.engine import driver as base
from accel_daemon.engine.settings import Settings
from accel_daemon import exception


class _Fake(base.Compressor):
    name = 'fake'
    usable = True

    def availability(self):
        return base.Availability(self.usable, '' if self.usable
                                 else '%s is absent' % self.name, '1.0')

    def compress(self, src, dst, progress):
        raise NotImplementedError

    def open_decompressed(self, src, progress):
        raise NotImplementedError


def _cls(name, usable=True, hardware=False, fmt=base.GZIP):
    return type(name, (_Fake,), {'name': name, 'usable': usable,
                                 'hardware': hardware, 'output_format': fmt})


def _drivers(settings, *classes):
    mgr = extension.ExtensionManager.make_test_instance(
        [extension.Extension(c.name, None, c, None) for c in classes],
        namespace=compression.NAMESPACE)
    return compression.load_drivers(settings, policy=None, manager=mgr)


STANDARD = (_cls('qat', usable=False, hardware=True), _cls('isal'),
            _cls('pigz'), _cls('gzip'), _cls('zstd', fmt=base.ZSTD))


def test_load_drivers_instantiates_each_with_settings():
    settings = Settings()
    drivers = _drivers(settings, *STANDARD)
    assert sorted(drivers) == ['gzip', 'isal', 'pigz', 'qat', 'zstd']
    assert all(d.settings is settings for d in drivers.values())


def test_first_available_in_preference_order_wins():
    settings = Settings(drivers=('qat', 'pigz', 'isal', 'gzip'))
    assert compression.select(_drivers(settings, *STANDARD),
                              settings).name == 'pigz'


def test_hardware_preferred_when_available():
    settings = Settings()
    drivers = _drivers(settings, _cls('qat', hardware=True), _cls('isal'))
    chosen = compression.select(drivers, settings)
    assert (chosen.name, chosen.hardware) == ('qat', True)


def test_drivers_outside_the_preference_list_are_not_used():
    settings = Settings(drivers=('qat',))
    with pytest.raises(exception.NoEngineAvailable) as e:
        compression.select(_drivers(settings, *STANDARD), settings)
    assert 'qat is absent' in str(e.value)


def test_fallback_disabled_without_hardware():
    settings = Settings(allow_software_fallback=False)
    with pytest.raises(exception.NoEngineAvailable) as e:
        compression.select(_drivers(settings, *STANDARD), settings)
    assert 'software fallback is disabled' in str(e.value)


def test_fallback_disabled_with_hardware():
    settings = Settings(allow_software_fallback=False)
    drivers = _drivers(settings, _cls('qat', hardware=True), _cls('isal'))
    assert compression.select(drivers, settings).name == 'qat'


def test_explicit_driver_honoured():
    settings = Settings()
    drivers = _drivers(settings, *STANDARD)
    assert compression.select(drivers, settings, driver='gzip').name == 'gzip'


@pytest.mark.parametrize('name,why', [('qat', 'qat is absent'),
                                      ('nope', 'unknown driver'),
                                      ('zstd', 'writes zstd')])
def test_explicit_driver_refused(name, why):
    settings = Settings()
    with pytest.raises(exception.NoEngineAvailable) as e:
        compression.select(_drivers(settings, *STANDARD), settings,
                           driver=name)
    assert why in str(e.value)


def test_explicit_software_driver_obeys_fallback_policy():
    settings = Settings(allow_software_fallback=False)
    with pytest.raises(exception.NoEngineAvailable):
        compression.select(_drivers(settings, *STANDARD), settings,
                           driver='isal')


def test_zstd_only_when_asked_for():
    settings = Settings()   # zstd is not in the default preference list
    drivers = _drivers(settings, _cls('zstd', fmt=base.ZSTD), _cls('gzip'))
    assert compression.select(drivers, settings).name == 'gzip'
    assert compression.select(drivers, settings,
                              format=base.ZSTD).name == 'zstd'


def test_gzip_only_drivers_never_chosen_for_zstd():
    settings = Settings()
    with pytest.raises(exception.NoEngineAvailable):
        compression.select(_drivers(settings, _cls('gzip')), settings,
                           format=base.ZSTD)


def test_capabilities_lists_every_driver():
    caps = compression.capabilities(_drivers(Settings(), *STANDARD))
    by_name = {c['name']: c for c in caps}
    assert set(by_name) == {'qat', 'isal', 'pigz', 'gzip', 'zstd'}
    assert by_name['qat'] == {'name': 'qat', 'available': False,
                              'reason': 'qat is absent', 'hardware': True,
                              'format': 'gzip', 'version': '1.0'}
    assert by_name['zstd']['format'] == 'zstd'
    assert by_name['isal']['available'] is True


def test_installed_entry_points_cover_every_driver():
    mgr = compression._default_manager()
    assert sorted(mgr.names()) == ['gzip', 'igzip', 'isal', 'pigz', 'qat',
                                   'zstd']


def test_explicit_driver_must_be_in_the_operators_list(tmp_path):
    from tests import envfixture
    env = envfixture.make_env(tmp_path, drivers=('isal', 'gzip'))
    drivers = compression.load_drivers(env.settings, env.policy)
    assert compression.select(drivers, env.settings, driver='gzip').name \
        == 'gzip'
    with pytest.raises(exception.NoEngineAvailable) as e:
        compression.select(drivers, env.settings, driver='pigz')
    assert 'not in [compression] drivers' in e.value.message


def _decoding(name, ranks, usable=True):
    return type(name, (_Fake,), {'name': name, 'usable': usable,
                                 'decodes': ranks})


def test_shipped_drivers_declare_what_they_decode(tmp_path):
    from tests import envfixture
    env = envfixture.make_env(tmp_path)
    drivers = compression.load_drivers(env.settings, env.policy)
    assert compression.decoders(drivers, base.GZIP) == [
        'isal', 'igzip', 'pigz', 'gzip', 'qat']
    assert compression.decoders(drivers, base.ZSTD) == ['zstd']
    assert compression.decoders(drivers, 'xz') == []


def test_a_new_driver_decodes_by_its_own_declaration():
    drivers = _drivers(Settings(), _decoding('isal', {base.GZIP: 10}),
                       _decoding('pigz', {base.GZIP: 30}),
                       _decoding('fast', {base.GZIP: 15, base.ZSTD: 5}),
                       _decoding('zstd', {base.ZSTD: 10}),
                       _cls('silent'))
    assert compression.decoders(drivers, base.GZIP) == ['isal', 'fast',
                                                        'pigz']
    assert compression.decoders(drivers, base.ZSTD) == ['fast', 'zstd']


def test_decoder_is_the_first_available_by_rank():
    drivers = _drivers(Settings(),
                       _decoding('isal', {base.GZIP: 10}, usable=False),
                       _decoding('pigz', {base.GZIP: 30}),
                       _decoding('gzip', {base.GZIP: 40}))
    assert compression.decoder_for(drivers, base.GZIP).name == 'pigz'


def test_no_decoder_names_every_reason():
    drivers = _drivers(Settings(),
                       _decoding('isal', {base.GZIP: 10}, usable=False),
                       _cls('silent'))
    with pytest.raises(exception.NoEngineAvailable) as e:
        compression.decoder_for(drivers, base.GZIP)
    assert e.value.message.endswith('no gzip decoder: isal: isal is absent')
    with pytest.raises(exception.NoEngineAvailable, match='none'):
        compression.decoder_for(drivers, base.ZSTD)
