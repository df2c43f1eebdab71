"""The controller's HTTP side: :class:`~reconciler.http.server.HttpServer` (dashboard, JSON API, ``/metrics``,
health probes, forge webhooks). Started by ``reconciler run`` and ``reconciler demo``.
"""
