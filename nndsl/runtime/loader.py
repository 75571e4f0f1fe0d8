"""Loading a shared kernel file from a build's kernel folder."""
import importlib.util
import os
import sys


def load_kernel(folder, name, attribute=None):
    """`attribute` (default: `name`) of the kernel file `folder/NAME.py`."""
    return getattr(load_kernel_file(folder, name), attribute or name)


def load_kernel_file(folder, name):
    """The kernel file `folder/NAME.py` as a module. Kernel files are
    content-addressed (the name is a hash of what they compute): every model built into the
    folder that needs one loads the same file, and numba compiles it once for all of them.
    The file is imported once per process under the name `nndsl_kernels_NAME`, by which
    numba's cache finds it."""
    module_name = "nndsl_kernels_" + name
    module = sys.modules.get(module_name)
    if module is None:
        spec = importlib.util.spec_from_file_location(module_name, os.path.join(folder, name + ".py"))
        module = importlib.util.module_from_spec(spec)
        sys.modules[module_name] = module
        try:
            spec.loader.exec_module(module)
        except BaseException:
            del sys.modules[module_name]
            raise
    return module
