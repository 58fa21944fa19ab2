"""`make gpu-check`'s script in its CPU-only form, so that it works the day a GPU is lent."""

from benchmarks import gpu_check


def test_the_gpu_check_compares_two_devices_runs_and_times_both_task_paths(glyphs_dir, capsys):
    assert gpu_check.main(["--devices", "cpu,cpu", "--quick", "--data-dir", str(glyphs_dir)]) == 0
    out = capsys.readouterr().out
    rows = [line.split() for line in out.splitlines() if line.startswith(("protonet", "maml"))]
    assert [(row[0], row[1]) for row in rows] == [
        ("protonet", "cpu"),
        ("protonet", "cpu"),
        ("maml", "cpu"),
        ("maml", "cpu"),
    ]
    assert rows[0][2] == rows[1][2] and rows[2][2] == rows[3][2]  # one device, one seed: the same accuracy
    assert "loop" in out and "vmap" in out and "tasks/s" in out


def test_the_gpu_check_fails_when_two_devices_disagree(glyphs_dir, capsys, monkeypatch):
    monkeypatch.setattr(gpu_check, "TOLERANCE", -1.0)  # any gap, even none, counts as too large
    monkeypatch.setattr(gpu_check, "meta_step_throughput", lambda *args: {})
    assert gpu_check.main(["--devices", "cpu,cpu", "--quick", "--data-dir", str(glyphs_dir)]) == 1
    assert "FAIL protonet" in capsys.readouterr().out
