"""The saga engine: pure functions from (definition, state, input) to a transition.

Nothing in this package performs I/O, reads a clock or draws random numbers of its own;
ruff's banned-api rule keeps asyncio, aio_pika, pymongo and fastapi out of it.
"""
