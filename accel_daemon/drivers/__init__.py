"""Compression drivers, loaded with stevedore from ``accel_daemon.compressors``."""
