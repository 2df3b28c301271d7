"""Whether a plugin supports this aigc-kit: its distribution's requirement on aigc-kit, and the versions of
aigc-kit and of the hook API its module declares (``requires_aigc_kit``, ``requires_hook_api``)."""

from __future__ import annotations

import re
from importlib import metadata
from typing import Any

from packaging.requirements import InvalidRequirement, Requirement
from packaging.specifiers import InvalidSpecifier, SpecifierSet
from packaging.version import Version

from .plugin_api import HOOK_API_VERSION

OWN_DISTRIBUTION = "aigc-kit"


class IncompatiblePlugin(Exception):
    """A plugin declares that it does not support this aigc-kit or its hook API."""


def host_version() -> str:
    """The installed aigc-kit's version."""
    try:
        return metadata.version(OWN_DISTRIBUTION)
    except metadata.PackageNotFoundError:  # imported from a source tree that was never installed
        return "0"


def distribution_problem(distribution: metadata.Distribution | None) -> str | None:
    """Why the distribution's own requirement on aigc-kit rules this host out, if it does."""
    for line in (distribution.requires or []) if distribution else []:
        try:
            requirement = Requirement(line)
        except InvalidRequirement:
            continue
        if normalise(requirement.name) != OWN_DISTRIBUTION:
            continue
        if requirement.marker is not None and not requirement.marker.evaluate({"extra": ""}):
            continue  # an optional extra's requirement
        if not requirement.specifier.contains(Version(host_version()), prereleases=True):
            return _incompatible(f"{distribution.name} {distribution.version} requires aigc-kit{requirement.specifier}",
                                 f"aigc-kit {host_version()}")
    return None


def declared_problem(plugin: Any) -> str | None:
    """Why the plugin's ``requires_aigc_kit`` or ``requires_hook_api`` rules this host out, if it does."""
    for attribute, version, what in (("requires_aigc_kit", host_version(), "aigc-kit"),
                                     ("requires_hook_api", HOOK_API_VERSION, "hook API")):
        declared = getattr(plugin, attribute, None)
        if declared is None:
            continue
        try:
            supported = SpecifierSet(str(declared))
        except InvalidSpecifier:
            return f"{attribute} = {declared!r} is not a version specifier (write it like '>=1.0,<2')"
        if not supported.contains(Version(version), prereleases=True):
            return _incompatible(f"it declares {attribute} = {str(supported)!r}", f"{what} {version}")
    return None


def _incompatible(wants: str, have: str) -> str:
    return (f"incompatible: {wants}, and this is {have}; install a release of the plugin that supports "
            f"it, or an aigc-kit the plugin supports")


def normalise(distribution: str) -> str:
    return re.sub(r"[-_.]+", "-", distribution).lower()
