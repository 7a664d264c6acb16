"""gflags-style flags for Caffe's tools (``jcaffe convert_imageset -gray ...``).

Flags: ``-flag value``, ``-flag=value``, ``--flag``; boolean flags also take
``-flag`` alone, ``-flag=true|false`` and ``-noflag``, as gflags does.
"""
from .errors import JcaffeError


class ToolUsageError(JcaffeError):
    """A bad tool command line (printed with the tool's usage)."""


def parse_tool_flags(argv, spec, usage):
    """gflags-style parsing: -> (positional, {flag: value}). ``spec``: {name: default}."""
    values = dict(spec)
    positional = []
    i = 0
    while i < len(argv):
        arg = argv[i]
        i += 1
        if not arg.startswith("-") or arg in ("-", "--") or _is_number(arg):
            positional.append(arg)
            continue
        name, eq, value = arg.lstrip("-").partition("=")
        if name in ("help", "h"):
            raise ToolUsageError(usage)
        if name not in spec and name.startswith("no") and isinstance(spec.get(name[2:]), bool):
            values[name[2:]] = False
            continue
        if name not in spec:
            raise ToolUsageError("unknown command line flag '%s'\n\n%s" % (name, usage))
        default = spec[name]
        if isinstance(default, bool):
            if not eq:
                values[name] = True
                continue
            if value.lower() not in ("true", "false", "1", "0", "yes", "no"):
                raise ToolUsageError("flag '-%s' wants true or false, got '%s'" % (name, value))
            values[name] = value.lower() in ("true", "1", "yes")
            continue
        if not eq:
            if i >= len(argv):
                raise ToolUsageError("flag '-%s' is missing its argument" % name)
            value = argv[i]
            i += 1
        if isinstance(default, int):
            try:
                value = int(value)
            except ValueError:
                raise ToolUsageError("flag '-%s' wants an integer, got '%s'" % (name, value)) from None
        values[name] = value
    return positional, values


def _is_number(s):
    try:
        float(s)
        return True
    except ValueError:
        return False
