"""Loaded with ``-p`` (pyproject): collect the repository root as a plain folder, not a package.

The root's ``__init__.py`` is the pack's entry point for ComfyUI. pytest would import it as a test
package, named after whatever folder the clone sits in: a name like ``free-prompt-editing`` is no
Python identifier, the relative imports then fail and every test errors; a valid name imports the
pack outside ComfyUI before any test runs. Neither is wanted.
"""

from __future__ import annotations

import pytest


def pytest_collect_directory(path, parent):
    if path == parent.config.rootpath and (path / "__init__.py").is_file():
        return pytest.Dir.from_parent(parent, path=path)
    return None
