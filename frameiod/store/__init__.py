"""The durable queue behind one seam (`frameiod.store.base`)."""
