# SPDX-License-Identifier: Apache-2.0
"""Markers of the reliability tests; tests marked ``last`` (the broker
restart, which disturbs every other user of the shared RabbitMQ) run
after all the others."""


def pytest_configure(config):
    config.addinivalue_line('markers', 'last: run after every other test')
    config.addinivalue_line(
        'markers', 'broker_restart: restarts the shared RabbitMQ app '
        '(deselect with -m "not broker_restart")')


def pytest_collection_modifyitems(session, config, items):
    items.sort(key=lambda item: item.get_closest_marker('last') is not None)
