"""Exporters: turn a trained sampling network and its sampler into a file for a production runtime.

Each exporter is a plugin offering components through ``aigc_register_exporters``.
"""
