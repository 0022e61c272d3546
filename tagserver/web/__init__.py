"""The server: the ASGI app, its pages, the status page's figures, metrics, start-up and reload."""
