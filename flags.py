"""Command-line plumbing: flags generated from the config dataclasses, and the exit-code contract.

Each flag is defined once, as a dataclass field made with `flag(default, help, ...)`. `add_flags` turns a
dataclass into argparse options that all default to None, so `given(args)` is exactly what the user typed,
and `from_args` builds the frozen config with the dataclass's own defaults for the rest. Models, loaders and
the training loop only ever see those dataclasses, never `args`.
"""

import argparse
import dataclasses


class Parser(argparse.ArgumentParser):
    """argparse with a one-line error (no usage block): `prog: error: ... (see --help)`, exit 2."""

    def __init__(self, doc, **kw):
        super().__init__(
            description=doc.split("\n\n")[0],
            epilog=doc.split("\n", 1)[1],
            formatter_class=argparse.RawDescriptionHelpFormatter,
            **kw,
        )

    def error(self, message):
        self.exit(2, f"{self.prog}: error: {message} (see --help)\n")


def flag(default, help, **argparse_kw):
    """A dataclass field that is also a command-line flag (help, and add_argument's type/choices/nargs/...)."""
    return dataclasses.field(default=default, metadata={"help": help, **argparse_kw})


def _shown(value):
    if isinstance(value, tuple):
        return " ".join(map(str, value)) or "none"
    return "unset" if value in ("", None) else str(value)


def add_flags(group, cls, prefix="", who="", defaults=None, shown=None, skip=()):
    """One --PREFIXname option per flag field of dataclass `cls` (but `skip`); help ends with the default (or
    `shown`)."""
    defaults = defaults or cls()
    for f in dataclasses.fields(cls):
        kw = dict(f.metadata)
        if "help" not in kw or f.name in skip:
            continue
        text = (shown or {}).get(f.name, _shown(getattr(defaults, f.name)))
        help_ = f"{who}{kw.pop('help')} (default: {text})".replace("%", "%%")
        if not kw and isinstance(getattr(defaults, f.name), bool):
            kw["action"] = "store_true"
        if f.type in (str, "str") and not kw.keys() & {"choices", "type"}:
            kw["type"] = nonempty  # "" would read as "not given" and quietly fall back to the default
        group.add_argument(f"--{prefix}{f.name}", dest=prefix + f.name, default=None, help=help_, **kw)


def from_args(cls, args, prefix="", defaults=None, **fixed):
    """The dataclass from the flags given (lists become tuples), `defaults` for the rest, `fixed` on top."""
    given_ = {
        f.name: getattr(args, prefix + f.name)
        for f in dataclasses.fields(cls)
        if "help" in f.metadata and getattr(args, prefix + f.name, None) is not None
    }
    tup = lambda v: tuple(tup(x) for x in v) if isinstance(v, list) else v  # noqa: E731
    base = dataclasses.asdict(defaults) if defaults is not None else {}
    return cls(**{**base, **{k: tup(v) for k, v in given_.items()}, **fixed})


def given(args):
    """The options the user typed (everything else is None)."""
    return {k for k, v in vars(args).items() if v is not None}


def from_dict(cls, d):
    """Rebuild a frozen config dataclass from its JSON form (lists back to tuples; unknown keys ignored). A value of
    another type than its field's default (a config.json that lies) is a TypeError, not a surprise later."""
    if not isinstance(d, dict):
        raise TypeError(f"{cls.__name__} is not a mapping")
    tup = lambda v: tuple(tup(x) for x in v) if isinstance(v, list) else v  # noqa: E731
    out = {}
    for f in dataclasses.fields(cls):
        if f.name in d:
            value, default = tup(d[f.name]), f.default
            if (
                default not in (None, dataclasses.MISSING)
                and not isinstance(value, type(default))
                and not (isinstance(default, float) and isinstance(value, int))
            ):
                raise TypeError(f"{cls.__name__}.{f.name} = {value!r}")
            if value is not None and value != default and not _as_flag_value(f.metadata, value):
                raise ValueError(f"{cls.__name__}.{f.name} = {str(value)[:60]} is not a value its flag takes")
            out[f.name] = value
    obj = cls(**out)
    if hasattr(obj, "check_restored"):  # what no single flag can say (several fields, this machine)
        obj.check_restored()
    return obj


def _as_flag_value(meta, value):
    """Whether the flag would accept `value` from the command line (its type, choices and distinct values): a
    config file is checked as the flags are."""
    values = value if meta.get("nargs") in ("+", "*") else (value,)
    if not isinstance(values, tuple) or meta.get("action") is Distinct and len(set(values)) < len(values):
        return False
    for v in values:
        text = ":".join(map(str, v)) if isinstance(v, tuple) else str(v)  # a --skips pair is typed T:S
        try:
            if "type" in meta and meta["type"](text) != v or v not in meta.get("choices", (v,)):
                return False
        except (argparse.ArgumentTypeError, TypeError, ValueError):
            return False
    return True


def config_dict(**parts):
    return {k: dataclasses.asdict(v) if dataclasses.is_dataclass(v) else v for k, v in parts.items()}


def _checked(cast, ok, what):
    def parse(text):
        try:
            value = cast(text)
        except (ValueError, OverflowError):
            raise argparse.ArgumentTypeError(f"{text!r} is not {what}") from None
        if not ok(value):
            raise argparse.ArgumentTypeError(f"{text!r} is not {what}")
        return value

    parse.__name__ = what  # argparse names the type in its messages
    return parse


MAX_INT = 2**31 - 1  # counts (epochs, widths, seeds) beyond this are typos, and overflow torch's generators
pos_int = _checked(int, lambda v: 0 < v <= MAX_INT, "a positive integer")
count = _checked(int, lambda v: 0 < v <= 10_000, "a positive integer up to 10000")  # layers, blocks, depths
processes = _checked(int, lambda v: 0 <= v <= 256, "an integer from 0 to 256")  # processes to start
pos_processes = _checked(int, lambda v: 0 < v <= 256, "an integer from 1 to 256")
nonneg_int = _checked(int, lambda v: 0 <= v <= MAX_INT, "a non-negative integer")
pos_float = _checked(float, lambda v: 0 < v < 1e6, "a positive number below 1e6")
nonneg_float = _checked(float, lambda v: 0 <= v < 1e6, "a non-negative number below 1e6")
fraction = _checked(float, lambda v: 0 <= v < 1, "a fraction in [0, 1)")
unit = _checked(float, lambda v: 0 <= v <= 1, "a number in [0, 1]")


def nonempty(text):
    """A name or path flag given as "" (an unset shell variable, a stray `=`) is an error, not the default."""
    if not text.strip():
        raise argparse.ArgumentTypeError("it is empty; give a name or path")
    return text


class Distinct(argparse.Action):
    """A list flag whose values must differ: a repeated seed or depth would be counted twice in the statistics."""

    def __call__(self, parser, namespace, values, option_string=None):
        if (repeated := next((v for i, v in enumerate(values) if v in values[:i]), None)) is not None:
            parser.error(f"{option_string} lists {repeated} more than once")
        setattr(namespace, self.dest, values)


def skip_pair(text):
    try:
        target, source = (int(v) for v in text.split(":"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"skip {text!r} is not TARGET:SOURCE (e.g. 2:0)") from None
    if not 0 <= source < target <= MAX_INT:
        raise argparse.ArgumentTypeError(f"skip {text!r} needs 0 <= SOURCE < TARGET")
    return target, source
