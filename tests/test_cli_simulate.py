"""`fastgpu simulate` end to end on a small trace, and its errors for bad flags and files."""
import json

import pytest

from fastgpu_ray.cli import main
from helpers_noray import RAY_LOADED, run_without_ray

NODES = "sn,cpu_milli,memory_mib,gpu,model\n" + "".join(f"n{i:02d},64000,262144,{(8, 4, 2)[i % 3]},T4\n"
                                                       for i in range(60))  # 280 GPUs


@pytest.fixture
def small_trace(tmp_path):
    rows = ["name,cpu_milli,memory_mib,num_gpu,gpu_milli"]
    shapes = [(4000, 1, 1000), (2000, 1, 500), (1000, 1, 250), (8000, 2, 1000), (3000, 1, 810), (2000, 0, 0)]
    for i in range(600):
        cpu, ng, gm = shapes[i % len(shapes)]
        rows.append(f"p{i:03d},{cpu},1024,{ng},{gm}")
    n, p = tmp_path / "nodes.csv", tmp_path / "pods.csv"
    n.write_text(NODES)
    p.write_text("\n".join(rows) + "\n")
    return n, p


def test_simulate_prints_table_and_writes_json_and_plot(small_trace, tmp_path, capsys):
    n, p = small_trace
    out_json, out_png = tmp_path / "o.json", tmp_path / "o.png"
    rc = main(["simulate", "--nodes", str(n), "--pods", str(p), "--policy", "best-fit", "--policy", "fgd",
               "--seeds", "1-3", "--json", str(out_json), "--plot", str(out_png), "--no-progress"])
    assert rc == 0
    text = capsys.readouterr().out
    assert "best-fit" in text and "fgd" in text and "@130" in text
    data = json.loads(out_json.read_text())
    assert set(data["policies"]) == {"best-fit", "fgd"}
    for entry in data["policies"].values():
        assert entry["seeds"] == [1, 2, 3]
        assert 0 < entry["mean"]["130"] <= 100
        assert len(entry["curve_mean"]) == 131
    assert out_png.stat().st_size > 10_000 and out_png.read_bytes()[:4] == b"\x89PNG"


def test_parallel_jobs_give_the_same_numbers(small_trace, tmp_path):
    n, p = small_trace
    outs = []
    for jobs in ("1", "2"):
        o = tmp_path / f"j{jobs}.json"
        assert main(["simulate", "--nodes", str(n), "--pods", str(p), "--policy", "fgd", "--seeds", "4,7",
                     "--jobs", jobs, "--json", str(o), "--no-progress"]) == 0
        outs.append(json.loads(o.read_text())["policies"])
    for a, b in ((outs[0]["fgd"], outs[1]["fgd"]),):
        assert a["mean"] == b["mean"] and a["curve_mean"] == b["curve_mean"]
        assert a["failed_before_90"] == b["failed_before_90"]


@pytest.mark.parametrize("args,message", [
    (["--trace", "default", "--policy", "fdg"], "unknown placement policy 'fdg'; valid policies: best-fit"),
    (["--trace", "nope"], "unknown trace 'nope'"),
    (["--trace", "default", "--seeds", "5-x"], "--seeds '5-x'"),
    (["--trace", "default", "--tune", "-1"], "--tune must be > 0"),
])
def test_bad_flags_give_clear_errors(args, message, capsys):
    assert main(["simulate", *args, "--no-progress"]) == 2
    assert message in capsys.readouterr().err


def test_bad_file_error_names_file_and_line(tmp_path, capsys):
    p = tmp_path / "pods.csv"
    p.write_text("name,cpu_milli,memory_mib,num_gpu,gpu_milli\na,1000,1,1\n")
    assert main(["simulate", "--pods", str(p), "--no-progress"]) == 2
    assert f"{p}:2: expected 5 fields, got 4" in capsys.readouterr().err


def test_console_script_runs_without_ray_installed(small_trace):
    """The placement core and the simulator import and run with Ray unavailable."""
    n, p = small_trace
    code = (
        "from fastgpu_ray.cli import main\n"
        f"rc = main(['simulate', '--nodes', {str(n)!r}, '--pods', {str(p)!r}, '--policy', 'fastgpu', "
        "'--seeds', '1', '--no-progress'])\n"
        "import placement, placement.sim.replay\n"
        f"assert not {RAY_LOADED}\n"
        "sys.exit(rc)\n"
    )
    r = run_without_ray(code)
    assert r.returncode == 0, r.stderr
    assert "fastgpu" in r.stdout
