# SPDX-License-Identifier: Apache-2.0
from oslo_config import cfg

GROUP = cfg.OptGroup('tasks', title='Task manager options')

OPTS = [
    cfg.IntOpt('workers', default=4, min=1, max=256,
               help='Number of tasks that run at the same time. Further '
                    'tasks wait in a first-in, first-out queue. Each task '
                    'may itself use several threads (see [compression] '
                    'threads), so on small hosts keep this near the number '
                    'of CPUs. With the privsep backend, the privsep '
                    'thread pool must be at least this large.'),
    cfg.IntOpt('max_queued', default=1000, min=0,
               help='Largest number of tasks waiting for a worker. A '
                    'request beyond it fails with QueueFull. 0 means no '
                    'limit.'),
    cfg.FloatOpt('task_retention_hours', default=168.0, min=0,
                 help='Finished tasks (succeeded, failed, cancelled) are '
                      'kept in the journal and queryable for this many '
                      'hours, then removed. Related options: '
                      'max_tasks_kept.'),
    cfg.IntOpt('max_tasks_kept', default=10000, min=1,
               help='Largest number of finished tasks kept in the journal; '
                    'the oldest are removed first. Queued and running '
                    'tasks are never removed.'),
    cfg.FloatOpt('stop_timeout', default=10.0, min=0,
                 help='Seconds a stopping daemon waits for running tasks '
                      'to finish before cancelling them. Tasks still running '
                      'when the daemon exits are reported failed '
                      '(TaskInterrupted) on the next start.'),
    cfg.IntOpt('task_timeout', default=6 * 3600, min=0,
               help='Wall-clock limit, in seconds, of one task, counted from '
                    'when a worker starts it (time spent queued does not '
                    'count). A task past it is cancelled and ends failed '
                    'with TaskTimeout. If it has not stopped 30 seconds '
                    'later (a process stuck in uninterruptible I/O), it is '
                    'recorded as failed all the same and its worker is '
                    'replaced, so a hung task cannot hold a worker slot. 0 '
                    'means no limit. The default, 6 hours, is twice '
                    '[accel_daemon] command_timeout: the longest pipelines '
                    '(upload: convert then compress; download: decompress '
                    'then convert) run two long commands one after the '
                    'other. Related options: [accel_daemon] '
                    'command_timeout.'),
]


def register_opts(conf):
    conf.register_group(GROUP)
    conf.register_opts(OPTS, group=GROUP)


def list_opts():
    return {GROUP: OPTS}
