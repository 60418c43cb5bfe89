"""`sam-deblur serve`: a local web page and an HTTP API over one loaded model.

``jobs`` holds the work (queue, worker thread, loaded Deblurrers; no web framework), ``app``
the FastAPI app (``create_app``), ``static/`` the page. Needs the ``serve`` extra
(``pip install 'sam-deblur-cli[serve]'``); importing this package alone imports nothing heavy.
"""
