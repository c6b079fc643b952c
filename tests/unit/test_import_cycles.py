# SPDX-License-Identifier: Apache-2.0
"""No import cycle among accel_daemon's modules.

A cycle makes a module's behaviour depend on which of its members was
imported first (a name looked up while the other module is still half
run), and it hides the direction of the design that test_layering checks
rule by rule.  Imports are read with ``ast`` (test_layering's reader):
module-level ones and those inside functions alike, since a function's
import runs the same module code the first time it is called.  Only
imports under ``if TYPE_CHECKING:`` are left out: they never run.
"""

from __future__ import annotations

from tests.unit import test_layering as layering


def import_graph(modules: dict[str, str],
                 packages: frozenset[str] = frozenset()
                 ) -> dict[str, set[str]]:
    """module -> the package's modules it imports, from ``modules``
    (name -> source; ``packages``: the names that are packages, for
    relative imports).  ``from a import b`` names the module ``a.b`` when
    there is one, else ``a`` (``b`` is an attribute of it)."""
    graph: dict[str, set[str]] = {}
    for name, source in modules.items():
        found = layering.typed_imports(source, name, name in packages)
        graph[name] = {_resolve(imported, modules)
                       for _, imported, type_only in found
                       if not type_only} - {None, name}
    return graph


def _resolve(imported: str, modules: dict[str, str]) -> str | None:
    while imported and imported not in modules:
        imported = imported.rpartition('.')[0]
    return imported or None


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components of more than one module (Tarjan's
    algorithm, iterative: no recursion limit on a deep package)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []
    for root in sorted(graph):
        if root in index:
            continue
        work = [(root, iter(sorted(graph[root])))]
        index[root] = low[root] = len(index)
        stack.append(root)
        on_stack.add(root)
        while work:
            node, children = work[-1]
            child = next(children, None)
            if child is None:
                work.pop()
                if work:
                    parent = work[-1][0]
                    low[parent] = min(low[parent], low[node])
                if low[node] == index[node]:
                    component = _pop_component(stack, on_stack, node)
                    if len(component) > 1:
                        found.append(sorted(component))
            elif child not in index:
                index[child] = low[child] = len(index)
                stack.append(child)
                on_stack.add(child)
                work.append((child, iter(sorted(graph.get(child, ())))))
            elif child in on_stack:
                low[node] = min(low[node], index[child])
    return found


def _pop_component(stack: list[str], on_stack: set[str],
                   node: str) -> list[str]:
    component = []
    while True:
        member = stack.pop()
        on_stack.discard(member)
        component.append(member)
        if member == node:
            return component


def test_no_import_cycle_in_the_package():
    modules = layering.package_modules()
    sources = {name: path.read_text() for name, path in modules}
    packages = frozenset(name for name, path in modules
                         if path.name == '__init__.py')
    assert cycles(import_graph(sources, packages)) == []


def test_cycle_found_through_a_function_import():
    modules = {
        'accel_daemon.a': 'from accel_daemon import b\n',
        'accel_daemon.b': 'def f():\n    from accel_daemon import a\n',
        'accel_daemon.c': 'import accel_daemon.a\n',
    }
    assert cycles(import_graph(modules)) == [
        ['accel_daemon.a', 'accel_daemon.b']]


def test_type_only_imports_and_attributes_are_no_cycle():
    modules = {
        'accel_daemon.a': 'from accel_daemon.b import name\n',
        'accel_daemon.b': ('from typing import TYPE_CHECKING\n'
                           'if TYPE_CHECKING:\n'
                           '    from accel_daemon import a\n'),
    }
    assert cycles(import_graph(modules)) == []
