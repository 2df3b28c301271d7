"""aigc-kit's pytest plugin (entry point ``pytest11``): the conformance kit as fixtures.

    def test_my_plugin(aigc_kit):
        import my_plugin

        registry = aigc_kit.registry(my_plugin)
        aigc_kit.check_model(registry, "tiny", resolutions=(16,), channels=(3,))
        aigc_kit.check_exporter(registry, "my-exporter")   # writes into the test's tmp_path

Importing this module imports no torch: it loads into every pytest session where aigc-kit is installed.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest


class Kit:
    """The checks of :mod:`aigc_kit.testing`, with a folder for exported files."""

    def __init__(self, folder: Path) -> None:
        from aigc_kit import testing

        self.folder = folder
        self.registry = testing.isolated_registry
        self.check_model = testing.check_model
        self.check_loss = testing.check_loss
        self.check_sampler = testing.check_sampler
        self.check_dataset = testing.check_dataset
        self.check_metric = testing.check_metric

    def check_exporter(self, registry: Any, name: str, **options: Any) -> dict[str, Any]:
        from aigc_kit import testing

        return testing.check_exporter(registry, name, self.folder, **options)

    def check_callback(self, registry: Any, name: str, **options: Any) -> list[tuple[str, int]]:
        from aigc_kit import testing

        return testing.check_callback(registry, name, self.folder, **options)


@pytest.fixture
def aigc_kit(tmp_path: Path) -> Kit:
    """The conformance kit: ``aigc_kit.registry(plugin)`` and ``aigc_kit.check_*``."""
    return Kit(tmp_path)


@pytest.fixture
def aigc_registry() -> Any:
    """A registry with aigc-kit's own plugins and nothing else installed; add yours with ``add_plugin(module, name)``."""
    from aigc_kit.testing import isolated_registry

    return isolated_registry()
