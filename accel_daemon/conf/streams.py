# SPDX-License-Identifier: Apache-2.0
from oslo_config import cfg

GROUP = cfg.OptGroup('streams', title='Image streams (stream_in, stream_out)')

OPTS = [
    cfg.StrOpt('socket_dir', default='/run/accel-daemon/streams',
               help='Directory of the image streams\' sockets, one per '
                    'running stream_in or stream_out task (<task '
                    'id>.sock). The '
                    'privileged helper makes it root\'s with mode 0750 and '
                    'the group below; only that group may enter it. Not '
                    'inside allowed_dirs.'),
    cfg.StrOpt('group', default='accel-streams',
               help='Group of socket_dir: the users that may stream images '
                    '(cinder, nova) must be members, as well as being named '
                    'by allowed_users or allowed_groups. tools/install.sh '
                    'creates it. Empty: image streams are off (stream_in '
                    'and stream_out are refused).'),
    cfg.ListOpt('allowed_users', default=[],
                help='Users whose processes may write or read an image '
                     'stream '
                     '(checked with SO_PEERCRED on every connection), for '
                     'example cinder,nova. A writer must also present the '
                     'task\'s one-time token, which only the caller that '
                     'submitted the task got.'),
    cfg.ListOpt('allowed_groups', default=[],
                help='Groups whose members may write or read an image '
                     'stream, as allowed_users.'),
    cfg.IntOpt('idle_timeout', default=60, min=1,
               help='Seconds a stream may wait for its writer (reader) to '
                    'connect, and then for each next byte to arrive (be '
                    'taken); past it the task fails with StreamFailed and '
                    'nothing is published.'),
    cfg.IntOpt('total_timeout', default=3 * 3600, min=1,
               help='Seconds one stream may last from its connection on.'),
    cfg.IntOpt('max_streams', default=8, min=1,
               help='Streams that may run at the same time; a stream_in '
                    'or stream_out task beyond them fails with QueueFull.'),
]


def register_opts(conf: cfg.ConfigOpts) -> None:
    conf.register_group(GROUP)
    conf.register_opts(OPTS, group=GROUP)


def list_opts() -> dict:
    return {GROUP: OPTS}
