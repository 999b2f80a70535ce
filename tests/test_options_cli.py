"""The command lines and the options dataclasses agree: every default written once (in s3files.options),
the README's option table true, and one size parser with one-line errors for ``s3files mount`` and
``s3files bench``. No mount, no S3."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from s3files_bench.cli import build_parser as bench_parser

from s3files.cli import build_parser, options_from
from s3files.errors import MountError
from s3files.options import (
    MIB,
    Consistency,
    MountOptions,
    Source,
    StoreOptions,
    default_cache_dir,
    default_of,
    parse_mode,
    parse_size,
)

README = Path(__file__).resolve().parent.parent / "README.md"


def test_mount_without_options_gives_the_dataclass_defaults() -> None:
    args = build_parser().parse_args(["mount", "s3://b/p", "/mnt/x"])
    expected = MountOptions(Source.parse("s3://b/p"), Path("/mnt/x"), cache_dir=default_cache_dir())
    assert options_from(args) == expected


def test_argparse_takes_its_defaults_from_the_dataclasses(monkeypatch: pytest.MonkeyPatch) -> None:
    """Change a default in the dataclass and the command line follows: no second copy of the number."""
    monkeypatch.setattr(MountOptions.__dataclass_fields__["metadata_ttl"], "default", 7.5)
    monkeypatch.setattr(MountOptions.__dataclass_fields__["upload_concurrency"], "default", 3)
    monkeypatch.setattr(StoreOptions.__dataclass_fields__["max_connections"], "default", 5)
    args = build_parser().parse_args(["mount", "s3://b", "/mnt/x"])
    assert (args.metadata_ttl, args.upload_concurrency, args.max_connections) == (7.5, 3, 5)


def test_default_of() -> None:
    assert default_of(MountOptions, "metadata_ttl") is None  # the mode's
    assert default_of(MountOptions, "consistency") is Consistency.CLOSE_TO_OPEN
    assert default_of(StoreOptions, "max_connections") == 32
    with pytest.raises(ValueError):
        default_of(MountOptions, "source")  # required: no default
    with pytest.raises(AttributeError):
        default_of(MountOptions, "no_such_option")


def readme_defaults() -> dict[str, str]:
    """``--option`` -> the default column of the README's option table (every flag of a row)."""
    rows: dict[str, str] = {}
    for line in README.read_text().splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) == 3 and cells[0].startswith("`--"):
            for flag in re.findall(r"`(--[a-z-]+)", cells[0]):
                rows[flag] = cells[1]
    return rows


def test_readme_option_table_tells_the_defaults() -> None:
    rows = readme_defaults()
    opts = MountOptions(Source.parse("s3://b"), Path("/mnt/x"))
    assert int(rows["--max-connections"]) == opts.store.max_connections
    assert int(rows["--max-attempts"]) == opts.store.max_attempts
    assert float(rows["--request-timeout"]) == opts.store.request_timeout
    assert rows["--consistency"] == opts.consistency.value == "close-to-open"
    mode_ttls = [float(t) for t in rows["--metadata-ttl"].removeprefix("the mode's:").split(",")]
    assert mode_ttls == [mode.default_ttl for mode in Consistency] and mode_ttls[1] == opts.metadata_ttl
    assert float(rows["--writeback-delay"]) == opts.writeback_delay
    assert rows["--durability"] == opts.durability == "machine"
    assert int(rows["--upload-concurrency"]) == opts.upload_concurrency
    assert parse_size(rows["--upload-part-size"]) == opts.upload_part_size
    file_mode, dir_mode = (parse_mode(m.strip()) for m in rows["--file-mode"].split(","))
    assert (file_mode, dir_mode) == (opts.file_mode, opts.dir_mode)
    assert rows["--cache-size"] == "the disk" and opts.cache_size is None
    for flag in ("--read-only", "--direct-io", "--allow-other"):
        assert rows[flag] == "off" and getattr(opts, flag[2:].replace("-", "_")) is False
    assert rows["--no-xattrs"].startswith("off") and opts.xattrs is True
    assert options_from(build_parser().parse_args(["mount", "s3://b", "/mnt/x", "--no-xattrs"])).xattrs is False


def mount_options(*flags: str) -> MountOptions:
    return options_from(build_parser().parse_args(["mount", "s3://b", "/mnt/x", *flags]))


@pytest.mark.parametrize(
    ("flags", "mode", "ttl"),
    [
        ([], Consistency.CLOSE_TO_OPEN, 1.0),
        (["--consistency", "strict"], Consistency.STRICT, 0.0),
        (["--consistency", "close-to-open"], Consistency.CLOSE_TO_OPEN, 1.0),
        (["--consistency", "eventual"], Consistency.EVENTUAL, 60.0),
        (["--consistency", "eventual", "--metadata-ttl", "2"], Consistency.EVENTUAL, 2.0),
        (["--consistency", "strict", "--metadata-ttl", "3"], Consistency.STRICT, 3.0),
        (["--metadata-ttl", "0"], Consistency.CLOSE_TO_OPEN, 0.0),
    ],
)
def test_consistency_sets_the_ttl_unless_metadata_ttl_overrides(
    flags: list[str], mode: Consistency, ttl: float
) -> None:
    opts = mount_options(*flags)
    assert (opts.consistency, opts.metadata_ttl) == (mode, ttl)
    assert isinstance(opts.metadata_ttl, float)


def test_writeback_delay_flag() -> None:
    assert mount_options().writeback_delay == 5.0
    assert mount_options("--consistency", "eventual", "--writeback-delay", "0.5").writeback_delay == 0.5
    assert mount_options("--writeback-delay", "0").writeback_delay == 0.0


def test_library_options_take_the_mode_by_name_or_enum() -> None:
    source, root = Source.parse("s3://b"), Path("/mnt/x")
    by_name = MountOptions(source, root, consistency="eventual")  # type: ignore[arg-type]
    assert by_name == MountOptions(source, root, consistency=Consistency.EVENTUAL)
    assert by_name.consistency is Consistency.EVENTUAL and by_name.metadata_ttl == 60.0
    with pytest.raises(MountError, match="--consistency must be one of strict, close-to-open, eventual"):
        MountOptions(source, root, consistency="sometimes")  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("option", "value"),
    [
        ("metadata_ttl", -1.0),
        ("metadata_ttl", float("nan")),
        ("metadata_ttl", float("inf")),
        ("writeback_delay", -0.1),
        ("writeback_delay", float("nan")),
        ("writeback_delay", float("inf")),
    ],
)
def test_seconds_must_be_finite_and_not_negative(option: str, value: float) -> None:
    flag = "--" + option.replace("_", "-")
    with pytest.raises(MountError, match=f"^{flag} must be a finite number of seconds >= 0, got"):
        MountOptions(Source.parse("s3://b"), Path("/mnt/x"), **{option: value})


@pytest.mark.parametrize(
    ("argv", "line"),
    [
        (
            ["--writeback-delay", "-1"],
            "s3files: error: --writeback-delay must be a finite number of seconds >= 0, got -1.0",
        ),
        (["--metadata-ttl", "nan"], "s3files: error: --metadata-ttl must be a finite number of seconds >= 0, got nan"),
    ],
)
def test_bad_seconds_are_one_error_line(argv: list[str], line: str, capsys: pytest.CaptureFixture[str]) -> None:
    from s3files.cli import main

    assert main(["mount", "s3://b", "/mnt/x", *argv]) == 1
    err = capsys.readouterr().err
    assert err.splitlines() == [line]


def test_a_bad_mode_is_one_argparse_line(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exited:
        build_parser().parse_args(["mount", "s3://b", "/m", "--consistency", "loose"])
    assert exited.value.code == 2
    assert "argument --consistency: invalid choice: 'loose'" in capsys.readouterr().err.splitlines()[-1]


def test_the_stats_file_option_is_gone(capsys: pytest.CaptureFixture[str]) -> None:
    """`s3files stats` replaced ``--stats-file`` (SIGUSR1): it is in no help and refused in one line."""
    with pytest.raises(SystemExit):
        build_parser().parse_args(["mount", "--help"])
    assert "stats" not in capsys.readouterr().out
    with pytest.raises(SystemExit) as exited:
        build_parser().parse_args(["mount", "s3://b", "/m", "--stats-file", "/tmp/s.json"])
    assert exited.value.code == 2
    assert "unrecognized arguments: --stats-file" in capsys.readouterr().err.splitlines()[-1]
    assert "stats_file" not in MountOptions.__dataclass_fields__


def test_library_mount_refuses_an_unknown_mode_before_starting_a_daemon(tmp_path: Path) -> None:
    import s3files

    refused = pytest.raises(MountError, match="consistency must be one of strict, close-to-open, eventual")
    with refused, s3files.mount("s3://b", tmp_path / "m", consistency="sometimes"):
        pass  # pragma: no cover
    assert not (tmp_path / "m").exists()


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("4096", 4096),
        ("6KiB", 6 * 1024),
        ("64MiB", 64 * MIB),
        ("64 MiB", 64 * MIB),
        ("64M", 64 * MIB),
        ("64mb", 64 * MIB),
        ("1.5G", 1536 * MIB),
        ("2GiB", 2048 * MIB),
        ("1T", 1024 * 1024 * MIB),
    ],
)
def test_parse_size(text: str, expected: int) -> None:
    assert parse_size(text) == expected


@pytest.mark.parametrize("text", ["", "M", "20X", "12 parsecs", "0", "-5M", "nan", "1e30G"])
def test_parse_size_refuses(text: str) -> None:
    with pytest.raises(MountError):
        parse_size(text)


def test_both_command_lines_parse_sizes_alike() -> None:
    mount = build_parser().parse_args(["mount", "s3://b", "/m", "--cache-size", "20G", "--upload-part-size", "5MiB"])
    assert (mount.cache_size, mount.upload_part_size) == (20 * 1024 * MIB, 5 * MIB)
    bench = bench_parser().parse_args(["--size", "64 MiB", "--file-size", "6KiB", "--memory-limit", "2GiB"])
    assert (bench.size, bench.file_size, bench.memory_limit) == (64 * MIB, 6 * 1024, 2048 * MIB)


@pytest.mark.parametrize(
    ("parser", "argv", "line"),
    [
        (
            build_parser,
            ["mount", "s3://b", "/m", "--cache-size", "20X"],
            "s3files mount: error: argument --cache-size: not a size: '20X' (use e.g. 512M or 20G)",
        ),
        (
            build_parser,
            ["mount", "s3://b", "/m", "--file-mode", "9"],
            "s3files mount: error: argument --file-mode: not an octal mode: '9' (use e.g. 644)",
        ),
        (
            bench_parser,
            ["--size", "64XB"],
            "s3files bench: error: argument --size: not a size: '64XB' (use e.g. 512M or 20G)",
        ),
    ],
)
def test_a_bad_size_is_one_error_line(
    parser: object, argv: list[str], line: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as exited:
        parser().parse_args(argv)  # type: ignore[operator]
    assert exited.value.code == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err
    assert err.splitlines()[-1] == line  # after argparse's usage lines


def test_library_mount_passes_the_mode_flags_to_the_command(tmp_path: Path) -> None:
    """The library's keywords become the command's flags: the command's own check refuses the value."""
    import s3files

    refused = pytest.raises(MountError, match=r"^--writeback-delay must be a finite number of seconds >= 0, got -1.0$")
    with refused, s3files.mount("s3://b", tmp_path / "m", consistency=Consistency.EVENTUAL, writeback_delay=-1):
        pass  # pragma: no cover


# -- issue 21: every option validated once, one line naming the option, the value and what is allowed ------


@pytest.mark.parametrize(
    ("argv", "line"),
    [
        (["--max-connections", "0"], "--max-connections must be a whole number from 1 to 1024, got 0"),
        (["--max-connections", "-1"], "--max-connections must be a whole number from 1 to 1024, got -1"),
        (["--max-connections", "5000"], "--max-connections must be a whole number from 1 to 1024, got 5000"),
        (["--max-attempts", "0"], "--max-attempts must be a whole number from 1 to 20, got 0"),
        (["--max-attempts", "21"], "--max-attempts must be a whole number from 1 to 20, got 21"),
        (["--request-timeout", "0"], "--request-timeout must be a number of seconds above 0 and at most 3600, got 0.0"),
        (["--request-timeout", "nan"], "--request-timeout must be a number of seconds above 0 and at most 3600, got nan"),
        (["--request-timeout", "inf"], "--request-timeout must be a number of seconds above 0 and at most 3600, got inf"),
        (["--uid", "-1"], "--uid must be a whole number from 0 to 4294967294, got -1"),
        (["--gid", "4294967295"], "--gid must be a whole number from 0 to 4294967294, got 4294967295"),
        (["--log-file", "/no/such/folder/x.log"], "--log-file /no/such/folder/x.log: cannot write there: No such file or directory"),
    ],
)
def test_bad_values_are_one_line_from_the_command_and_the_library(
    argv: list[str], line: str, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    """Before any daemon starts: `--max-connections 0` used to mount and then hang the first close,
    `--uid -1` to mount and answer EIO to every stat, a missing log folder to print a traceback."""
    import s3files
    from s3files.cli import main

    assert main(["mount", "s3://b", str(tmp_path / "m"), *argv]) == 1
    assert capsys.readouterr().err.splitlines() == [f"s3files: error: {line}"]
    with pytest.raises(MountError, match=re.escape(line)), s3files.mount("s3://b", tmp_path / "m", extra_args=argv):
        pass  # pragma: no cover
    assert not (tmp_path / "m").is_mount()


# Every option of `s3files mount` that takes a value, with bad values and the words its one line must hold
# (besides the option's name and the value): what is allowed.
BAD_VALUES = [
    ("--endpoint-url", "localhost:9000", "http:// or https://"),
    ("--endpoint-url", "ftp://x", "http:// or https://"),
    ("--region", "", "must not be empty"),
    ("--profile", "", "must not be empty"),
    ("--max-connections", "x", "invalid int value"),
    ("--max-connections", "0", "from 1 to 1024"),
    ("--max-attempts", "-3", "from 1 to 20"),
    ("--max-attempts", "two", "invalid int value"),
    ("--request-timeout", "-1", "above 0 and at most 3600"),
    ("--request-timeout", "nan", "above 0 and at most 3600"),
    ("--uid", "abc", "invalid int value"),
    ("--gid", "-5", "from 0 to 4294967294"),
    ("--file-mode", "888", "octal mode"),
    ("--dir-mode", "99999", "octal mode"),
    ("--listing-attributes", "slow", "choose from 'true', 'fast'"),
    ("--consistency", "loose", "choose from 'strict', 'close-to-open', 'eventual'"),
    ("--metadata-ttl", "-1", "finite number of seconds >= 0"),
    ("--writeback-delay", "inf", "finite number of seconds >= 0"),
    ("--durability", "disk", "choose from 'machine', 'daemon'"),
    ("--cache-dir", "/etc/passwd", "not a folder"),
    ("--cache-size", "20X", "not a size"),
    ("--cache-size", "100", "at least 1 MiB"),
    ("--on-recovery", "maybe", "choose from"),
    ("--upload-concurrency", "0", "whole number >= 1"),
    ("--upload-part-size", "1048576", "between 5 and 10 MiB"),
    ("--log-level", "LOUD", "choose from"),
    ("--log-file", "/no/such/folder/x.log", "cannot write there"),
]


@pytest.mark.parametrize(("option", "value", "words"), BAD_VALUES)
def test_every_option_refuses_bad_values_in_one_line(
    option: str, value: str, words: str, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    """Through `s3files mount` (one line on stderr, exit non-zero, no traceback, no daemon) and the library
    (s3files.mount raises MountError with that line), each naming the option, the value and what is
    allowed."""
    import s3files
    from s3files.cli import main

    argv = [option, value]
    try:
        code = main(["mount", "s3://b", str(tmp_path / "m"), *argv])
    except SystemExit as exited:  # argparse's own refusals (types, choices): exit 2
        code = exited.code
    err = capsys.readouterr().err
    assert code in (1, 2) and "Traceback" not in err
    assert len(err.splitlines()) == 1, err
    for expected in (option, value, words):
        assert expected in err, err
    with pytest.raises(MountError) as refused, s3files.mount("s3://b", tmp_path / "m", extra_args=argv):
        pass  # pragma: no cover
    assert all(expected in str(refused.value) for expected in (option, value, words)), refused.value
    assert not (tmp_path / "m").is_mount()


def test_a_log_record_is_one_line_whatever_the_key_holds(tmp_path: Path) -> None:
    """Anyone who can write to the bucket chooses keys: a newline in one must not start a forged line."""
    import logging

    from s3files.logs import OneLineFormatter

    log_file = tmp_path / "log"
    handler = logging.FileHandler(log_file)
    handler.setFormatter(OneLineFormatter("%(levelname)s %(message)s"))
    logger = logging.getLogger("s3files.test_one_line")
    logger.addHandler(handler)
    try:
        logger.warning("op=get key=%s failed", "a\nERROR forged line\r\x1b[2J\u2028b")
        try:
            raise ValueError("boom")
        except ValueError:
            logger.exception("op=x key=%s", "c\nd")
    finally:
        logger.removeHandler(handler)
        handler.close()
    lines = log_file.read_text().splitlines()
    assert lines[0] == r"WARNING op=get key=a\x0aERROR forged line\x0d\x1b[2J\u2028b failed"
    assert lines[1] == r"ERROR op=x key=c\x0ad"
    assert lines[2] == "Traceback (most recent call last):"  # a traceback keeps its lines
