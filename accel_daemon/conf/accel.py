# SPDX-License-Identifier: Apache-2.0
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
                     'may be read or written in place, for example '
                     '``/dev/cinder-volumes/volume-*``: name the volumes '
                     'of the backends, never a whole namespace such as '
                     '``/dev/mapper/*``. A path must match a pattern and be '
                     'a block device that nobody else uses (claimed with '
                     'O_EXCL; no holders, mount or lock). Empty (the '
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
    cfg.StrOpt('staging_dir', default='/var/lib/accel-daemon/staging',
               help='Private directory (root\'s, mode 0700, made on first '
                    'use) where an output is written when the file system '
                    'of its directory cannot hold an unnamed file '
                    '(O_TMPFILE: some NFS, CIFS and FUSE mounts). The '
                    'output is complete and accepted before it is copied '
                    'into its directory, so nothing unfinished or refused '
                    'is ever named there; the copy costs one more write of '
                    'the output. It must be on a local file system with '
                    'O_TMPFILE and room for the largest such output, and '
                    'not inside allowed_dirs (the daemon refuses to start '
                    'if it is). Empty: outputs into such directories are '
                    'refused (PathNotAllowed).'),
    cfg.IntOpt('command_timeout', default=3 * 3600, min=0,
               help='Wall-clock limit, in seconds, of every external command '
                    'accel-daemon runs (qemu-img, compressors...). A command '
                    'still running after it has its whole process group '
                    'killed and fails with CommandTimeout, so a hung tool '
                    'cannot hold a worker forever. 0 means no limit. The '
                    'default, 3 hours, lets an image of max_image_gib '
                    '(1 TiB) stream through one command at about 100 MB/s, '
                    'slower than every engine measured on a 2-core host '
                    'except single-threaded gzip on fully allocated data; '
                    'raise it if you rely on that fallback for very large '
                    'images or write onto very slow storage. In-process '
                    'work (the isal driver) runs no command: [tasks] '
                    'task_timeout bounds it, and a transfer paced by a '
                    'request\'s bps_limit that could not end within this '
                    'limit fails at once with RateLimitTooLow. Related '
                    'options: [tasks] task_timeout, min_bps_limit.'),
    cfg.IntOpt('min_bps_limit', default=1024 * 1024, min=1,
               help='The lowest bps_limit (bytes per second) a request may '
                    'ask for; a lower one is refused with InvalidRequest '
                    'before any work starts, so a request cannot hold a '
                    'worker for hours by asking for a trickle. Default 1 '
                    'MiB/s; lower it if a caller\'s own limit (cinder\'s '
                    'volume_copy_bps_limit) is lower. Related options: '
                    'command_timeout.'),
    cfg.StrOpt('tool_user', default='accel-tools',
               help='System user the external tools (qemu-img, gzip, pigz, '
                    'igzip, zstd, qzip) run as. accel-daemon opens every file '
                    'itself and hands the tools descriptors, so this user '
                    'needs no access to any image, and no tool keeps any '
                    'capability: qemu-img reads its inputs, and writes a '
                    'block device, over NBD from descriptors the privileged '
                    'helper holds, and writes a new output file it is lent. '
                    'The tools get the supplementary groups of this user: '
                    'add it to the group of the QAT device nodes (qat) for '
                    'qzip. tools/install.sh creates it. Empty runs the tools '
                    'as uid 0 (still with no capability): not recommended. '
                    'Only a root engine (the privileged helper, accel-image '
                    '--local as root) switches users.'),
    cfg.BoolOpt('confine_tools', default=True,
                help='Run every external tool in a Landlock domain in which '
                     'it can open nothing but the descriptors accel-daemon '
                     'handed it and the system\'s program directories '
                     '(/usr, /lib): an image changed after inspection (its '
                     'owner can rewrite it through a shared mmap with no '
                     'trace in its times) may name a backing file, a data '
                     'file or an extent, and qemu-img still reads nothing '
                     'else. Needs Linux 5.13 or later with Landlock '
                     'enabled; without it every command is refused while '
                     'this is True. False runs the tools unconfined: not '
                     'recommended. Related options: tool_extra_paths.'),
    cfg.ListOpt('tool_extra_paths', default=[],
                help='Files or directories the confined tools may also read '
                     'and write, for a hardware driver\'s device nodes, '
                     'for example /dev/qat_adf_ctl,/dev/usdm_drv,/dev/vfio '
                     'for qzip on a QAT host. Related options: '
                     'confine_tools.'),
    cfg.IntOpt('max_image_gib', default=1024, min=1,
               help='Largest virtual size, in GiB, of an image accel-daemon '
                    'will convert or write. Larger images are refused before '
                    'any work starts. Related options: [compression] '
                    'max_decompressed_gib.'),
]


def register_opts(conf):
    conf.register_group(GROUP)
    conf.register_opts(OPTS, group=GROUP)


def list_opts():
    return {GROUP: OPTS}
