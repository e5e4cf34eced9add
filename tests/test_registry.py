"""Every registered backend is tested by one parametrised test (timm's rule)."""

from __future__ import annotations

import pytest

from edgekit.backends import registry
from edgekit.backends.base import Exporter, Runner
from edgekit.errors import MissingRuntimeError


@pytest.mark.parametrize("name", registry.backend_names())
def test_registered_backend_resolves_or_names_its_extra(name):
    spec = registry.get_spec(name)
    assert spec.precisions and spec.description
    if registry.runtime_installed(name):
        assert issubclass(registry.exporter_class(name), Exporter)
        if spec.runner:
            assert issubclass(registry.runner_class(name), Runner)
    else:
        with pytest.raises(MissingRuntimeError) as err:
            registry.exporter_class(name)
        assert "pip install 'edgekit[" in str(err.value)


def test_missing_runtime_gets_a_stand_in_error(monkeypatch):
    req = registry.Requirement("surely_not_installed_pkg", "surely-not-installed", "fake")
    spec = registry.BackendSpec("fake", "test", ("fp32",), "x:Y", "x:Z", (req,), "surely_not_installed_pkg")
    monkeypatch.setitem(registry._BACKENDS, "fake", spec)
    with pytest.raises(MissingRuntimeError, match=r"needs the Python package 'surely-not-installed'.*edgekit\[fake\]"):
        registry.exporter_class("fake")
    assert registry.runtime_installed("fake") is False
