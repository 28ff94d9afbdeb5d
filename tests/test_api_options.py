"""Decorator options: validated at decoration with messages naming the argument; signatures kept."""
from __future__ import annotations

import inspect

import pytest

import fastgpu_ray as fastgpu
from fastgpu_ray.core.demand import build_demand
from fastgpu_ray.options import make_options, parse_memory_mib


@pytest.mark.parametrize("text,mib", [("10GiB", 10240), ("512MiB", 512), ("1.5GiB", 1536), ("2GB", 1908),
                                      (3 * 2**20, 3), (1, 1), ("0", 0), (None, 0)])
def test_memory_sizes_parse_to_mib(text, mib):
    assert parse_memory_mib(text) == mib


@pytest.mark.parametrize("kw,needle", [
    ({"num_gpus": -1}, "num_gpus=-1"),
    ({"num_gpus": 0}, "num_gpus=0"),
    ({"num_gpus": 1.5}, "num_gpus=1.5"),
    ({"num_gpus": "1"}, "num_gpus='1'"),
    ({"gpu_memory": "ten gigs"}, "gpu_memory='ten gigs'"),
    ({"gpu_memory": "10 GiBs"}, "gpu_memory='10 GiBs'"),
    ({"gpu_memory": -5}, "gpu_memory=-5"),
    ({"priority": 1.5}, "priority=1.5"),
    ({"max_retries": -1}, "max_retries=-1"),
    ({"work_s": -2}, "work_s=-2"),
    ({"split": lambda x: x}, "split= and combine="),
    ({"gpus": 1}, "unknown fastgpu.task option"),
])
def test_bad_decorator_arguments_fail_at_decoration(kw, needle):
    with pytest.raises(ValueError) as e:
        @fastgpu.task(**kw)
        def f(x):
            return x
    assert needle in str(e.value)


def test_both_decorator_forms_keep_the_function():
    @fastgpu.task
    def plain(a: int, b: str = "x") -> str:
        """doc"""
        return f"{a}{b}"

    @fastgpu.task(num_gpus=1, gpu_memory="10GiB", priority=5, max_retries=3)
    def configured(a: int, b: str = "x") -> str:
        return f"{a}{b}"

    def reference(a: int, b: str = "x") -> str:
        return ""

    for f in (plain, configured):
        assert f(1, b="y") == "1y"  # calling it directly runs it locally
        assert inspect.signature(f) == inspect.signature(reference)
    assert plain.__doc__ == "doc" and plain.__name__ == "plain"
    o = configured.task_options
    assert (o.num_gpus, o.gpu_memory_mib, o.priority, o.max_retries) == (1, 10240, 5, 3)
    assert configured.options(priority=9).task_options.priority == 9
    with pytest.raises(ValueError, match="num_gpus=-2"):
        configured.options(num_gpus=-2)


def test_demand_from_options():
    d = build_demand("s", make_options(gpu_memory="2GiB", priority=3, work_s=1.5))
    assert (d.num_gpus, d.gpu_memory_mib, d.priority, d.work_s) == (1, 2048, 3, 1.5)
    assert d.gpu_share == 1  # shares its GPU by memory, but never a GPU held whole
    assert build_demand("w", make_options()).gpu_share == 1000
    assert build_demand("q", make_options(num_gpus=0.25)).gpu_share == 250
    two = build_demand("g", make_options(num_gpus=2, gpu_memory="1GiB"))
    assert (two.num_gpus, two.gpu_share) == (2, 1000)
    assert build_demand("r", make_options(gpu_memory="1GiB"), min_gpu_memory_mib=5000).gpu_memory_mib == 5000


def test_remote_before_init_says_what_to_do():
    @fastgpu.task
    def f():
        return 1

    if fastgpu.is_initialized():
        pytest.skip("a session is open in this process")
    with pytest.raises(fastgpu.NotInitializedError, match="fastgpu.init"):
        f.remote()


@pytest.mark.parametrize("w", [0, -1, float("nan"), float("inf"), "2", True])
def test_a_bad_job_weight_fails_at_init_before_ray_starts(w):
    if fastgpu.is_initialized():
        pytest.skip("a session is open in this process")
    import ray

    started = ray.is_initialized()
    with pytest.raises(ValueError, match="job_weight=.*positive number"):
        fastgpu.init(job_weight=w)
    assert ray.is_initialized() == started


def test_run_without_split_is_a_clear_error():
    @fastgpu.task
    def f(x):
        return x

    with pytest.raises(ValueError, match="split= and combine="):
        f.run([1, 2])
