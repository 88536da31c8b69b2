"""The worker side of a TaskVine deployment: ``ldawt-worker`` and its systemd service.

- ``resources``: the cores, memory and disk this machine (or its cgroup) offers.
- ``config``: the worker's settings (``WorkerConfig``), the options that set them and their
  checks, shared by the command line and the installer.
- ``vine``: the ``vine_worker`` command and environment, and its supervision.
- ``cli``: the ``ldawt-worker`` command line (also ``python -m ldawt.daemon.worker``).
- ``service``: ``ldawt-worker install-service``, which installs the unit files shipped as
  ``ldawt.systemd``.

Nothing is imported here, so the manager can take ``resources`` without the rest.
"""
