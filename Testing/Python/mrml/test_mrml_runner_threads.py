"""``--threads`` of a child run (``ChildRun(threads=...)``): passed to every CLI command that takes it, to no
other, never twice; the count a Slicer user setting gives. No slicer-core needed (no nodes are exported)."""

import os

import pytest

from RegistrationSuiteLib.cli.main import build_parser
from RegistrationSuiteLib.device import default_thread_count, thread_count_from_setting
from RegistrationSuiteLib.mrml.runner import THREADED_COMMANDS, ChildRun, RunSpec

#: Required options of each command, so that the child's command line can be parsed here as the child would.
REQUIRED = {
    "deformable": ["--fixed", "f.nii.gz", "--moving", "m.nii.gz", "--output", "t.h5"],
    "histology": ["--fixed", "f.png", "--moving", "m.png", "--output", "t.h5"],
    "partial-prereg": ["--fixed", "f.nii.gz", "--moving", "m.nii.gz", "--output", "t.h5"],
    "train-histology": ["--images", "list.csv", "--output", "model.pt"],
    "rigid-search": ["--fixed", "f.nii.gz", "--moving", "m.nii.gz", "--output", "t.h5"],
    "organ-points": ["--fixed", "f.nii.gz", "--moving", "m.nii.gz", "--output", "t.h5"],
}


def subcommands():
    parser = build_parser()
    action = next(a for a in parser._actions if a.dest == "command")  # argparse keeps subparsers here only
    return action.choices


def child_args(command, threads, options=()):
    """The child's command line after ``python -m RegistrationSuiteLib`` (the runner's own view of it)."""
    run = ChildRun(RunSpec(command=command, options=list(REQUIRED[command]) + list(options)), python="python",
                   threads=threads)
    return run.command_line()[3:]


def test_threaded_commands_are_the_cli_commands_taking_threads():
    taking = {name for name, sub in subcommands().items()
              if any("--threads" in a.option_strings for a in sub._actions)}
    assert taking == set(THREADED_COMMANDS)
    # the commands the Slicer modules run without --threads really have no such option (so none is passed)
    assert {"rigid-search", "organ-points"} <= set(subcommands()) - taking


@pytest.mark.parametrize("command", sorted(THREADED_COMMANDS))
def test_threads_reach_every_command_that_takes_them(command):
    args = child_args(command, 3)
    assert args.count("--threads") == 1
    parsed = build_parser().parse_args(args)  # what the child parses (nothing runs)
    assert parsed.threads == 3 and parsed.progress_json


@pytest.mark.parametrize("command", ["rigid-search", "organ-points"])
def test_no_threads_for_commands_without_the_option(command):
    args = child_args(command, 3)
    assert "--threads" not in args
    build_parser().parse_args(args)  # an unknown --threads would make argparse exit


def test_threads_none_keeps_the_command_default_and_spec_options_win():
    assert "--threads" not in child_args("deformable", None)
    default = build_parser().parse_args(child_args("partial-prereg", None)).threads
    assert default == 1  # the CLI's own default is left alone
    args = child_args("deformable", 5, options=["--threads", "2"])  # a logic's own --threads wins, never twice
    assert args.count("--threads") == 1 and args[args.index("--threads") + 1] == "2"


@pytest.mark.parametrize("bad", [0, -2, 1.5, True, "4"])
def test_bad_thread_counts_are_refused(bad):
    with pytest.raises(ValueError, match="threads"):
        ChildRun(RunSpec(command="deformable"), python="python", threads=bad)


def test_thread_count_from_setting():
    cores = default_thread_count()
    assert 1 <= cores <= (os.cpu_count() or 1)
    assert thread_count_from_setting("4") == 4 and thread_count_from_setting(7) == 7
    assert thread_count_from_setting(" 3 ") == 3  # text as a settings file returns it
    for unset in ("", None, "0", "-1", "two", "2.5"):
        assert thread_count_from_setting(unset) == cores, unset
