# SPDX-License-Identifier: Apache-2.0
"""Task states, defined once (the journal, the manager, the RPC layer, the
client and the command line all use these).

A contract module beside ``accel_daemon.operations``: it imports nothing,
so the client that cinder and nova import can name the states without
loading the daemon's task manager.
"""

QUEUED = 'queued'
RUNNING = 'running'
SUCCEEDED = 'succeeded'
FAILED = 'failed'
CANCELLED = 'cancelled'

ACTIVE_STATES = (QUEUED, RUNNING)
FINAL_STATES = (SUCCEEDED, FAILED, CANCELLED)
STATES = ACTIVE_STATES + FINAL_STATES
