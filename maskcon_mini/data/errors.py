"""Exceptions raised while locating, verifying and reading datasets.

Each class derives from the built-in exception that callers would catch for that kind
of failure, so `except ValueError` or `except OSError` still works.
"""


class ChecksumError(RuntimeError):
    """A dataset archive file exists but its MD5 checksum differs from the published one."""


class EmptyClassFolderError(ValueError):
    """A class folder of an image-folder tree contains no image files."""


class HierarchyError(ValueError):
    """A fine class is assigned to more than one coarse class, or to none."""


class ImageReadError(OSError):
    """An image file cannot be opened or decoded."""


class MappingFileError(ValueError):
    """A fine-to-coarse mapping file is malformed or does not cover the fine class folders."""
