"""accel-daemon: accelerated, privileged image conversion and compression."""
