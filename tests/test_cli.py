"""The `lalelu` command line as a whole: one name per idea across subcommands, help that shows defaults,
exit codes that tell bad input (2) from a failed run (1), no traceback when the reader goes away."""

from __future__ import annotations

import argparse
import subprocess

import cv2
import pytest
from support import lalelu_cmd

from lalelu.cli.main import build_parser

# names that once meant what another name means now (issue #25): none may come back
RETIRED = {"--cpu-affinity", "--sched-fifo", "--summary-json"}


def _subcommands() -> dict[str, argparse.ArgumentParser]:
    sub = next(a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction))
    return dict(sub.choices)


def test_one_name_per_idea_across_subcommands():
    for name, parser in _subcommands().items():
        options = {s: a for a in parser._actions for s in a.option_strings}
        assert not RETIRED & options.keys(), (name, RETIRED & options.keys())
        if "--json" in options:  # always a file to write (or '-'), never a flag
            assert options["--json"].nargs is None and options["--json"].metavar == "FILE", name
        if "--cpus" in options:
            assert options["--cpus"].type("2,3") == [2, 3], name
        if "--fifo" in options:
            assert isinstance(options["--fifo"], argparse.BooleanOptionalAction) or name == "bench", name
        for action in parser._actions:
            if action.option_strings and action.help != argparse.SUPPRESS:
                assert action.help, (name, action.option_strings)  # every option says what it does


def test_help_shows_each_default():
    subs = _subcommands()
    bench_help = subs["bench"].format_help()
    assert "(default: 500)" in bench_help and "(default: 50)" in bench_help and "(default: 1)" in bench_help
    check_help = subs["check"].format_help()
    assert "(default: edge)" in check_help and "(default: 50.0)" in check_help
    assert "(default: None)" not in check_help + bench_help  # nothing to say is not said


def test_exit_codes_tell_bad_input_from_a_failed_run(tmp_path):
    usage = subprocess.run(lalelu_cmd("edge", "--no-such-option"), capture_output=True, text=True, timeout=60)
    assert usage.returncode == 2 and "unrecognized arguments" in usage.stderr
    bad = tmp_path / "edge.toml"
    bad.write_text("[camera]\nfps = 5000\n")
    r = subprocess.run(lalelu_cmd("edge", "--config", str(bad)), capture_output=True, text=True, timeout=60)
    assert r.returncode == 2 and "fps = 5000 is out of range" in r.stderr and "Traceback" not in r.stderr
    r = subprocess.run(
        lalelu_cmd("bench", "--cpus", "1,2", "--n", "1"), capture_output=True, text=True, timeout=60
    )
    assert r.returncode == 2 and "pins to one core" in r.stderr


@pytest.mark.process
def test_a_closed_pipe_is_no_traceback(tmp_path, astronaut):
    photo = tmp_path / "astronaut.png"
    cv2.imwrite(str(photo), cv2.cvtColor(astronaut, cv2.COLOR_RGB2BGR))
    # the reader is gone before a byte is written, as `| head -c 0` would be
    proc = subprocess.Popen(
        lalelu_cmd("pose", str(photo), "--json", "-"), stdout=subprocess.PIPE, stderr=subprocess.PIPE
    )
    assert proc.stdout is not None and proc.stderr is not None
    proc.stdout.close()
    err = proc.stderr.read().decode()
    assert proc.wait(timeout=60) == 1, err
    assert "Traceback" not in err and "BrokenPipeError" not in err and "Exception ignored" not in err, err
