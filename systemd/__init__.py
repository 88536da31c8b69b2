"""The systemd unit files and the example environment file, shipped as package data.

This folder is the package ``ldawt.systemd`` only so that the wheel carries the files and
``ldawt-worker install-service`` finds them (``importlib.resources``), installed or editable.
"""
