"""Bad trace files get an error naming the file, the line and the field; nothing is skipped silently."""
import pytest

from placement.sim.trace import TraceError, load_nodes, load_pods, load_trace

NODES = "sn,cpu_milli,memory_mib,gpu,model\nn0,32000,65536,2,T4\nn1,32000,65536,4,V100M16\n"
PODS_HEAD = "name,cpu_milli,memory_mib,num_gpu,gpu_milli,gpu_spec\n"


def write(tmp_path, name, text):
    p = tmp_path / name
    p.write_text(text)
    return p


def test_good_files_load_sorted_by_name(tmp_path):
    n = write(tmp_path, "n.csv", NODES)
    p = write(tmp_path, "p.csv", PODS_HEAD + "b,1000,10,1,500,\na,2000,10,2,1000,T4\nc,1000,10,0,0,\n")
    nodes, pods = load_trace(n, p)
    assert nodes.names == ["n0", "n1"] and nodes.capacity_milli == 6000
    assert pods.names == ["a", "b", "c"]
    assert pods.demands[0].gpu_types == ("T4",) and pods.demands[2].num_gpus == 0


@pytest.mark.parametrize("body,where", [
    ("a,1000,10,1\n", r"p\.csv:2: expected 6 fields, got 4"),  # truncated row
    ("a,1000,ten,1,500,\n", r"p\.csv:2: field 'memory_mib': expected a number, got 'ten'"),
    ("a,1000,10,1,500,\nb,-5,10,1,500,\n", r"p\.csv:3: field 'cpu_milli': must be >= 0, got -5"),
    ("a,1000,10,1,500,A100\n", r"p\.csv:2: field 'gpu_spec': unknown GPU model\(s\) A100"),
    ("a,1000,10,2,500,\n", r"p\.csv:2: field 'gpu_milli': 2 GPUs must each be whole"),
])
def test_bad_pod_rows_name_file_line_and_field(tmp_path, body, where):
    n = write(tmp_path, "n.csv", NODES)
    p = write(tmp_path, "p.csv", PODS_HEAD + body)
    with pytest.raises(TraceError, match=where):
        load_trace(n, p)


def test_missing_column_is_named(tmp_path):
    p = write(tmp_path, "p.csv", "name,cpu_milli,num_gpu,gpu_milli\na,1,0,0\n")
    with pytest.raises(TraceError, match=r"p\.csv:1: missing column\(s\) memory_mib"):
        load_pods(p)


def test_bad_node_file(tmp_path):
    with pytest.raises(TraceError, match=r"n\.csv:3: field 'gpu': must be >= 0"):
        load_nodes(write(tmp_path, "n.csv", "sn,cpu_milli,memory_mib,gpu,model\na,1,1,1,T4\nb,1,1,-1,T4\n"))
    with pytest.raises(TraceError, match="appears more than once"):
        load_nodes(write(tmp_path, "n.csv", "sn,cpu_milli,memory_mib,gpu,model\na,1,1,1,T4\na,1,1,1,T4\n"))
    with pytest.raises(TraceError, match="cannot open"):
        load_nodes(tmp_path / "missing.csv")
    with pytest.raises(TraceError, match="empty file"):
        load_nodes(write(tmp_path, "e.csv", ""))
