"""``mount.s3files``: the helper mount(8) runs for file systems of type ``s3files`` (an /etc/fstab line or
``mount -t s3files``).

Owns: reading mount(8)'s helper calling convention (``mount.s3files SPEC DIR [-sfnv] [-N NS] [-o OPTS]
[-t TYPE]``, man 8 mount, "EXTERNAL HELPERS") and translating its ``-o`` list into ``s3files mount`` flags
(``translate``, a pure function). Mounting itself is ``s3files mount`` (cli.main): it starts the daemon in
the background and returns once the mount is usable, so this helper exits 0 exactly when mount(8) may say
"mounted". Unmounting needs no helper: ``umount DIR`` ends the FUSE connection, and the daemon then uploads
what close acknowledged and exits (as after ``s3files unmount``).

Every ``s3files mount`` flag is an option: ``endpoint_url=URL`` (or ``endpoint-url=URL``) for
``--endpoint-url URL``, a bare key for a flag without value (``allow_other``, ``direct_io``, ``no_xattrs``).
The options mount(8) itself understands keep mount(8)'s meaning: ``ro`` is ``--read-only``, ``rw`` the
default; ``_netdev``, ``nofail``, ``auto``/``noauto``, ``user``/``users``/``nouser``, ``defaults``,
``comment=``, ``x-*`` are for mount(8) and systemd and change nothing here; ``nosuid``, ``nodev``, ``exec``,
``async`` and ``noatime`` are what every s3files mount is already. Anything else is refused with one line
(exit 1), unless ``-s`` (sloppy) asks to ignore it with a warning.

Exit statuses follow mount(8): 1 for a wrong command line or option, 32 when the mount failed.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field

from s3files import cli
from s3files.errors import MountError
from s3files.options import Source

EXIT_USAGE = 1
EXIT_FAILURE = 32
PROG = "mount.s3files"

#: mount(8)'s own options: meaningful to mount(8), systemd or the kernel's generic flags, none to s3files.
IGNORED = frozenset({"_netdev", "nofail", "auto", "noauto", "user", "users", "nouser", "owner", "group", "defaults"})
#: Generic flags every s3files mount already has (libfuse mounts nosuid,nodev; s3files adds noatime).
ALREADY = frozenset({"nosuid", "nodev", "exec", "async", "noatime"})
#: Keys mount(8) may add a value to that change nothing here (``user=NAME`` for a user mount).
IGNORED_WITH_VALUE = frozenset({"comment", "user", "users"})
#: ``s3files mount`` flags that make no sense from mount(8).
REFUSED = {
    "foreground": "the helper starts the daemon in the background; for a foreground daemon use the systemd unit",
    "help": "see s3files mount --help",
}


class OptionError(ValueError):
    """A wrong helper command line or ``-o`` option; the message is the one line the user sees."""


@dataclass(frozen=True)
class Invocation:
    """What mount(8) asked for: the ``s3files mount`` arguments and the helper's own switches."""

    argv: list[str]
    fake: bool = False  # -f: check everything, mount nothing
    verbose: bool = False
    warnings: list[str] = field(default_factory=list)


def _mount_parser() -> argparse.ArgumentParser:
    """The ``s3files mount`` subparser, the one source of its flags (cli.build_parser)."""
    parser = cli.build_parser()
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            return action.choices["mount"]
    raise AssertionError("s3files has no mount command")


def _flags(parser: argparse.ArgumentParser) -> dict[str, argparse.Action]:
    """Each long ``--flag`` of ``s3files mount`` by its option name with '_' (``endpoint_url``)."""
    flags = {}
    for action in parser._actions:
        if action.help == argparse.SUPPRESS:
            continue
        for string in action.option_strings:
            if string.startswith("--"):
                flags[string[2:].replace("-", "_")] = action
    return flags


def split_options(text: str) -> list[str]:
    """Split a ``-o`` list at commas outside double quotes (libmount's quoting: ``opt="a,b"``)."""
    items, current, quoted = [], "", False
    for char in text:
        if char == '"':
            quoted = not quoted
        elif char == "," and not quoted:
            items.append(current)
            current = ""
            continue
        current += char
    if quoted:
        raise OptionError(f"unbalanced double quote in options {text!r}")
    items.append(current)
    return [item for item in items if item]


def translate(options: str, sloppy: bool = False) -> tuple[list[str], list[str]]:
    """Turn a ``-o`` list into ``s3files mount`` flags; return (flags, warnings).

    Raises OptionError, with the line to show, for an unknown option (unless ``sloppy``: then it is a
    warning), a flag without its value, a value given to a flag that takes none, or a refused flag.
    Later options win where they conflict (``ro,rw`` is read-write), as for mount(8).
    """
    flags_by_name = _flags(_mount_parser())
    flags: list[str] = []
    warnings: list[str] = []
    read_only = False
    for item in split_options(options):
        key, has_value, value = item.partition("=")
        value = value[1:-1] if len(value) >= 2 and value[0] == value[-1] == '"' else value
        name = key.replace("-", "_")
        if not has_value and (name in IGNORED or name in ALREADY):
            continue
        if (has_value and name in IGNORED_WITH_VALUE) or name.startswith("x_"):
            continue
        if name in ("ro", "rw", "read_only") and not has_value:
            read_only = name != "rw"
            continue
        if name in REFUSED:
            raise OptionError(f"option {key!r} is not for fstab: {REFUSED[name]}")
        action = flags_by_name.get(name)
        if action is None:
            message = f"unknown option {item!r} (options are s3files mount's flags as key=value, see s3files mount --help)"
            if not sloppy:
                raise OptionError(message)
            warnings.append(f"ignored {message}")
            continue
        takes_value = action.nargs != 0
        if takes_value and not has_value:
            raise OptionError(f"option {key!r} needs a value: {key}=...")
        if not takes_value and has_value:
            raise OptionError(f"option {key!r} takes no value (write just {key})")
        flag = next(string for string in action.option_strings if string.startswith("--"))
        flags.extend([flag, value] if takes_value else [flag])
    if read_only:
        flags.append("--read-only")
    return flags, warnings


def validate(source: str, mountpoint: str, flags: list[str]) -> None:
    """Check the flags' values as ``s3files mount`` would (types, choices, the source), raising
    OptionError with argparse's own line instead of its usage text and exit status 2."""
    parser = _mount_parser()

    def error(message: str) -> None:
        raise OptionError(message)

    parser.error = error  # type: ignore[method-assign]
    parser.parse_args([source, mountpoint, *flags])
    try:
        Source.parse(source)
    except MountError as exc:
        raise OptionError(str(exc)) from None


def parse_command_line(argv: Sequence[str]) -> Invocation:
    """Read ``SPEC DIR [-sfnv] [-N NS] [-o OPTS] [-t TYPE]`` (options may come in any order, ``-o`` more
    than once) into the ``s3files mount`` command line."""
    positional: list[str] = []
    options: list[str] = []
    sloppy = fake = verbose = False
    args = list(argv)
    while args:
        arg = args.pop(0)
        if arg in ("-o", "-t", "-N"):
            if not args:
                raise OptionError(f"{arg} needs a value")
            value = args.pop(0)
            if arg == "-o":
                options.append(value)
            elif arg == "-t" and value not in ("s3files", "fuse.s3files"):
                raise OptionError(f"this helper mounts type s3files, not {value!r}")
            elif arg == "-N":
                raise OptionError("-N (another mount namespace) is not supported; run mount inside that namespace")
        elif arg.startswith("-o") and len(arg) > 2:
            options.append(arg[2:])
        elif arg.startswith("-") and len(arg) > 1 and set(arg[1:]) <= set("sfnv"):
            sloppy |= "s" in arg
            fake |= "f" in arg
            verbose |= "v" in arg
        elif arg.startswith("-") and len(arg) > 1:
            raise OptionError(f"unknown switch {arg!r} (mount(8) passes -s -f -n -v -o -t)")
        else:
            positional.append(arg)
    if len(positional) != 2:
        raise OptionError("usage: mount.s3files s3://bucket[/prefix] MOUNTPOINT [-sfnv] [-o options]")
    source, mountpoint = positional
    flags, warnings = translate(",".join(options), sloppy=sloppy)
    validate(source, mountpoint, flags)
    return Invocation(["mount", source, mountpoint, *flags], fake=fake, verbose=verbose, warnings=warnings)


def main(argv: Sequence[str] | None = None) -> int:
    try:
        invocation = parse_command_line(sys.argv[1:] if argv is None else argv)
    except OptionError as exc:
        print(f"{PROG}: {exc}", file=sys.stderr)
        return EXIT_USAGE
    for warning in invocation.warnings:
        print(f"{PROG}: warning: {warning}", file=sys.stderr)
    if invocation.verbose:
        print(f"{PROG}: s3files {' '.join(invocation.argv)}")
    if invocation.fake:
        return 0
    return 0 if cli.main(invocation.argv) == 0 else EXIT_FAILURE


if __name__ == "__main__":
    sys.exit(main())
