"""`make bench` runs end to end (its figures are not checked: a benchmark is not a timed test)."""

from gptvae.bench import main as bench_main
from gptvae.cli import main as cli_main


def test_bench_prints_every_section(capsys):
    # smoke trains in fp32 (train.autocast = false), so its MFU is rated against the fp32 peak, not bf16's
    bench_main(["--preset", "smoke", "--dataset", "synthetic", "--rounds", "1", "--steps", "1", "--warmup", "0",
                "--eval-sequences", "8", "--eval-k", "2"])
    out = capsys.readouterr().out
    for line in ("[peak] matmul: bf16", "upstream-style", "textbook", "x upstream-style", "of fp32 peak",
                 "K = 500 on the test split", "one sample at a time"):
        assert line in out, line


def test_bench_bad_preset_is_one_clear_error(capsys):
    assert cli_main(["bench", "--preset", "huge"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "huge" in err[0] and "smoke" in err[0]
