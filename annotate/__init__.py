"""annotate: the relabelling store (SQLAlchemy over SQLite by default) and the queue that picks the next face.

The store and the queue arrive with the relabelling work; the app's other tabs do not depend on them.
"""
