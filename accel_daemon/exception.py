# SPDX-License-Identifier: Apache-2.0
"""One exception hierarchy for the engine, the privileged layer and RPC.

Every error carries a message template and plain fields, so it can cross the
privsep channel and oslo.messaging as a dict (``to_dict``) and be rebuilt on
the other side as the same typed exception (``from_dict``).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from accel_daemon import records
from accel_daemon import wire

_REGISTRY: dict[str, type[AccelError]] = {}


class AccelError(Exception):
    """Base of every error accel-daemon raises on purpose."""

    msg_fmt = "An unknown error occurred."

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        _REGISTRY[cls.__name__] = cls

    def __init__(self, message: str | None = None, **fields: Any) -> None:
        self.fields = fields
        if message is None:
            try:
                message = self.msg_fmt % fields
            except (KeyError, TypeError, ValueError):
                # A template/field mismatch must not hide the real error.
                message = "%s %r" % (self.msg_fmt, fields)
        self.message = message
        super().__init__(message)

    def to_dict(self) -> records.TaskError:
        return {'type': type(self).__name__, 'message': self.message,
                'fields': wire.to_plain(self.fields)}

    @staticmethod
    def from_dict(data: Mapping[str, Any]) -> AccelError:
        cls = _REGISTRY.get(data.get('type', ''), AccelError)
        err = cls.__new__(cls)
        AccelError.__init__(err, data.get('message') or cls.msg_fmt,
                            **(data.get('fields') or {}))
        return err


_REGISTRY['AccelError'] = AccelError


def lookup(name: str) -> type[AccelError]:
    """Return the exception class registered under ``name``."""
    return _REGISTRY.get(name, AccelError)


# --- requests -------------------------------------------------------------
class InvalidRequest(AccelError):
    msg_fmt = "Invalid request: %(reason)s"


class PathNotAllowed(InvalidRequest):
    msg_fmt = "Path %(path)s is not allowed: %(reason)s"


class SymlinkEscape(PathNotAllowed):
    msg_fmt = ("Path %(path)s is a symbolic link or leaves the allowed "
               "directories")


class OutputExists(InvalidRequest):
    msg_fmt = "Output %(path)s already exists"


class InputNotFound(InvalidRequest):
    msg_fmt = "Input %(path)s does not exist"


class ConfinementUnavailable(AccelError):
    msg_fmt = ("Command %(command)s refused: this kernel cannot confine "
               "the tools (%(reason)s) and [accel_daemon] confine_tools is "
               "set")


class CommandDenied(AccelError):
    msg_fmt = "Command refused by the filters: %(command)s"


# --- images ---------------------------------------------------------------
class ImageInspectionError(AccelError):
    msg_fmt = "Image %(path)s failed inspection: %(reason)s"


class UnsafeImage(ImageInspectionError):
    msg_fmt = "Image %(path)s is unsafe: %(reason)s"


class FormatMismatch(ImageInspectionError):
    msg_fmt = ("Image %(path)s claimed to be %(claimed)s but was detected "
               "as %(detected)s")


class UnsupportedFormat(ImageInspectionError):
    msg_fmt = "Image format %(format)s is not supported for %(operation)s"


# --- compression ----------------------------------------------------------
class NoEngineAvailable(AccelError):
    msg_fmt = "No compression engine is available: %(reason)s"


class CorruptInput(AccelError):
    msg_fmt = "Input %(path)s is corrupt: %(reason)s"


class SizeLimitExceeded(AccelError):
    msg_fmt = ("Output of %(path)s exceeds the limit of %(limit)d bytes "
               "(possible decompression bomb)")


# --- execution ------------------------------------------------------------
class ProcessFailed(AccelError):
    msg_fmt = ("Command %(command)s failed with exit code %(exit_code)s: "
               "%(stderr)s")


class Cancelled(AccelError):
    msg_fmt = "Operation cancelled"


class RateLimitTooLow(InvalidRequest):
    msg_fmt = ("bps_limit %(bps_limit)s is too low: the transfer cannot "
               "end within the %(seconds)s seconds a task may take "
               "([accel_daemon] command_timeout)")


class CommandTimeout(AccelError):
    msg_fmt = ("Command %(command)s did not finish within %(timeout)s "
               "seconds and was killed")


# --- tasks / service ------------------------------------------------------
class TaskNotFound(AccelError):
    msg_fmt = "Task %(task_id)s not found"


class ServiceUnavailable(AccelError):
    msg_fmt = "accel-daemon is not reachable: %(reason)s"


class TaskInterrupted(AccelError):
    msg_fmt = ("Task %(task_id)s was interrupted by a stop or crash of "
               "accel-daemon; partial outputs were removed")


class TaskTimeout(AccelError):
    msg_fmt = ("Task %(task_id)s did not finish within its time limit of "
               "%(timeout)s seconds and was stopped")


class QueueFull(AccelError):
    msg_fmt = "Too many tasks are queued (limit %(limit)d); retry later"


class HelperUnavailable(AccelError):
    msg_fmt = ("The privileged helper of accel-daemon stopped or could not "
               "start (%(reason)s); it is started again for the next request")


class InternalError(AccelError):
    msg_fmt = "Internal error in accel-daemon: %(reason)s"


class TaskWaitTimeout(AccelError):
    msg_fmt = "Task %(task_id)s did not finish within %(timeout)s seconds"


class StreamFailed(AccelError):
    msg_fmt = ("The image stream of task %(task_id)s failed: %(reason)s; "
               "nothing was published")


class NoSpace(AccelError):
    msg_fmt = "No space left on the device holding %(path)s"
