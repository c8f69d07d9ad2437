"""A fake Project Gutenberg for tests and the offline demo: books written for ptgpt, and a mirror.

    prose.py    a seeded generator of Portuguese prose
    books.py    the sample books: hand-written texts and generated ones, wrapped in every historic
                Gutenberg header, license, charset and line ending, plus their catalog feed
    mirror.py   a Gutenberg-layout HTTP server on 127.0.0.1 that serves them, with injectable faults

Not part of the pipeline: scraping/ never imports it. Real books never enter the repository.
"""
