"""How functions travel to the workers: cloudpickle, with this program's own modules
carried by value. The workers' Python has the installed packages (and the standard
library), not the user's files: a function defined in a module beside the user's
script is pickled with its code, as one in the script itself is; a function of an
installed package is pickled by name and imported there."""

import contextlib
import os
import site
import sys
import sysconfig
import threading

_installed = None
_own = {}


def _installed_dirs():
    global _installed
    if _installed is None:
        paths = sysconfig.get_paths()
        dirs = {paths.get(k) for k in ("stdlib", "platstdlib", "purelib", "platlib")}
        dirs.update(site.getsitepackages() if hasattr(site, "getsitepackages") else [])
        dirs.add(site.getusersitepackages() if hasattr(site, "getusersitepackages") else None)
        _installed = tuple(os.path.realpath(d) + os.sep for d in dirs if d)
    return _installed


def _is_own(name, module):
    """Whether `module` is the program's own code: a Python file outside the standard
    library and the installed packages (and not drove)."""
    known = _own.get(name)
    if known is not None:
        return known
    file = getattr(module, "__file__", None)
    own = (
        name != "__main__"
        and name.split(".")[0] != "drove"
        and isinstance(file, str)
        and file.endswith(".py")
        and not os.path.realpath(file).startswith(_installed_dirs())
    )
    _own[name] = own
    return own


#: cloudpickle's registry of modules pickled by value is the process's: one change at
#: a time.
_registry = threading.Lock()


@contextlib.contextmanager
def own_code_by_value():
    """While open, cloudpickle carries the program's own modules by value (those the
    user registered stay as they were)."""
    import cloudpickle

    with _registry:
        registered = cloudpickle.list_registry_pickle_by_value()
        added = []
        for name, module in list(sys.modules.items()):
            # A module under another name than its own cannot be registered.
            if (
                module is not None
                and getattr(module, "__name__", None) == name
                and name not in registered
                and _is_own(name, module)
            ):
                cloudpickle.register_pickle_by_value(module)
                added.append(module)
        try:
            yield cloudpickle
        finally:
            for module in added:
                cloudpickle.unregister_pickle_by_value(module)


def dumps(obj) -> bytes:
    """``obj`` pickled for the workers."""
    with own_code_by_value() as cloudpickle:
        return cloudpickle.dumps(obj)
