"""Configuring a parked child from the host: the floor between the sessions and the daemon.

``namespaces`` (running a function in a child's namespaces), ``netlink`` (links and addresses),
``user`` (uid/gid maps), ``cgroup``, ``mount``, ``seccomp`` (filters compiled on the host,
installed by the child), ``profiles`` (ready-made hardening) and ``setup`` (the one ``Setup``
value and its ``apply``: the only place checkpoint set-up is done).

This package imports ``process`` (for what runs through the agent); ``process`` never imports
it: a ``Setup`` is a callable ``setup(host_pid)``, and that is all a session knows of it.
Nothing is imported here eagerly, so ``import linx_otp`` stays cheap.
"""
