"""oslo.messaging RPC layer: the daemon's endpoint and server, and the
low-level client (``rpcapi.AccelAPI``) that ``accel_daemon.client`` wraps.

Topic ``accel_daemon``, server name = the daemon's host, API version 1.0.
"""
