"""Send: results in from workers; deliveries out, by C-STORE, each until it is answered.

``outbox`` is the durable store of deliveries and their rounds per
destination; ``sender`` is one association sending files.
"""
