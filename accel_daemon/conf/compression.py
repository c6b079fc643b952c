# SPDX-License-Identifier: Apache-2.0
from oslo_config import cfg

GROUP = cfg.OptGroup('compression', title='Compression engines')

OPTS = [
    cfg.ListOpt('drivers', default=['qat', 'isal', 'igzip', 'pigz', 'gzip'],
                help='Compression drivers in order of preference; the first '
                     'available one is used. Known drivers: qat (Intel QAT '
                     'through qzip; needs a bound QAT PCI device), isal '
                     '(ISA-L through the isal Python library), igzip (ISA-L '
                     'command line), pigz, gzip, zstd (not gzip: only for '
                     'callers that ask for zstd). Related options: '
                     'allow_software_fallback.'),
    cfg.BoolOpt('allow_software_fallback', default=True,
                help='Whether a software driver may be used when no hardware '
                     'driver is available. When false, compression fails '
                     'with NoEngineAvailable on hosts without an '
                     'accelerator.'),
    cfg.IntOpt('level', default=1, min=1, max=9,
               help='Compression level. 1 is the fastest; on ISA-L, levels '
                    'above 3 are clamped to 3.'),
    cfg.IntOpt('threads', default=0, min=0,
               help='Threads for software compression; 0 means one per '
                    'CPU.'),
    cfg.IntOpt('chunk_size_mib', default=4, min=1, max=256,
               help='Size of the independent chunks (gzip members) the '
                    'threaded software engine compresses.'),
    cfg.IntOpt('max_decompressed_gib', default=1024, min=1,
               help='Largest output a decompression may write, in GiB. It '
                    'is the cap applied when the request gives no max_bytes '
                    '(a request\'s max_bytes can only lower it). Protects '
                    'against decompression bombs. The default matches '
                    '[accel_daemon] max_image_gib: nothing larger could be '
                    'converted or written afterwards anyway.'),
    cfg.StrOpt('sysfs_root', default='/sys',
               help='Root of sysfs used to detect accelerator hardware. Only '
                    'tests change this.'),
]


def register_opts(conf):
    conf.register_group(GROUP)
    conf.register_opts(OPTS, group=GROUP)


def list_opts():
    return {GROUP: OPTS}
