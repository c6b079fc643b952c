# SPDX-License-Identifier: Apache-2.0
"""capabilities, capabilities tools, capabilities show, info."""

from __future__ import annotations

import argparse
import os
from typing import Any

from accel_daemon.cmd.cli import base


class Capabilities(base.Lister):
    """List the compression drivers.

    For each: available or missing (and why), hardware or software, the
    format it writes, its version, and whether it is the default.
    """

    def take_action(self, parsed_args: argparse.Namespace) -> Any:
        caps = self.backend().capabilities()
        default = caps.get('default_driver')
        cols = ('Name', 'State', 'Type', 'Format', 'Version', 'Default',
                'Reason')
        data = [(d.get('name'),
                 'available' if d.get('available') else 'missing',
                 'hardware' if d.get('hardware') else 'software',
                 d.get('format'), d.get('version') or '',
                 d.get('name') == default, d.get('reason') or '')
                for d in caps.get('drivers', [])]
        return cols, data


class CapabilitiesTools(base.Lister):
    """List the external tools the engine uses, with their versions."""

    def take_action(self, parsed_args: argparse.Namespace) -> Any:
        tools = self.backend().capabilities().get('tools') or {}
        return ('Tool', 'Version'), sorted(tools.items())


class CapabilitiesShow(base.ShowOne):
    """Show the default driver, image formats and allowed directories."""

    def take_action(self, parsed_args: argparse.Namespace) -> Any:
        caps = self.backend().capabilities()
        formats = caps.get('formats') or {}
        fields = ('default_driver', 'hardware', 'input_formats',
                  'output_formats', 'allowed_dirs')
        return fields, (caps.get('default_driver'), caps.get('hardware'),
                        base.cell(formats.get('input', [])),
                        base.cell(formats.get('output', [])),
                        base.cell(caps.get('allowed_dirs', [])))


class Info(base.ShowOne):
    """Inspect an image, then show what qemu-img info reports.

    The image must be of the format it claims (--image-format).
    """

    def get_parser(self, prog_name: str) -> argparse.ArgumentParser:
        parser = super().get_parser(prog_name)
        parser.add_argument('path', help='image to inspect (relative to '
                                         'the working directory or '
                                         'absolute)')
        # dest: the operation's field (``format``); the flag has another
        # name since -f/--format is every command's output format.
        parser.add_argument('--image-format', dest='format', required=True,
                            metavar='FORMAT',
                            help='the format the image claims (raw, '
                                 'qcow2...)')
        return parser

    def take_action(self, parsed_args: argparse.Namespace) -> Any:
        path = os.path.abspath(parsed_args.path)
        info = self.backend().image_info(path, parsed_args.format)
        keys = tuple(sorted(info))
        return keys, tuple(base.cell(info[k]) for k in keys)
