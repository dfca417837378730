"""Exceptions raised for missing system pieces. Bad arguments raise ``TypeError`` /
``ValueError`` (see :mod:`vkqlinear.args`)."""

import os
import sys

INSTALL_HINT = ("On Debian/Ubuntu: apt-get install libvulkan1 mesa-vulkan-drivers "
                "(or run tools/setup.sh, which installs everything)")


class VulkanUnavailableError(RuntimeError):
    """No Vulkan loader, driver or device could be found or opened."""


class CompilerNotFoundError(RuntimeError):
    """``glslangValidator`` is not on ``PATH``."""


class ShaderCompileError(RuntimeError):
    """``glslangValidator`` rejected a shader variant; the message has its output and defines."""


class DeviceClosedError(ValueError):
    """An operation used a :class:`~vkqlinear.Device` (or an object made on it) after
    ``close()``. A ``ValueError``, as docs/spec.md asks for arrays on a closed device."""


class DeviceMemoryError(MemoryError):
    """An allocation on a :class:`~vkqlinear.Device` failed, or would take the library past
    the device's memory budget; the message says what was asked for and what is resident.
    Nothing already resident is affected."""


_PACKAGE_DIR = os.path.dirname(os.path.abspath(__file__))


def user_stacklevel():
    """The ``stacklevel`` that points a warning at the first frame outside this package."""
    frame, level = sys._getframe(1), 1
    while frame is not None and frame.f_code.co_filename.startswith(_PACKAGE_DIR):
        frame, level = frame.f_back, level + 1
    return level
