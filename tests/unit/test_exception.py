# SPDX-License-Identifier: Apache-2.0
from accel_daemon import exception


def test_message_from_template_and_fields():
    e = exception.PathNotAllowed(path='/etc/shadow', reason='outside')
    assert e.message == 'Path /etc/shadow is not allowed: outside'
    assert e.fields == {'path': '/etc/shadow', 'reason': 'outside'}


def test_round_trip_keeps_type_message_and_fields():
    e = exception.SizeLimitExceeded(path='/x.gz', limit=10)
    back = exception.AccelError.from_dict(e.to_dict())
    assert type(back) is exception.SizeLimitExceeded
    assert isinstance(back, exception.AccelError)
    assert back.message == e.message
    assert back.fields == {'path': '/x.gz', 'limit': 10}


def test_unknown_type_becomes_base_class():
    back = exception.AccelError.from_dict({'type': 'Nope', 'message': 'm'})
    assert type(back) is exception.AccelError
    assert back.message == 'm'


def test_bad_template_fields_do_not_hide_error():
    e = exception.SizeLimitExceeded(path='/x')   # 'limit' missing
    assert 'SizeLimitExceeded' not in e.message
    assert '/x' in e.message


def test_single_argument_construction_survives_privsep_style_rebuild():
    # oslo.privsep rebuilds exceptions as cls(*e.args).
    e = exception.CommandDenied(command='rm -rf /')
    again = type(e)(*e.args)
    assert again.message == e.message


def test_non_plain_fields_are_stringified():
    e = exception.InvalidRequest(reason=ValueError('x'))
    assert e.to_dict()['fields'] == {'reason': 'x'}
