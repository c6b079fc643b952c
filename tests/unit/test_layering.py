# SPDX-License-Identifier: Apache-2.0
"""The dependency direction of the design, checked on the source.

rpc -> manager -> privileged -> engine/drivers: the engine and the drivers
are pure (no root, no broker, settings as arguments), the engine loads the
drivers by entry point only, the RPC layer never reaches the privileged
one, the contract modules (the operation table, task states, errors, wire
values, records) import nothing above them, and the client side that
cinder and nova import stays free of the daemon's privileged and engine
code.

Imports are read with ``ast`` from every module of the package, including
imports inside functions and ``importlib.import_module('...')`` calls with
a literal name, so a lazy import cannot slip past.  Imports under ``if
TYPE_CHECKING:`` are read too; only a rule that says so lets them through
(they never run).

The direct imports do not show what a module loads through the modules it
imports (``accel_daemon.conf.<group>`` runs ``accel_daemon/conf/__init__.py``
first), so the client and the contract modules are also imported in a
fresh interpreter and ``sys.modules`` is read.
"""

from __future__ import annotations

import ast
import dataclasses
import json
import pathlib
import subprocess
import sys

import pytest

import accel_daemon

PACKAGE_DIR = pathlib.Path(accel_daemon.__file__).parent

_DAEMON_SIDE = ('accel_daemon.rpc', 'accel_daemon.manager',
                'accel_daemon.privileged', 'accel_daemon.operations',
                'accel_daemon.conf', 'accel_daemon.cmd', 'accel_daemon.client',
                'oslo_messaging', 'oslo_privsep', 'oslo_config')


# The typed contract between the layers, and what sits above it.
CONTRACT = ('accel_daemon.operations', 'accel_daemon.states',
            'accel_daemon.exception', 'accel_daemon.wire',
            'accel_daemon.records', 'accel_daemon.options')
ABOVE_CONTRACT = ('accel_daemon.rpc', 'accel_daemon.manager',
                  'accel_daemon.privileged', 'accel_daemon.engine',
                  'accel_daemon.drivers', 'accel_daemon.conf',
                  'accel_daemon.cmd', 'accel_daemon.integrations',
                  'accel_daemon.client')


@dataclasses.dataclass(frozen=True)
class Rule:
    name: str
    applies_to: tuple[str, ...]     # module names or package prefixes
    forbidden: tuple[str, ...]      # module names or package prefixes
    why: str
    # Imports under ``if TYPE_CHECKING:`` (annotations only) are allowed.
    type_only_ok: bool = False

    def applies(self, module: str) -> bool:
        return any(_within(module, p) for p in self.applies_to)

    def forbids(self, imported: str) -> bool:
        return any(_within(imported, p) for p in self.forbidden)


RULES = (
    Rule('pure-engine', ('accel_daemon.engine', 'accel_daemon.drivers'),
         _DAEMON_SIDE,
         'the engine and the drivers run without root or a broker and take '
         'their settings as arguments'),
    Rule('drivers-by-entry-point', ('accel_daemon.engine',),
         ('accel_daemon.drivers',),
         'the engine loads drivers by entry point '
         '(accel_daemon.compressors), never by import'),
    Rule('rpc-not-privileged', ('accel_daemon.rpc',),
         ('accel_daemon.privileged',),
         'the RPC layer goes through the manager, never straight to the '
         'privileged layer'),
    Rule('pure-contract', CONTRACT, ABOVE_CONTRACT,
         'the contract between the layers (operations, states, errors, '
         'wire values, records) is read by every layer and by the client, '
         'so it depends on none of them; annotations may name a type of '
         'a layer under TYPE_CHECKING', type_only_ok=True),
    Rule('thin-client', ('accel_daemon.client', 'accel_daemon.rpc.rpcapi'),
         ('accel_daemon.privileged', 'accel_daemon.engine',
          'accel_daemon.manager.backends'),
         'the client side is imported by cinder and nova, which must not '
         'load the daemon\'s privileged or engine code'),
)


def _within(name: str, prefix: str) -> bool:
    return name == prefix or name.startswith(prefix + '.')


def module_name(path: pathlib.Path) -> str:
    parts = path.relative_to(PACKAGE_DIR.parent).with_suffix('').parts
    if parts[-1] == '__init__':
        parts = parts[:-1]
    return '.'.join(parts)


def imports(source: str, module: str,
            is_package: bool = False) -> list[tuple[int, str]]:
    """(line, module name) of every import in ``source``, at any depth.

    ``from a import b`` yields ``a.b``, since ``b`` may be a submodule
    (``from accel_daemon import privileged``); the rules match names by
    package prefix, so a rule against ``a`` catches ``a.b`` too.
    """
    return [(line, name) for line, name, _ in
            typed_imports(source, module, is_package)]


def _type_only_nodes(tree: ast.AST) -> set[int]:
    """ids of the nodes inside the body of an ``if TYPE_CHECKING:``."""
    inside: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and _is_type_checking(node.test):
            for stmt in node.body:
                inside.update(id(n) for n in ast.walk(stmt))
    return inside


def _is_type_checking(test: ast.expr) -> bool:
    return ((isinstance(test, ast.Name) and test.id == 'TYPE_CHECKING')
            or (isinstance(test, ast.Attribute)
                and test.attr == 'TYPE_CHECKING'))


def typed_imports(source: str, module: str,
                  is_package: bool = False) -> list[tuple[int, str, bool]]:
    """``imports()``, each with whether it is under ``if TYPE_CHECKING:``."""
    package = module if is_package else module.rpartition('.')[0]
    tree = ast.parse(source)
    type_only = _type_only_nodes(tree)
    return [(line, name, id(node) in type_only)
            for node, line, name in _import_nodes(tree, package)]


def _import_nodes(tree: ast.AST, package: str
                  ) -> list[tuple[ast.AST, int, str]]:
    found: list[tuple[ast.AST, int, str]] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [(node, node.lineno, alias.name)
                      for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = _absolute(node, package)
            found += [(node, node.lineno, base if alias.name == '*'
                       else '%s.%s' % (base, alias.name))
                      for alias in node.names]
        elif isinstance(node, ast.Call) and _is_import_call(node):
            arg = node.args[0]
            if isinstance(arg, ast.Constant) and isinstance(arg.value, str):
                found.append((node, node.lineno, arg.value))
    return found


def _absolute(node: ast.ImportFrom, package: str) -> str:
    if not node.level:
        return node.module or ''
    parts = package.split('.')
    base = '.'.join(parts[:len(parts) - node.level + 1])
    return '%s.%s' % (base, node.module) if node.module else base


def _is_import_call(node: ast.Call) -> bool:
    func = node.func
    name = (func.attr if isinstance(func, ast.Attribute)
            else func.id if isinstance(func, ast.Name) else '')
    return name in ('import_module', '__import__') and bool(node.args)


def violations(module: str, source: str,
               is_package: bool = False) -> list[str]:
    rules = [r for r in RULES if r.applies(module)]
    return ['%s:%d imports %s, which rule %s forbids: %s'
            % (module, line, imported, rule.name, rule.why)
            for line, imported, type_only
            in typed_imports(source, module, is_package)
            for rule in rules if rule.forbids(imported)
            and not (type_only and rule.type_only_ok)]


def package_modules() -> list[tuple[str, pathlib.Path]]:
    return sorted((module_name(p), p) for p in PACKAGE_DIR.rglob('*.py'))


def test_package_follows_the_layering():
    found = []
    for module, path in package_modules():
        found += violations(module, path.read_text(),
                            path.name == '__init__.py')
    assert not found, '\n'.join(found)


def test_every_layer_is_seen():
    # A rule whose modules moved away would pass without checking anything.
    modules = [m for m, _ in package_modules()]
    for rule in RULES:
        for prefix in rule.applies_to:
            assert any(_within(m, prefix) for m in modules), (rule, prefix)


# --- the checker itself catches what it should -------------------------------
@pytest.mark.parametrize('module,source,rule', [
    ('accel_daemon.engine.images', 'import oslo_messaging\n', 'pure-engine'),
    ('accel_daemon.drivers.cli',
     'from oslo_config import cfg\n', 'pure-engine'),
    ('accel_daemon.engine.images',
     'def f():\n    from accel_daemon import conf\n', 'pure-engine'),
    ('accel_daemon.drivers.qat',
     'import accel_daemon.privileged.ops as ops\n', 'pure-engine'),
    ('accel_daemon.engine.images',
     'from .. import operations\n', 'pure-engine'),
    ('accel_daemon.engine.compression',
     'from accel_daemon.drivers import isal\n', 'drivers-by-entry-point'),
    ('accel_daemon.engine.compression',
     'import importlib\n'
     'def f():\n    importlib.import_module("accel_daemon.drivers.cli")\n',
     'drivers-by-entry-point'),
    ('accel_daemon.rpc.endpoint',
     'class E:\n    def m(self):\n'
     '        from accel_daemon.privileged import ops\n',
     'rpc-not-privileged'),
    ('accel_daemon.client',
     'from accel_daemon.engine.settings import Settings\n', 'thin-client'),
    ('accel_daemon.rpc.rpcapi',
     'from accel_daemon.manager import backends\n', 'thin-client'),
    ('accel_daemon.operations',
     'from accel_daemon.engine.engine import Engine\n', 'pure-contract'),
    ('accel_daemon.operations',
     'from accel_daemon.manager.states import STATES\n', 'pure-contract'),
    ('accel_daemon.records',
     'from accel_daemon import client\n', 'pure-contract'),
    ('accel_daemon.exception',
     'def f():\n    from accel_daemon.conf import rpc\n', 'pure-contract'),
    ('accel_daemon.wire', 'from .rpc import rpcapi\n', 'pure-contract'),
    ('accel_daemon.states',
     'if TYPE_CHECKING:\n    pass\nfrom accel_daemon import cmd\n',
     'pure-contract'),
    ('accel_daemon.engine.images',
     'import typing\nif typing.TYPE_CHECKING:\n'
     '    from accel_daemon.manager import tasks\n', 'pure-engine'),
])
def test_checker_catches_a_violation(module, source, rule):
    found = violations(module, source)
    assert found, 'missed: %s' % source
    assert any(module in f and ('rule %s forbids' % rule) in f
               for f in found), found


def test_message_names_module_import_and_rule():
    [message] = violations('accel_daemon.drivers.cli',
                           '\n\nfrom oslo_privsep import priv_context\n')
    assert message.startswith(
        'accel_daemon.drivers.cli:3 imports oslo_privsep.priv_context, '
        'which rule pure-engine forbids: the engine and the drivers')


@pytest.mark.parametrize('module,source', [
    ('accel_daemon.engine.images', 'from accel_daemon import exception\n'),
    ('accel_daemon.drivers.isal', 'from accel_daemon.engine import paths\n'),
    ('accel_daemon.drivers.qat', 'from accel_daemon.drivers import cli\n'),
    ('accel_daemon.engine.images', 'import accel_daemon.engine_extra\n'),
    ('accel_daemon.rpc.endpoint', 'from accel_daemon import operations\n'),
    ('accel_daemon.client', 'from accel_daemon.states import X\n'),
    ('accel_daemon.manager.tasks', 'from accel_daemon import privileged\n'),
    ('accel_daemon.operations',
     'from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n'
     '    from accel_daemon.engine.engine import Engine\n'),
    ('accel_daemon.operations', 'from accel_daemon import exception\n'),
    ('accel_daemon.exception', 'from accel_daemon import records\n'),
])
def test_checker_allows_the_permitted(module, source):
    assert violations(module, source) == []


def test_relative_imports_resolve():
    assert imports('from . import paths\n', 'accel_daemon.engine.images') \
        == [(1, 'accel_daemon.engine.paths')]
    assert imports('from .settings import S\n', 'accel_daemon.engine', True) \
        == [(1, 'accel_daemon.engine.settings.S')]
    assert imports('from ..drivers import *\n', 'accel_daemon.engine.x') \
        == [(1, 'accel_daemon.drivers')]


# --- what importing a module loads, through everything it imports ---------
def loaded_modules(*names: str) -> list[str]:
    """The modules of this package that importing ``names`` loads, in a
    fresh interpreter (this one has loaded everything already)."""
    code = ('import importlib, json, sys\n'
            'for name in %r:\n'
            '    importlib.import_module(name)\n'
            'print(json.dumps(sorted(sys.modules)))\n' % (names,))
    proc = subprocess.run([sys.executable, '-c', code], capture_output=True,
                          text=True, timeout=120, check=True)
    return json.loads(proc.stdout.splitlines()[-1])


# What the client genuinely needs of accel_daemon.conf: the package itself
# (it runs first) and the module of the client's own options.
CLIENT_CONF = ('accel_daemon.conf', 'accel_daemon.conf.client')
# What cinder and nova must never load by importing the client: the
# daemon's option groups (and, through them, the engine's settings), the
# engine, the task manager, the privileged layer and privsep itself.
NOT_IN_CLIENT = ('accel_daemon.conf', 'accel_daemon.engine',
                 'accel_daemon.manager', 'accel_daemon.privileged',
                 'accel_daemon.drivers', 'accel_daemon.cmd',
                 'accel_daemon.integrations', 'oslo_privsep')


def _outside(loaded: list[str], forbidden: tuple[str, ...],
             allowed: tuple[str, ...] = ()) -> list[str]:
    return [m for m in loaded if m not in allowed
            and any(_within(m, p) for p in forbidden)]


@pytest.mark.parametrize('module', ['accel_daemon.client',
                                    'accel_daemon.rpc.rpcapi'])
def test_client_loads_no_daemon_code(module):
    loaded = loaded_modules(module)
    assert module in loaded
    assert _outside(loaded, NOT_IN_CLIENT, CLIENT_CONF) == []


def test_contract_loads_nothing_above_it():
    loaded = loaded_modules(*CONTRACT)
    assert _outside(loaded, ABOVE_CONTRACT) == []


def test_fresh_interpreter_sees_what_it_loads():
    # The check above would pass on an empty list.
    assert _outside(loaded_modules('accel_daemon.rpc.endpoint'),
                    NOT_IN_CLIENT, CLIENT_CONF)
