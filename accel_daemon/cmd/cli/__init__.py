"""accel-image, the operators' command line, built on cliff.

``app`` holds the application (global options, configuration, the one-line
errors), ``base`` the pieces every command shares (the backend, output
columns, ISO times), ``progress`` the progress bar, ``broker`` the bounded
broker check and the deadline of each call, and ``capabilities`` and
``tasks`` the commands themselves (entry points ``accel_daemon.cli`` in
setup.cfg).
"""
