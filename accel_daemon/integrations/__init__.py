"""Glue for services that call accel-daemon through their own plug-in
points (``accel_daemon.integrations.cinder`` and ``.nova``; the shared
parts in ``.common``).  Each module imports its service lazily:
accel_daemon imports without cinder or nova installed."""
