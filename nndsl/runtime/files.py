"""Files the runtime writes: atomically, with the mode a new file gets."""
import os
import tempfile

import numpy as np


def user_file_mode():
    """0666 less the umask: the mode `open()` gives a new file."""
    mask = os.umask(0)
    os.umask(mask)
    return 0o666 & ~mask


def write_atomically(path, arrays, make_folder=False):
    """np.savez into a temporary file beside `path`, then rename: a reader (or a run killed
    while writing) sees the old file or the new one, never half of one."""
    folder = os.path.dirname(os.path.abspath(path))
    try:
        if make_folder:                   # a checkpoint folder; `save` never creates folders
            os.makedirs(folder, exist_ok=True)
        fd, tmp = tempfile.mkstemp(suffix=".npz", dir=folder)
    except OSError as exc:                # name the user's path, not the temporary one
        raise type(exc)(exc.errno, f"cannot save to {path!r}: {exc.strerror}") from None
    try:
        with os.fdopen(fd, "wb") as f:
            np.savez(f, **arrays)
        os.chmod(tmp, user_file_mode())   # mkstemp makes 0600; a saved file gets the umask
        os.replace(tmp, path)
    except BaseException as exc:
        if os.path.exists(tmp):
            os.unlink(tmp)
        if isinstance(exc, OSError):
            raise type(exc)(exc.errno, f"cannot save to {path!r}: {exc.strerror}") from None
        raise
