"""Trainers and config keys from outside the project: `--plugin MODULE` and $FDBPL_PLUGINS.

A plugin is a Python module, named as for `import` (on sys.path or PYTHONPATH) or by the path of
its .py file. `train.py --plugin` and `python -m ril ... --plugin` import it after the project's own
trainers and datasets are registered and before the config is built, so it may register Dassl
trainers and datasets (`@TRAINER_REGISTRY.register()`) and declare the config keys they read in a
module-level `extend_cfg(cfg)`, which runs after the project's. The protocol scripts call train.py
and `python -m ril`, so for them set FDBPL_PLUGINS (modules separated by ":"), which both read.

A plugin adds; it does not replace: a trainer name that is already registered, or an `extend_cfg`
that changes a key the project declares (e.g. the CoOp repository's, which redeclares TRAINER.COOP),
is refused with a message naming the clash.
"""
import importlib
import importlib.util
import os
import sys

ENV_VAR = "FDBPL_PLUGINS"

_loaded = {}  # plugin name -> module, in the order they were loaded


class PluginError(ValueError):
    """A plugin cannot be imported, or it clashes with the project's trainers or config keys."""


def plugin_names(cli_names=()):
    """$FDBPL_PLUGINS, then the --plugin names, each once."""
    from_env = [name.strip() for name in os.environ.get(ENV_VAR, "").split(":") if name.strip()]
    return list(dict.fromkeys([*from_env, *(cli_names or ())]))


def load_plugins(names):
    """Import each plugin once (after `trainers.register_all()`, so clashes with built-ins are caught)."""
    for name in names:
        if name not in _loaded:
            _loaded[name] = _import_plugin(name)


def _import_plugin(name):
    try:
        if name.endswith(".py"):
            return _import_file(name)
        return importlib.import_module(name)
    except ModuleNotFoundError as error:
        if error.name and name.split(".")[0] == error.name.split(".")[0]:
            raise PluginError(
                f"plugin {name!r} cannot be imported: no module named {error.name!r} on the Python path; "
                "give an importable module (add its folder to PYTHONPATH) or the path of its .py file"
            ) from error
        raise
    except KeyError as error:  # Dassl's Registry refuses a second object under one name
        message = str(error.args[0]) if error.args else ""
        if not message.startswith("An object named"):
            raise
        raise PluginError(
            f"plugin {name!r}: {message} A name of this project's (or of an earlier plugin) is taken: give the "
            "plugin's class another name (e.g. with a lab prefix)"
        ) from error


def _import_file(path):
    if not os.path.isfile(path):
        raise PluginError(f"plugin file {path!r} does not exist")
    module_name = os.path.splitext(os.path.basename(path))[0]
    if module_name in sys.modules:  # importing it under that name would replace the module already there
        raise PluginError(
            f"plugin file {path!r} is named like the module {module_name!r} that is already imported "
            f"({getattr(sys.modules[module_name], '__file__', None) or 'built in'}); rename the file"
        )
    spec = importlib.util.spec_from_file_location(module_name, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[module_name] = module  # its classes must be findable by name (pickling, Dassl's registry)
    try:
        spec.loader.exec_module(module)
    except BaseException:
        del sys.modules[module_name]
        raise
    return module


def config_extensions():
    """(plugin name, its extend_cfg) of every loaded plugin that declares config keys."""
    return [(name, module.extend_cfg) for name, module in _loaded.items() if hasattr(module, "extend_cfg")]
