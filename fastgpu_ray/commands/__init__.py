"""Subcommands of the ``fastgpu`` CLI, one module each."""
