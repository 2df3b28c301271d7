"""Plugin discovery: where plugins come from, and loading each one on its own.

Plugins come from three places:

* entry points of the group ``aigc_kit`` (installed packages, the built-ins included);
* local files or modules named in a run config (``plugins: [my_plugin.py]``)
  or with ``--plugin`` on the command line.

Each entry point is imported and registered on its own: a plugin that fails
is unregistered and reported (``aigc-kit plugins``) and the others carry on,
unless ``AIGC_KIT_STRICT_PLUGINS=1``. ``AIGC_KIT_DISABLE_PLUGINS=a,b`` keeps
the named plugins (entry-point or distribution names) from being imported.

A plugin says which hosts it works with, and is refused (``failed``, with the
reason) on any other, before its hooks are called:

* its distribution's requirement on ``aigc-kit`` (checked before it is imported);
* ``requires_aigc_kit = ">=0.1,<1"`` in its module: the aigc-kit versions it supports;
* ``requires_hook_api = ">=1,<2"`` in its module: the hook API versions it supports
  (:data:`~aigc_kit.core.plugin_api.HOOK_API_VERSION`).

``AIGC_KIT_TRACE_PLUGINS=1`` (or ``aigc-kit plugins --trace``) prints each hook
call: which plugin answered and what it returned.

This module does not import torch.
"""

from __future__ import annotations

import dataclasses
import importlib
import importlib.util
import os
import re
import sys
import warnings
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Any

import pluggy

from . import hookspecs
from .compatibility import (
    OWN_DISTRIBUTION,
    IncompatiblePlugin,
    declared_problem,
    distribution_problem,
    normalise,
)
from .errors import UserError
from .plugin_api import KINDS, PROJECT_NAME, ComponentSpec

DISABLE_ENV = "AIGC_KIT_DISABLE_PLUGINS"
STRICT_ENV = "AIGC_KIT_STRICT_PLUGINS"
TRACE_ENV = "AIGC_KIT_TRACE_PLUGINS"
_NAME_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._+-]*$")


@dataclass
class PluginRecord:
    """What the registry knows about one plugin, loaded or not (shown by ``aigc-kit plugins``)."""

    name: str
    source: str
    """``built-in``, ``entry point``, ``local file`` or ``module``."""
    location: str
    """The entry point's target, the file's path or the module's name."""
    distribution: str | None = None
    version: str | None = None
    status: str = "loaded"
    """``loaded``, ``failed`` or ``disabled``."""
    error: str | None = None
    hooks: list[str] = field(default_factory=list)
    components: list[str] = field(default_factory=list)
    """``kind:name`` of each component the plugin offers."""
    warnings: list[str] = field(default_factory=list)
    """Warnings raised while registering it (a deprecated hook, for one)."""

    def as_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


class Discovery:
    """A pluggy plugin manager and the plugins it found: the half of :class:`~.registry.Registry` that loads them.

    ``Registry(entry_points=False)`` discovers nothing: tests register the
    plugin under test with :meth:`add_plugin`. ``builtin_only=True`` loads
    only aigc-kit's own plugins. ``trace`` receives one line per hook call
    (default: stderr when ``AIGC_KIT_TRACE_PLUGINS`` is set).
    """

    def __init__(
        self,
        *,
        entry_points: bool = True,
        disabled: Iterable[str] | None = None,
        strict: bool | None = None,
        builtin_only: bool = False,
        trace: Callable[[str], None] | None = None,
    ) -> None:
        self.plugin_manager = pluggy.PluginManager(PROJECT_NAME)
        self.plugin_manager.add_hookspecs(hookspecs)
        if trace is None and _truthy(os.environ.get(TRACE_ENV, "")):
            trace = _print_to_stderr
        if trace is not None:
            self._trace_hook_calls(trace)
        self.records: dict[str, PluginRecord] = {}
        self._specs: dict[str, list[ComponentSpec]] = {kind: [] for kind in KINDS}
        if disabled is None:
            disabled = os.environ.get(DISABLE_ENV, "").split(",")
        # compared as pip compares distribution names (PEP 503): aigc_kit_x, AIGC-KIT-X and aigc-kit.x are one
        self.disabled = {normalise(name.strip()) for name in disabled if name.strip()}
        if strict is None:
            strict = _truthy(os.environ.get(STRICT_ENV, ""))
        self.strict = strict
        self.builtin_only = builtin_only
        if entry_points:
            self.load_entry_points()

    # -- discovery ---------------------------------------------------------

    def load_entry_points(self, entry_points: Iterable[metadata.EntryPoint] | None = None) -> None:
        """Import and register each entry point of the ``aigc_kit`` group, one at a time."""
        if entry_points is None:
            entry_points = metadata.entry_points(group=PROJECT_NAME)
        entry_points = sorted(entry_points, key=_builtin_first)
        known = {normalise(name) for entry_point in entry_points
                 for name in (entry_point.name, entry_point.dist.name if entry_point.dist else "")}
        unmatched = sorted(self.disabled - known)
        if unmatched:
            warnings.warn(f"{DISABLE_ENV} names {', '.join(unmatched)}, which match no installed plugin "
                          "(plugin or distribution names, as `aigc-kit plugins` lists them)", stacklevel=2)
        for entry_point in entry_points:
            distribution = entry_point.dist.name if entry_point.dist else None
            version = entry_point.dist.version if entry_point.dist else None
            builtin = distribution is not None and normalise(distribution) == OWN_DISTRIBUTION
            if self.builtin_only and not builtin:
                continue
            record = PluginRecord(
                name=entry_point.name,
                source="built-in" if builtin else "entry point",
                location=entry_point.value,
                distribution=distribution,
                version=version,
            )
            if entry_point.name in self.records:
                record.status = "failed"
                other = self.records[entry_point.name]
                record.error = (
                    f"the plugin name {entry_point.name!r} is already taken by "
                    f"{provider(other)}; one of the two distributions must rename its entry point"
                )
                self._fail(record, f"{record.name} ({distribution})")
                continue
            if normalise(entry_point.name) in self.disabled or (distribution and normalise(distribution) in self.disabled):
                record.status = "disabled"
                self.records[record.name] = record
                continue
            problem = None if builtin else distribution_problem(entry_point.dist)
            if problem:
                record.status = "failed"
                record.error = problem
                self._fail(record, record.name)
                continue
            try:
                plugin = entry_point.load()
            except Exception as exc:  # noqa: BLE001 - a broken plugin must not take the host down
                record.status = "failed"
                record.error = f"import failed: {type(exc).__name__}: {exc}"
                self._fail(record, record.name, exc)
                continue
            self._register(plugin, record)

    def add_plugin(self, plugin: Any, name: str, *, source: str = "module", location: str = "") -> PluginRecord:
        """Register an object or module as a plugin; raise :class:`UserError` if it is invalid."""
        record = PluginRecord(name=name, source=source, location=location or name)
        if name in self.records and self.records[name].status == "loaded":
            if self.records[name].location == record.location:
                return self.records[name]
            raise UserError(
                f"a plugin named {name!r} is already loaded from {self.records[name].location}",
                given=record.location,
                hint="rename one of the two files or modules",
            )
        if not self._register(plugin, record, raise_errors=True):
            raise UserError(f"plugin {name!r} could not be loaded: {record.error}")
        return record

    def load_local(self, reference: str, base_dir: str | os.PathLike | None = None) -> PluginRecord:
        """Load a plugin named by the user: a ``.py`` file (relative to ``base_dir``) or a module name."""
        if reference.endswith(".py") or os.sep in reference or "/" in reference:
            path = Path(reference)
            if not path.is_absolute() and base_dir is not None:
                path = Path(base_dir) / path
            if not path.is_file():
                raise UserError(
                    "plugin file not found",
                    given=str(path),
                    hint="paths in `plugins:` are relative to the config file's folder",
                )
            name = path.stem
            module_name = f"aigc_kit_local_plugins.{name}"
            module = sys.modules.get(module_name)
            if module is None or getattr(module, "__file__", None) != str(path.resolve()):
                spec = importlib.util.spec_from_file_location(module_name, path.resolve())
                module = importlib.util.module_from_spec(spec)
                try:
                    spec.loader.exec_module(module)
                except Exception as exc:
                    raise UserError(
                        f"plugin file failed to import: {type(exc).__name__}: {exc}",
                        given=str(path),
                        hint="run with --debug to see the traceback",
                    ) from exc
                sys.modules[module_name] = module
            return self.add_plugin(module, name, source="local file", location=str(path))
        try:
            module = importlib.import_module(reference)
        except ModuleNotFoundError as exc:
            if exc.name and reference.startswith(exc.name):
                raise UserError(
                    "plugin module not found",
                    given=reference,
                    hint="install the package that provides it, or give a path to a .py file",
                ) from exc
            raise UserError(f"plugin module failed to import: {exc}", given=reference) from exc
        except Exception as exc:
            raise UserError(
                f"plugin module failed to import: {type(exc).__name__}: {exc}",
                given=reference,
                hint="run with --debug to see the traceback",
            ) from exc
        return self.add_plugin(module, reference, source="module", location=reference)

    def already_loaded(self, reference: str) -> bool:
        """Whether the plugin a config's ``plugins:`` entry names is loaded already.

        A file counts as loaded when a local plugin of its name is (the user may
        have loaded their own copy of a file a downloaded run names); a module,
        when a plugin was loaded from it, by entry point or by name.
        """
        loaded = [record for record in self.records.values() if record.status == "loaded"]
        if reference.endswith(".py") or os.sep in reference or "/" in reference:
            return any(record.source == "local file" and record.name == Path(reference).stem for record in loaded)
        return any(reference in (record.location, record.name) for record in loaded)

    def _register(self, plugin: Any, record: PluginRecord, raise_errors: bool = False) -> bool:
        """Register ``plugin`` and collect its components, all or nothing."""
        manager = self.plugin_manager
        try:
            problem = declared_problem(plugin)
            if problem:
                raise IncompatiblePlugin(problem)
            with warnings.catch_warnings(record=True) as raised:
                warnings.simplefilter("always")
                manager.register(plugin, name=record.name)
            for warning in raised:  # kept for `aigc-kit plugins`, and passed on
                record.warnings.append(str(warning.message))
                warnings.warn_explicit(warning.message, warning.category, warning.filename, warning.lineno)
            manager.check_pending()
            record.hooks = sorted(caller.name for caller in manager.get_hookcallers(plugin) or [])
            specs = self._collect(plugin, record)
        except Exception as exc:  # noqa: BLE001 - a plugin failing to register is reported, not raised
            if manager.get_plugin(record.name) is not None:
                manager.unregister(name=record.name)
            record.status = "failed"
            record.error = str(exc) if isinstance(exc, IncompatiblePlugin) else f"{type(exc).__name__}: {exc}"
            if raise_errors:
                self.records[record.name] = record
                return False
            self._fail(record, record.name, exc)
            return False
        for kind, kind_specs in specs.items():
            self._specs[kind].extend(kind_specs)
        record.components = [f"{kind}:{spec.name}" for kind in KINDS for spec in specs[kind]]
        record.status = "loaded"
        self.records[record.name] = record
        return True

    def _collect(self, plugin: Any, record: PluginRecord) -> dict[str, list[ComponentSpec]]:
        """Call each registration hook of ``plugin`` alone and check what it returns."""
        manager = self.plugin_manager
        others = [p for p in manager.get_plugins() if p is not plugin]
        specs: dict[str, list[ComponentSpec]] = {kind: [] for kind in KINDS}
        for kind, hook_name in hookspecs.HOOK_FOR_KIND.items():
            if hook_name not in record.hooks:
                continue
            caller = manager.subset_hook_caller(hook_name, remove_plugins=others)
            for result in caller():
                if result is None:
                    continue
                if isinstance(result, ComponentSpec):
                    result = [result]
                for spec in result:
                    specs[kind].append(self._checked(spec, kind, hook_name, record))
            names = [spec.name for spec in specs[kind]]
            repeated = sorted({n for n in names if names.count(n) > 1})
            if repeated:
                raise ValueError(f"{hook_name} returned the {kind} name(s) {repeated} more than once")
        return specs

    @staticmethod
    def _checked(spec: Any, kind: str, hook_name: str, record: PluginRecord) -> ComponentSpec:
        if not isinstance(spec, ComponentSpec):
            raise TypeError(f"{hook_name} must return ComponentSpec objects, got {type(spec).__name__}")
        if not _NAME_PATTERN.match(spec.name or ""):
            raise ValueError(
                f"{hook_name} returned an invalid {kind} name {spec.name!r}: "
                "use letters, digits, '-', '_', '.' or '+', and no ':'"
            )
        if not callable(spec.factory):
            raise TypeError(f"the factory of {kind} {spec.name!r} is not callable")
        if not hasattr(spec.options, "model_validate"):
            raise TypeError(f"the options of {kind} {spec.name!r} must be a pydantic model class")
        return dataclasses.replace(spec, plugin=record.name)

    def _fail(self, record: PluginRecord, key: str, exc: BaseException | None = None) -> None:
        self.records[key] = record
        if self.strict:
            message = f"plugin {record.name!r} ({provider(record)}) failed to load: {record.error}"
            raise UserError(message, hint=f"unset {STRICT_ENV} to skip failing plugins") from exc

    def _trace_hook_calls(self, trace: Callable[[str], None]) -> None:
        """Report each hook call through pluggy's monitoring: the hook, who answered, what came back."""

        def before(hook_name: str, implementations: list[Any], kwargs: dict[str, Any]) -> None:
            trace(f"call {hook_name}({', '.join(f'{k}={v!r}' for k, v in kwargs.items())})")

        def after(outcome: Any, hook_name: str, implementations: list[Any], kwargs: dict[str, Any]) -> None:
            answered = ", ".join(impl.plugin_name for impl in implementations) or "no plugin"
            if outcome.exception is not None:
                trace(f"  {hook_name} <- {answered}: raised {type(outcome.exception).__name__}: {outcome.exception}")
                return
            trace(f"  {hook_name} <- {answered}: {_summary(outcome.get_result())}")

        self.plugin_manager.add_hookcall_monitoring(before, after)

    def plugins(self) -> list[PluginRecord]:
        """Every plugin seen, loaded, failed or disabled."""
        return list(self.records.values())


def _summary(result: Any) -> str:
    """A hook's result, short: the names of the specs it returned."""
    specs = [spec for item in (result or []) for spec in (item if isinstance(item, list) else [item])]
    names = [getattr(spec, "name", repr(spec)) for spec in specs]
    return f"[{', '.join(names)}]" if names else "nothing"


def _truthy(value: str) -> bool:
    return value.strip().lower() in ("1", "true", "yes", "on")


def _print_to_stderr(line: str) -> None:
    print(f"aigc-kit trace: {line}", file=sys.stderr)


def _builtin_first(entry_point: metadata.EntryPoint) -> tuple[int, str]:
    distribution = entry_point.dist.name if entry_point.dist else ""
    return (0 if normalise(distribution) == OWN_DISTRIBUTION else 1, entry_point.name)


def provider(record: PluginRecord) -> str:
    if record.distribution:
        return f"{record.distribution} {record.version or ''}".strip()
    return record.location
