from oslo_config import cfg

GROUP = cfg.OptGroup('accel_daemon', title='accel-daemon service options')

OPTS = [
    cfg.ListOpt('allowed_dirs', default=['/var/lib/accel-daemon/images'],
                help='Directories that every input and output path must '
                     'resolve under (after following symbolic links). Paths '
                     'are checked by the RPC layer and again inside the '
                     'privileged process. Keep these in step with the path '
                     'patterns of the filter files in filters_path. Related '
                     'options: allowed_block_devices.'),
    cfg.ListOpt('allowed_block_devices', default=[],
                help='Shell-style patterns (fnmatch) of block devices that '
                     'may '
                     'be read or written in place, for example '
                     '/dev/mapper/cinder--volumes-volume--*. A path must '
                     'match a pattern and be a block device. Empty (the '
                     'default) allows no device.'),
    cfg.ListOpt('filters_path', default=['/etc/accel-daemon/rootwrap.d'],
                help='Directories of oslo.rootwrap-style filter files. Every '
                     'command is matched against them in-process before it '
                     'runs; a command no filter allows is refused. A driver '
                     'whose command is not allowed is reported unavailable.'),
    cfg.ListOpt('exec_dirs',
                default=['/usr/local/bin', '/usr/bin', '/bin', '/usr/sbin',
                         '/sbin'],
                help='Directories searched for the executables the filters '
                     'name without an absolute path.'),
    cfg.StrOpt('output_file_mode', default='0640',
               help='Octal mode of every file accel-daemon creates. Outputs '
                    'take the owner and group of the directory they are '
                    'written into.'),
    cfg.StrOpt('state_dir', default='/var/lib/accel-daemon/state',
               help='Directory for the task journal and other state. It '
                    'must not be inside any of allowed_dirs (requests could '
                    'then read or overwrite the journal): the daemon refuses '
                    'to start if it is.'),
]


def register_opts(conf):
    conf.register_group(GROUP)
    conf.register_opts(OPTS, group=GROUP)


def list_opts():
    return {GROUP: OPTS}
