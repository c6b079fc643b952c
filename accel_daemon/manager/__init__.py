"""Task manager: a bounded worker pool running backend operations as tasks.

``backend`` holds the protocol the manager calls (and a fake for tests),
``tasks`` the ``TaskManager`` and ``journal`` the sqlite journal that lets
finished tasks survive a restart.
"""
