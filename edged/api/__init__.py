"""The operator surface: HTTP status API, Prometheus metrics, live preview and dashboard.

Import from the modules (this package stays light so ``edged status`` and the config
schema do not load OpenCV): ``edged.api.config.ApiConfig``, ``edged.api.server.ApiServer``,
``edged.api.sources.ApiSources``, ``edged.api.preview.PreviewSink``,
``edged.api.client`` (the ``edged status`` command). See docs/api.md.
"""
