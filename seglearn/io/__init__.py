"""Reading and writing tomograms, label volumes and previews.

Everything returned is numpy; images are ``(C, Z, Y, X)`` and single stacks ``(Z, Y, X)``.
"""

from seglearn.io.tiff import (
    StackReader,
    open_stack,
    read_image,
    read_stack,
)
from seglearn.io.tiff_write import write_volume, write_volume_stream
from seglearn.io.voxel import read_voxel_size_nm
from seglearn.io.atomic import atomic_path, check_writable
from seglearn.io.preview import label_colours, write_preview

__all__ = [
    "StackReader",
    "open_stack",
    "read_image",
    "read_stack",
    "read_voxel_size_nm",
    "write_volume",
    "write_volume_stream",
    "atomic_path",
    "check_writable",
    "label_colours",
    "write_preview",
]
