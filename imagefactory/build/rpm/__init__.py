"""Fedora guests from rpm-md repositories: metadata, resolver, rpm installer.

The modules mirror the pipeline: repomd (signed index) -> primary (package
metadata, streamed) -> resolve (dependency closure) -> install (rpm --root).
backend.RpmBackend ties them to the family-neutral build.
"""
