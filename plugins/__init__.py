"""The built-in plugins, one model family (or component family) per package.

Each package's ``__init__`` only registers specs and imports no torch; the
networks and computations live in the modules beside it and are imported
by the factories. Each is listed under the ``aigc_kit`` entry-point group,
exactly as a third-party plugin would be.
"""
