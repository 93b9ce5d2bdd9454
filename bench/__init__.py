"""A benchmark of the coordinator against the broker's floor: ``python -m bench``.

See ``docs/performance.md`` for what it runs, what each figure means and how the floor is
built.
"""
