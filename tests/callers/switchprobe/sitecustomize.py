# SPDX-License-Identifier: Apache-2.0
"""An observer for the tests of accel-cinder-volume and accel-nova-compute
(tests/callers/switchtest.py), loaded by the console script's interpreter
at start-up (this directory is on its PYTHONPATH).

It changes nothing in the program: a profile function (``sys.setprofile``,
main thread) watches for a few functions being entered and records, at
each, what the process looks like then:

* ``integration``: the first line of accel_daemon.integrations.SERVICE
  runs -- which service modules are already imported, whether eventlet has
  patched ``thread``, the oslo.service backend chosen;
* ``main``: the service's own ``main()`` (cinder/cmd/volume.py,
  nova/cmd/compute.py) is entered -- is the service's ``convert_image``
  accel-daemon's, cinder's accelerator list, and the arguments;
* ``stop`` (optional, ACCEL_PROBE_STOP=FILE-SUFFIX:FUNCTION): that function
  is entered -- the report is written and the process ends at once with
  status 97.  A service that would otherwise go on (nova-compute waits for
  its conductor) is stopped at a known point of its real start-up.

The report (JSON, to ACCEL_PROBE_REPORT) is written at exit or at the stop
point, with the service's parsed configuration files.

Only with ACCEL_PROBE_ALTER does it change the service, at the
``integration`` event (before ``install()`` looks at it), to look like
another release of it: ``signature`` gives its ``convert_image`` one more
parameter, ``release`` makes its distribution report version 1.0.0.
"""

import atexit
import json
import os
import sys

SERVICE = os.environ.get('ACCEL_PROBE_SERVICE')
REPORT = os.environ.get('ACCEL_PROBE_REPORT')
STOP = os.environ.get('ACCEL_PROBE_STOP')
ALTER = os.environ.get('ACCEL_PROBE_ALTER')
STOP_STATUS = 97

# (file name suffix, function name) -> event
WATCH = {
    ('accel_daemon/integrations/%s.py' % SERVICE, '<module>'):
        'integration',
    ('cinder/cmd/volume.py', 'main'): 'main',
    ('nova/cmd/compute.py', 'main'): 'main',
}
if STOP:
    _suffix, _, _name = STOP.partition(':')
    WATCH[(_suffix, _name)] = 'stop'

EVENTS = []
_written = []


def _module(name):
    return sys.modules.get(name)


def _convert_image():
    """Where the service's convert_image comes from (module name)."""
    if SERVICE == 'cinder':
        mod, attr = _module('cinder.image.image_utils'), 'convert_image'
    else:
        mod, attr = _module('nova.virt.images'), 'convert_image'
    func = getattr(mod, attr, None) if mod else None
    return getattr(func, '__module__', None)


def _state():
    eventlet_patcher = _module('eventlet.patcher')
    backend = _module('oslo_service.backend')
    accelerator = _module('cinder.image.accelerator')
    return {
        'modules': sorted(
            n for n in ('cinder.monkey_patch', 'nova.monkey_patch',
                        'cinder.cmd.volume', 'nova.cmd.compute',
                        'oslo_messaging', 'accel_daemon.client',
                        'accel_daemon.integrations.cinder',
                        'accel_daemon.integrations.nova')
            if n in sys.modules),
        'eventlet_patched': bool(
            eventlet_patcher and eventlet_patcher.is_monkey_patched('thread')),
        'backend': str(getattr(backend, '_cached_backend_type', None)),
        'convert_image': _convert_image(),
        'accelerators': list(getattr(
            accelerator, '_ACCEL_PATH_PREFERENCE_ORDER_LIST', []) or []),
        'argv': list(sys.argv),
    }


def _conf():
    try:
        from oslo_config import cfg
        return {'config_file': list(cfg.CONF.config_file or []),
                'config_dir': list(cfg.CONF.config_dir or [])
                if isinstance(cfg.CONF.config_dir, list)
                else cfg.CONF.config_dir}
    except Exception as e:  # not parsed, not registered
        return {'error': '%s: %s' % (type(e).__name__, e)}


def _write(end):
    if _written or not REPORT:
        return
    _written.append(True)
    with open(REPORT, 'w') as f:
        json.dump({'events': EVENTS, 'end': end, 'conf': _conf(),
                   'final': _state()}, f)


def _alter():
    """The service as another release of it would be (ACCEL_PROBE_ALTER)."""
    import importlib
    if ALTER == 'signature':
        module = importlib.import_module(
            'cinder.image.image_utils' if SERVICE == 'cinder'
            else 'nova.virt.images')
        original = module.convert_image

        def convert_image(*args, new_parameter=None, **kwargs):
            return original(*args, **kwargs)
        module.convert_image = convert_image
    elif ALTER == 'release':
        from importlib import metadata
        real = metadata.version

        def version(name):
            return '1.0.0' if name == SERVICE else real(name)
        metadata.version = version


def _profile(frame, event, arg):
    if event != 'call':
        return
    code = frame.f_code
    key = WATCH.get((_tail(code.co_filename), code.co_name))
    if key is None:
        return
    EVENTS.append(dict(_state(), event=key))
    if key == 'integration' and ALTER:
        _alter()
    if key == 'stop':
        _write('stop')
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(STOP_STATUS)


_SUFFIXES = {suffix for suffix, _ in WATCH}
_tails = {}


def _tail(filename):
    try:
        return _tails[filename]
    except KeyError:
        pass
    tail = next((s for s in _SUFFIXES if filename.endswith(s)), None)
    _tails[filename] = tail
    return tail


if SERVICE and REPORT:
    atexit.register(_write, 'exit')
    sys.setprofile(_profile)
