# SPDX-License-Identifier: Apache-2.0
"""Options of the integrations: read by cinder-volume and nova-compute.

These groups live in the *service's* configuration (cinder.conf,
nova.conf), beside ``[accel_daemon_client]``, never in the daemon's.  Each
has its own ``oslo.config.opts`` namespace (``accel_daemon.cinder``,
``accel_daemon.nova``): a cinder sample lists ``[accel_daemon_cinder]``
and a nova sample ``[accel_daemon_nova]``, each beside the client group of
``accel_daemon.client``, and neither lists the other service's group.
"""

from __future__ import annotations

from oslo_config import cfg

CINDER_GROUP = cfg.OptGroup(
    'accel_daemon_cinder',
    title='accel-daemon as a cinder image accelerator',
    help='How cinder-volume uses accel-daemon: the image accelerator '
         '(accel_daemon.integrations.cinder.DaemonAccel) and convert_image. '
         'Switched on by [accel_daemon_client] enabled.')
CINDER_OPTS: list[cfg.Opt] = [
    cfg.FloatOpt('exist_cache_ttl', default=5.0, min=0.0, max=300.0,
                 help='Seconds the answer of the daemon to "are you '
                      'there?" (is_accel_exist) is reused before asking '
                      'again. 0 asks every time.'),
    cfg.FloatOpt('probe_timeout', default=3.0, min=0.1, max=60.0,
                 help='Seconds is_accel_exist waits for the daemon to '
                      'answer its capabilities call before it answers '
                      'False.'),
    cfg.BoolOpt('stream_images', default=True,
                help='Stream image data through the daemon (API 1.5): an '
                     'upload that converts or compresses is read, '
                     'converted and compressed by the daemon while it is '
                     'sent to the image service, with no file in '
                     'image_conversion_dir. Off: the daemon converts and '
                     'compresses cinder\'s temporary files, as before '
                     'streams.'),
]

NOVA_GROUP = cfg.OptGroup(
    'accel_daemon_nova',
    title='accel-daemon for nova-compute conversions',
    help='How nova-compute uses accel-daemon for its qemu-img conversions. '
         'Switched on by [accel_daemon_client] enabled.')
NOVA_OPTS: list[cfg.Opt] = [
    cfg.FloatOpt('caps_cache_ttl', default=5.0, min=0.0, max=300.0,
                 help='Seconds the capabilities of the daemon (or its '
                      'silence) are reused before asking again. 0 asks '
                      'every time.'),
    cfg.FloatOpt('probe_timeout', default=3.0, min=0.1, max=60.0,
                 help='Seconds convert_image waits for the daemon to '
                      'answer its capabilities call before it uses nova\'s '
                      'own qemu-img.'),
    cfg.BoolOpt('stream_images', default=True,
                help='Stream image downloads through the daemon (API 1.5): '
                     'fetch_to_raw writes what glance sends into the '
                     'daemon, which inspects it before writing anything '
                     'and publishes the image once the download and '
                     'nova\'s checks passed, with no .part or .converted '
                     'file. Off: nova downloads and the daemon converts, '
                     'as before streams.'),
]


def register_cinder_opts(conf: cfg.ConfigOpts) -> None:
    conf.register_group(CINDER_GROUP)
    conf.register_opts(CINDER_OPTS, group=CINDER_GROUP)


def register_nova_opts(conf: cfg.ConfigOpts) -> None:
    conf.register_group(NOVA_GROUP)
    conf.register_opts(NOVA_OPTS, group=NOVA_GROUP)


def list_cinder_opts() -> dict[cfg.OptGroup, list[cfg.Opt]]:
    return {CINDER_GROUP: CINDER_OPTS}


def list_nova_opts() -> dict[cfg.OptGroup, list[cfg.Opt]]:
    return {NOVA_GROUP: NOVA_OPTS}
