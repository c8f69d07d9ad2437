"""Small helpers every stage shares (files, errors), with no dependency beyond the standard library.

scraping/, corpus/ and training/ never import each other; what they all need lives here once.
"""
