"""The OpenAI-compatible HTTP server for a chat model (FastAPI on uvicorn) and its chat page.

A package of its own so training/ keeps needing only torch and its few packages: a GPU box that only
trains never installs a web stack. serving/ imports training/, never the reverse.

    schema.py      what a request may contain, checked (finite numbers, ranges, valid text)
    app.py         the routes, the one generation worker and its bounded queue, limits, auth, the log
    server.py      ServeConfig, the listening socket and uvicorn, run in this thread or another
"""
