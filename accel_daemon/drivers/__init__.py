"""Compression drivers (stevedore namespace ``accel_daemon.compressors``)."""
