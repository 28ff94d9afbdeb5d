"""The top-level names of ``fastgpu_ray`` are what the API promises, whatever was imported before."""
import importlib
import pkgutil
import types

import fastgpu_ray


def test_exports_are_the_api_objects_even_after_every_submodule_is_imported():
    for m in pkgutil.iter_modules(fastgpu_ray.__path__):
        if m.name != "commands":
            importlib.import_module(f"fastgpu_ray.{m.name}")
    for name in fastgpu_ray.__all__:
        obj = getattr(fastgpu_ray, name)
        assert not isinstance(obj, types.ModuleType), f"fastgpu_ray.{name} is a module, not the API object"
    assert callable(fastgpu_ray.status) and callable(fastgpu_ray.train) and callable(fastgpu_ray.task)
