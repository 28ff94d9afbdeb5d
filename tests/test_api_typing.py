"""Static typing: both decorator forms keep the signature for mypy (skipped where mypy is not installed)."""
from __future__ import annotations

import textwrap

import pytest

SOURCE = textwrap.dedent('''
    import fastgpu_ray as fastgpu
    from ray import ObjectRef

    @fastgpu.task
    def plain(a: int, b: str = "x") -> str:
        return f"{a}{b}"

    @fastgpu.task(num_gpus=1, gpu_memory="10GiB", priority=5, max_retries=3)
    def configured(a: int, b: str = "x") -> str:
        return f"{a}{b}"

    ok1: str = plain(1, b="y")
    ok2: ObjectRef[str] = configured.remote(1, b="y")
    ok3: list[ObjectRef[str]] = plain.map([1, 2])
    plain(1, b=2)
    configured.remote("no")
''')


@pytest.mark.slow
def test_decorated_functions_keep_their_signature_for_mypy(tmp_path):
    api = pytest.importorskip("mypy.api")
    f = tmp_path / "user_code.py"
    f.write_text(SOURCE)
    ini = tmp_path / "mypy.ini"  # Ray's own sources are not what is checked here: skip them (fast)
    ini.write_text("[mypy]\nignore_missing_imports = True\nfollow_imports = silent\n"
                   "[mypy-ray.*]\nfollow_imports = skip\n[mypy-numpy.*]\nfollow_imports = skip\n")
    out, err, status = api.run(["--config-file", str(ini), "--no-incremental", str(f)])
    errors = [line for line in out.splitlines() if ": error:" in line]
    assert len(errors) == 2, out + err
    assert 'Argument "b" to "__call__" of "RemoteFunction" has incompatible type "int"; expected "str"' in errors[0]
    assert 'Argument 1 to "remote" of "RemoteFunction" has incompatible type "str"; expected "int"' in errors[1]
