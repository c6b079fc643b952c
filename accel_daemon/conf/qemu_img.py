# SPDX-License-Identifier: Apache-2.0
from oslo_config import cfg

GROUP = cfg.OptGroup('qemu_img', title='qemu-img settings')

OPTS = [
    cfg.IntOpt('info_cpu_seconds', default=30, min=1,
               help='CPU time limit for qemu-img info on an untrusted image '
                    '(guards against images crafted to make it spin).'),
    cfg.IntOpt('info_address_space_mib', default=1024, min=64,
               help='Address space limit, in MiB, for qemu-img info on an '
                    'untrusted image.'),
    cfg.IntOpt('convert_coroutines', default=16, min=1, max=16,
               help='Parallel coroutines for qemu-img convert (-m). Higher '
                    'values help most on remote or slow storage.'),
]


def register_opts(conf):
    conf.register_group(GROUP)
    conf.register_opts(OPTS, group=GROUP)


def list_opts():
    return {GROUP: OPTS}
