# SPDX-License-Identifier: Apache-2.0
import threading
import time

import pytest

from accel_daemon.manager.watchdog import Watchdog


class Recorder:
    def __init__(self):
        self.expired = []
        self.abandoned = []
        self.event = threading.Event()

    def expire(self, task_id):
        self.expired.append((task_id, time.monotonic()))
        self.event.set()

    def abandon(self, task_id):
        self.abandoned.append((task_id, time.monotonic()))
        self.event.set()


@pytest.fixture
def watch():
    dogs = []

    def factory(timeout, grace):
        rec = Recorder()
        dog = Watchdog(timeout, grace, rec.expire, rec.abandon)
        dog.start()
        dogs.append(dog)
        return dog, rec

    yield factory
    for dog in dogs:
        dog.stop()


def test_expire_then_abandon_in_order(watch):
    dog, rec = watch(0.2, 0.2)
    started = time.monotonic()
    dog.track('a')
    assert not dog.expired('a')
    time.sleep(1.0)
    assert [t for t, _ in rec.expired] == ['a']
    assert [t for t, _ in rec.abandoned] == ['a']
    assert 0.2 <= rec.expired[0][1] - started < 0.5
    assert 0.4 <= rec.abandoned[0][1] - started < 0.8
    assert dog.expired('a')
    dog.forget('a')
    assert not dog.expired('a')


def test_forgotten_task_is_left_alone(watch):
    dog, rec = watch(0.2, 0.1)
    dog.track('a')
    dog.forget('a')
    time.sleep(0.4)
    assert rec.expired == [] and rec.abandoned == []


def test_finished_within_grace_is_not_abandoned(watch):
    dog, rec = watch(0.1, 0.3)
    dog.track('a')
    assert rec.event.wait(2)
    dog.forget('a')   # the cancel worked: the manager forgets the task
    time.sleep(0.4)
    assert [t for t, _ in rec.expired] == ['a'] and rec.abandoned == []


def test_one_thread_for_many_tasks(watch):
    before = threading.active_count()
    dog, rec = watch(0.2, 10)
    for n in range(50):
        dog.track('t%d' % n)
    assert threading.active_count() == before + 1
    time.sleep(0.5)
    assert sorted(t for t, _ in rec.expired) == sorted(
        't%d' % n for n in range(50))


def test_a_failing_callback_does_not_stop_the_watchdog():
    seen = []

    def expire(task_id):
        seen.append(task_id)
        if task_id == 'bad':
            raise RuntimeError('boom')

    dog = Watchdog(0.1, 10, expire, lambda task_id: None)
    dog.start()
    try:
        dog.track('bad')
        time.sleep(0.2)
        dog.track('good')
        time.sleep(0.3)
    finally:
        dog.stop()
    assert seen == ['bad', 'good']


@pytest.mark.parametrize('timeout, grace', [(0, 1), (-1, 1), (1, -1)])
def test_bad_arguments(timeout, grace):
    with pytest.raises(ValueError):
        Watchdog(timeout, grace, print, print)
