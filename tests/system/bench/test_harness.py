"""The bench harness and the table of verbs: one registration, no import circle, light to import."""

import argparse
import subprocess
import sys

import pytest

from system.bench import VERBS
from system.bench.harness import RAY_START_TRIES, check, positive_ints, timed_loop, train_process, widths
from system.cli import build_parser


def test_every_verb_is_registered_once_from_its_module(capsys):
    parser = build_parser()
    with pytest.raises(SystemExit):
        parser.parse_args(["bench", "--help"])
    out = capsys.readouterr().out
    for verb in VERBS:
        assert verb in out
    for verb, module in VERBS.items():
        args = parser.parse_args(["bench", verb])
        assert args.func.__module__ == module and args.func.__name__ == "run"


def _bench_modules_loaded_by(module: str) -> list[str]:
    code = (f"import sys, {module}; "
            f"print(sorted(m for m in sys.modules if m.startswith('system.bench.') and m != {module!r}))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    return eval(out)


@pytest.mark.parametrize("module", ["system.bench.harness", *VERBS.values()])
def test_no_bench_imports_another_and_the_harness_imports_none(module):
    loaded = _bench_modules_loaded_by(module)
    assert loaded == ([] if module == "system.bench.harness" else ["system.bench.harness"])


def test_building_the_cli_imports_neither_torch_nor_ray_nor_gymnasium():
    code = ("import sys; from system.cli import build_parser; build_parser(); "
            "print(sorted(m for m in ('torch', 'ray', 'gymnasium') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


def test_list_parsers():
    assert positive_ints("4,1,4") == [4, 1]
    assert widths("200,200,64") == [200, 200, 64]
    for parse in (positive_ints, widths):
        with pytest.raises(argparse.ArgumentTypeError, match="expected comma-separated positive integers"):
            parse("3,0")


def test_checks_meet_their_goal_from_the_named_side():
    checks: list[dict] = []
    check(checks, "rate", 2.0, 2.0)
    check(checks, "latency", 5.0, 5.0, higher_is_better=False)
    check(checks, "strict latency", 5.0, 5.0, higher_is_better=False, strict=True)
    assert [c["met"] for c in checks] == [True, True, False]


def test_timed_loop_runs_once_untimed_then_at_least_once_timed():
    calls, latencies = [], []

    def step():
        calls.append(1)
        latencies.append(0.5)
        return 0.25, 0.125

    timed, wall, cpu = timed_loop(0.0, step, latencies)
    assert len(calls) == 2 and timed == 1 and (wall, cpu) == (0.25, 0.125)
    assert latencies == [0.5]  # the untimed call's latency was cleared


def test_a_train_run_whose_ray_did_not_start_runs_again_under_a_new_name():
    def command(name):  # Ray's node times out until the third try; another failure is not tried again
        code = ("import sys; sys.stderr.write('The current node timed out during startup.'); sys.exit(1)"
                if not name.endswith("-try2") else "print('ran')")
        return [sys.executable, "-c", code]

    proc, name, seconds = train_process(command, "run", "label")
    assert (proc.returncode, proc.stdout.strip(), name) == (0, "ran", "run-try2") and seconds > 0
    proc, name, _ = train_process(lambda name: [sys.executable, "-c", "import sys; sys.exit(3)"], "run", "label")
    assert (proc.returncode, name) == (3, "run")
    proc, name, _ = train_process(lambda name: command("never"), "run", "label")
    assert proc.returncode == 1 and name == f"run-try{RAY_START_TRIES - 1}"
